"""Box conventions: every conversion against hand-computed values, and each one undone by its inverse."""

import numpy as np
import pytest

from detkeeper.data import record as r
from detkeeper.data.record import DetectionRecord

YXYX = np.array([[10.0, 20.0, 40.0, 80.0], [0.0, 0.0, 480.0, 640.0]], np.float32)


def test_xyxy_and_yxyx_swap_axes():
    xyxy = r.yxyx_to_xyxy(YXYX)
    np.testing.assert_array_equal(xyxy, [[20, 10, 80, 40], [0, 0, 640, 480]])
    np.testing.assert_array_equal(r.xyxy_to_yxyx(xyxy), YXYX)


def test_coco_xywh_round_trip():
    xywh = r.yxyx_to_xywh(YXYX)
    np.testing.assert_array_equal(xywh, [[20, 10, 60, 30], [0, 0, 640, 480]])
    np.testing.assert_array_equal(r.xywh_to_yxyx(xywh), YXYX)


def test_normalize_round_trip():
    normalized = r.normalize_yxyx(YXYX, height=480, width=640)
    np.testing.assert_allclose(normalized, [[10 / 480, 20 / 640, 40 / 480, 80 / 640], [0, 0, 1, 1]])
    np.testing.assert_allclose(r.denormalize_yxyx(normalized, 480, 640), YXYX, atol=1e-4)



def test_batched_normalize_is_float32_per_image_and_matches_the_spelled_out_scaling():
    """Detections (float32) are scaled per image in float32, as the export code did by hand."""
    batch = np.stack([YXYX, YXYX / 2])  # [2 images, 2 boxes, 4]
    sizes = np.array([[480, 640], [37, 50]], np.int32)
    normalized = r.normalize_yxyx_batch(batch, sizes)
    assert normalized.dtype == np.float32
    np.testing.assert_array_equal(normalized, batch / np.tile(sizes, 2)[:, None, :].astype(np.float32))
    np.testing.assert_array_equal(normalized[0], r.normalize_yxyx_batch(YXYX, (480, 640)))
    pixels = r.denormalize_yxyx_batch(normalized, sizes)
    np.testing.assert_array_equal(pixels[1], normalized[1] * np.array([37, 50, 37, 50], np.float32))
    np.testing.assert_allclose(pixels, batch, rtol=1e-6)

def test_record_keeps_lengths_consistent_and_one_image_source():
    with pytest.raises(ValueError, match="2 boxes, 1 class ids"):
        DetectionRecord("a", YXYX, [1], None, "src", encoded_image=b"x")
    with pytest.raises(ValueError, match="exactly one"):
        DetectionRecord("a", YXYX, [1, 2], None, "src")
    record = DetectionRecord("a", YXYX, [1, 2], [False, True], "src", encoded_image=b"x")
    kept = record.with_boxes(np.array([False, True]))
    np.testing.assert_array_equal(kept.boxes, YXYX[1:])
    assert kept.class_ids.tolist() == [2] and kept.is_crowd.tolist() == [True]


def test_coco_coordinates_stay_float64():
    """COCO's 258.15 must reach the evaluator as the file wrote it (float32 would make it 258.149994)."""
    record = DetectionRecord("1", r.xywh_to_yxyx([[258.15, 41.29, 348.26, 243.78]]), [1], None, "t",
                             encoded_image=b"x")
    assert record.boxes.dtype == np.float64 and record.boxes[0, 1] == 258.15
    assert r.yxyx_to_xywh(record.boxes)[0, 0] == 258.15


def test_area_follows_the_boxes_and_falls_back_to_the_box_area():
    record = DetectionRecord("a", [[0, 0, 10, 20], [0, 0, 4, 4]], [1, 2], [True, False], "t", encoded_image=b"x",
                             area=[120.5, np.nan])
    np.testing.assert_array_equal(record.coco_areas(), [120.5, 16.0])
    kept = record.with_boxes(np.array([False, True]))
    np.testing.assert_array_equal(kept.area, [np.nan])
    np.testing.assert_array_equal(kept.coco_areas(), [16.0])
    assert np.isnan(DetectionRecord("b", [[0, 0, 1, 1]], [1], None, "t", encoded_image=b"x").area).all()
    with pytest.raises(ValueError, match="1 boxes, 1 class ids, 1 crowd flags and 2 areas"):
        DetectionRecord("c", [[0, 0, 1, 1]], [1], None, "t", encoded_image=b"x", area=[1.0, 2.0])


def test_original_id_keeps_its_type_and_image_id_is_its_string():
    assert DetectionRecord("139", [], [], None, "t", encoded_image=b"x", original_id=139).original_id == 139
    assert DetectionRecord("img", [], [], None, "t", encoded_image=b"x").original_id == "img"
    with pytest.raises(ValueError, match="image_id '139' must be the string form of original_id 140"):
        DetectionRecord("139", [], [], None, "t", encoded_image=b"x", original_id=140)
    with pytest.raises(ValueError, match="original_id must be an int or a str"):
        DetectionRecord("True", [], [], None, "t", encoded_image=b"x", original_id=True)


def test_coco_order_sorts_integers_as_numbers_and_anything_else_as_strings():
    assert r.coco_order([1000, 139, 2]) == [2, 1, 0]  # 2, 139, 1000, as pycocotools sorts int ids
    assert r.coco_order(["1000", "139", "2"]) == [0, 1, 2]  # "1000" < "139" < "2"
    assert r.coco_order([1000, "139", "a", 2]) == [0, 1, 3, 2]  # mixed: all compared as strings
