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


def test_record_keeps_lengths_consistent_and_one_image_source():
    with pytest.raises(ValueError, match="2 boxes, 1 class ids"):
        DetectionRecord("a", YXYX, [1], None, "src", encoded_image=b"x")
    with pytest.raises(ValueError, match="exactly one"):
        DetectionRecord("a", YXYX, [1, 2], None, "src")
    record = DetectionRecord("a", YXYX, [1, 2], [False, True], "src", encoded_image=b"x")
    kept = record.with_boxes(np.array([False, True]))
    np.testing.assert_array_equal(kept.boxes, YXYX[1:])
    assert kept.class_ids.tolist() == [2] and kept.is_crowd.tolist() == [True]
