"""COCO instances files: reading, the problems a broken file produces, and the write/read round trip."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from detkeeper.data.coco import ORIGINAL_ID_KEY, read_coco, write_coco
from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord
from detkeeper.errors import DataError

CATEGORIES = [{"id": 3, "name": "car", "supercategory": "vehicle"}, {"id": 18, "name": "dog"}]


def coco_file(tmp_path, images=None, annotations=None, categories=None, **extra):
    document = {
        "images": images if images is not None else [
            {"id": 7, "file_name": "a.jpg", "width": 64, "height": 48},
            {"id": 9, "file_name": "b.jpg", "width": 32, "height": 32},
            {"id": 8, "file_name": "c.jpg", "width": 10, "height": 10},
        ],
        "annotations": annotations if annotations is not None else [
            {"id": 1, "image_id": 7, "bbox": [1.5, 2.0, 10.0, 20.25], "category_id": 18, "iscrowd": 0},
            {"id": 2, "image_id": 9, "bbox": [0, 0, 5, 5], "category_id": 3, "iscrowd": 1},
            {"id": 3, "image_id": 7, "bbox": [3, 4, 5, 6], "category_id": 3},
        ],
        "categories": categories if categories is not None else CATEGORIES,
        **extra,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    return path


def jpeg_bytes(width=64, height=48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_reads_every_image_in_file_order_with_xywh_converted(tmp_path):
    path = coco_file(tmp_path)
    readout = read_coco(path)

    assert readout.problems == []
    assert [r.image_id for r in readout.records] == ["7", "9", "8"]
    first, second, empty = readout.records
    np.testing.assert_array_equal(first.boxes, [[2.0, 1.5, 22.25, 11.5], [4, 3, 10, 8]])
    np.testing.assert_array_equal(first.class_ids, [18, 3])
    np.testing.assert_array_equal(second.is_crowd, [True])
    assert empty.num_boxes == 0
    assert first.image_path == (tmp_path / "a.jpg").resolve()
    assert (first.width, first.height) == (64, 48)
    assert readout.label_map.ids == [3, 18] and readout.label_map.names == ["car", "dog"]


def test_a_given_label_map_is_matched_by_category_name(tmp_path):
    label_map = LabelMap.from_names(["dog", "cat"])
    readout = read_coco(coco_file(tmp_path), images_dir=tmp_path / "imgs", label_map=label_map)

    assert readout.label_map is label_map
    first, second, _ = readout.records
    np.testing.assert_array_equal(first.class_ids, [1])
    np.testing.assert_array_equal(first.boxes, [[2.0, 1.5, 22.25, 11.5]])
    assert first.image_path == (tmp_path / "imgs" / "a.jpg").resolve()
    assert second.num_boxes == 0
    kinds = [(p.kind, p.scope, p.record_index, p.box_index, p.image_id) for p in readout.problems]
    assert kinds == [("unknown_class", "box", 0, 1, "7"), ("unknown_class", "box", 1, 0, "9")]
    assert "category_id 3 ('car')" in readout.problems[0].detail


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "images": [],\n  "annotations": [,]\n}')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 3 column 19"):
        read_coco(path)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key_is_named(tmp_path, key):
    path = coco_file(tmp_path)
    document = json.loads(path.read_text())
    del document[key]
    path.write_text(json.dumps(document))
    with pytest.raises(DataError, match=f"top-level key '{key}' is missing"):
        read_coco(path)


def test_annotation_of_an_unknown_image_is_reported_without_a_record(tmp_path):
    annotations = [{"id": 41, "image_id": 999, "bbox": [0, 0, 1, 1], "category_id": 3},
                   {"id": 1, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 3}]
    readout = read_coco(coco_file(tmp_path, annotations=annotations))

    assert [r.num_boxes for r in readout.records] == [1, 0, 0]
    (problem,) = readout.problems
    assert (problem.kind, problem.image_id, problem.record_index) == ("malformed_annotation", "999", None)
    assert "annotation id 41" in problem.detail and problem.source.endswith("#annotations[0]")


@pytest.mark.parametrize("annotation, message", [
    ({"id": 5, "image_id": 7, "bbox": [0, 0, 3], "category_id": 3}, "bbox must be 4 numbers"),
    ({"id": 5, "image_id": 7, "bbox": [0, "1", 3, 4], "category_id": 3}, "bbox must be 4 numbers"),
    ({"id": 5, "image_id": 7, "bbox": [0, 0, 3, 4]}, "category_id must be an integer"),
])
def test_malformed_annotation_drops_its_image(tmp_path, annotation, message):
    annotations = [{"id": 1, "image_id": 7, "bbox": [0, 0, 2, 2], "category_id": 3}, annotation]
    readout = read_coco(coco_file(tmp_path, annotations=annotations))

    assert [r.image_id for r in readout.records] == ["9", "8"]
    (problem,) = readout.problems
    assert (problem.kind, problem.scope, problem.image_id, problem.record_index) == (
        "malformed_annotation", "record", "7", None)
    assert message in problem.detail and "annotation id 5" in problem.detail and "left out" in problem.detail


def test_file_name_escaping_the_images_folder_is_reported_and_not_read(tmp_path):
    images = [{"id": 1, "file_name": "../../etc/passwd", "width": 4, "height": 4},
              {"id": 2, "file_name": "/etc/hosts", "width": 4, "height": 4},
              {"id": 3, "file_name": "ok/x.jpg", "width": 4, "height": 4}]
    readout = read_coco(coco_file(tmp_path, images=images, annotations=[]))

    assert [r.image_id for r in readout.records] == ["3"]
    assert [(p.kind, p.image_id) for p in readout.problems] == [("malformed_annotation", "1"),
                                                                ("malformed_annotation", "2")]
    assert "points outside the dataset root" in readout.problems[0].detail


def test_bad_image_entries_are_reported_once(tmp_path):
    images = [{"id": 1, "width": 4, "height": 4}, {"id": 2, "file_name": "b.jpg", "width": -4, "height": 4}]
    annotations = [{"id": 9, "image_id": 1, "bbox": [0, 0, 1, 1], "category_id": 3}]
    readout = read_coco(coco_file(tmp_path, images=images, annotations=annotations))
    assert len(readout.records) == 0
    assert [(p.kind, p.image_id) for p in readout.problems] == [("malformed_annotation", "1"),
                                                                ("malformed_annotation", "2")]
    assert "width must be a positive integer" in readout.problems[1].detail


def make_records(tmp_path) -> list[DetectionRecord]:
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "images" / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "images" / "sub" / "b.jpg").write_bytes(jpeg_bytes(32, 32))
    return [
        DetectionRecord("BloodImage_00001", [[0.1, 1 / 3, 47.9, 63.123456789]], [2], [False], "t",
                        image_path=tmp_path / "images" / "a.jpg", width=64, height=48),
        DetectionRecord("sub/b", [[1, 2, 3, 4], [5, 6, 7, 8]], [1, 2], [True, False], "t",
                        image_path=tmp_path / "images" / "sub" / "b.jpg", width=32, height=32),
        DetectionRecord("from-tfrecord:17", np.zeros((0, 4)), [], [], "t", encoded_image=jpeg_bytes(20, 10)),
    ]


def assert_same_records(actual: list[DetectionRecord], expected: list[DetectionRecord]) -> None:
    assert [r.image_id for r in actual] == [r.image_id for r in expected]
    for back, record in zip(actual, expected):
        np.testing.assert_array_equal(back.boxes, record.boxes)  # exact: floats survive JSON
        np.testing.assert_array_equal(back.class_ids, record.class_ids)
        np.testing.assert_array_equal(back.is_crowd, record.is_crowd)
        if record.image_path is not None:
            assert back.image_path == record.image_path.resolve()
            assert (back.width, back.height) == (record.width, record.height)


def test_write_read_round_trip_keeps_string_ids_boxes_and_writes_carried_images(tmp_path):
    records = make_records(tmp_path)
    label_map = LabelMap.from_names(["RBC", "WBC"])
    path = write_coco(records, label_map, tmp_path / "out" / "instances.json", images_dir=tmp_path / "images")

    document = json.loads(path.read_text())
    assert [i["id"] for i in document["images"]] == [1, 3, 2]  # numbered in COCO's order of the string ids
    assert [i[ORIGINAL_ID_KEY] for i in document["images"]] == ["BloodImage_00001", "sub/b", "from-tfrecord:17"]
    assert [i["file_name"] for i in document["images"]] == ["a.jpg", "sub/b.jpg", "from-tfrecord_17.jpg"]
    assert document["images"][2]["width"] == 20 and document["images"][2]["height"] == 10
    assert document["categories"] == [{"id": 1, "name": "RBC", "supercategory": "none"},
                                      {"id": 2, "name": "WBC", "supercategory": "none"}]
    assert document["annotations"][1] == {"id": 2, "image_id": 3, "category_id": 1, "bbox": [2.0, 1.0, 2.0, 2.0],
                                          "area": 4.0, "iscrowd": 1}
    assert (tmp_path / "images" / "from-tfrecord_17.jpg").read_bytes() == records[2].encoded_image

    readout = read_coco(path, images_dir=tmp_path / "images")
    assert readout.problems == [] and readout.label_map == label_map
    assert_same_records(readout.records, records)


def test_carried_images_never_overwrite_other_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(8, 8))
    records = [DetectionRecord("a.jpg", [], [], [], "t", image_path=tmp_path / "a.jpg"),
               DetectionRecord("a", [], [], [], "t", encoded_image=jpeg_bytes(16, 16)),
               DetectionRecord("a", [], [], [], "t", encoded_image=jpeg_bytes(20, 20))]
    path = write_coco(records, LabelMap.from_names(["x"]), tmp_path / "instances.json")
    names = [i["file_name"] for i in json.loads(path.read_text())["images"]]
    assert names == ["a.jpg", "a_2.jpg", "a_3.jpg"]
    assert (tmp_path / "a.jpg").read_bytes() == jpeg_bytes(8, 8)
    write_coco(records, LabelMap.from_names(["x"]), tmp_path / "instances.json")  # a rerun reuses its names
    assert [i["file_name"] for i in json.loads(path.read_text())["images"]] == names


def test_integer_ids_are_written_as_they_are(tmp_path):
    records = [DetectionRecord(str(image_id), [[1, 2, 3, 4]], [1], [False], "t", encoded_image=jpeg_bytes(),
                               original_id=image_id) for image_id in [139, 0, 42]]
    path = write_coco(records, LabelMap.from_names(["x"]), tmp_path / "instances.json")
    document = json.loads(path.read_text())
    assert [i["id"] for i in document["images"]] == [139, 0, 42]
    assert all(ORIGINAL_ID_KEY not in i for i in document["images"])
    assert [a["image_id"] for a in document["annotations"]] == [139, 0, 42]
    assert [r.original_id for r in read_coco(path).records] == [139, 0, 42]
    assert [r.image_id for r in read_coco(path).records] == ["139", "0", "42"]


def test_digit_string_ids_stay_strings_numbered_in_their_string_order(tmp_path):
    """VOC stems such as "139" and "1000" are strings: COCO's order for them is "1000" < "139", and
    the numbers written keep that order, so pycocotools on the file breaks ties as detkeeper does."""
    records = [DetectionRecord(image_id, [[1, 2, 3, 4]], [1], [False], "t", encoded_image=jpeg_bytes())
               for image_id in ["139", "1000", "2"]]
    path = write_coco(records, LabelMap.from_names(["x"]), tmp_path / "instances.json")
    document = json.loads(path.read_text())
    assert [(i["id"], i[ORIGINAL_ID_KEY]) for i in document["images"]] == [(2, "139"), (1, "1000"), (3, "2")]
    assert [r.original_id for r in read_coco(path).records] == ["139", "1000", "2"]


def test_area_crowd_and_id_type_are_read_and_written_back(tmp_path):
    document = {"images": [{"id": 1000, "file_name": "a.jpg"}, {"id": "x7", "file_name": "b.jpg"}],
                "annotations": [{"id": 1, "image_id": 1000, "bbox": [0, 0, 10, 20], "category_id": 1, "area": 120.5,
                                 "iscrowd": 1},
                                {"id": 2, "image_id": 1000, "bbox": [5, 5, 4, 4], "category_id": 1},
                                {"id": 3, "image_id": "x7", "bbox": [1, 1, 2, 2], "category_id": 1, "area": 3}],
                "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "in.json").write_text(json.dumps(document))
    first, second = read_coco(tmp_path / "in.json").records
    assert (first.original_id, first.image_id, second.original_id) == (1000, "1000", "x7")
    np.testing.assert_array_equal(first.area, [120.5, np.nan])  # NaN: the annotation declares none
    np.testing.assert_array_equal(first.coco_areas(), [120.5, 16.0])
    np.testing.assert_array_equal(first.is_crowd, [True, False])
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "b.jpg").write_bytes(jpeg_bytes())
    written = json.loads(write_coco([first], LabelMap.from_names(["x"]), tmp_path / "out.json").read_text())
    assert [(a["image_id"], a["area"], a["iscrowd"]) for a in written["annotations"]] == [(1000, 120.5, 1),
                                                                                          (1000, 16.0, 0)]


@pytest.mark.parametrize("area", [-1, "12", float("nan"), True])
def test_a_bad_area_is_a_malformed_annotation_naming_it(tmp_path, area):
    document = {"images": [{"id": 1, "file_name": "a.jpg"}],
                "annotations": [{"id": 9, "image_id": 1, "bbox": [0, 0, 2, 2], "category_id": 1, "area": area}],
                "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "in.json").write_text(json.dumps(document))  # NaN: Python's json writes and reads it
    readout = read_coco(tmp_path / "in.json")
    assert len(readout.records) == 0
    (problem,) = readout.problems
    assert problem.kind == "malformed_annotation" and "annotation id 9: area must be" in problem.detail
    assert problem.source.endswith("#annotations[0]") and problem.image_id == "1"


def test_images_outside_images_dir_ask_for_images_dir(tmp_path):
    records = make_records(tmp_path)
    with pytest.raises(DataError, match="pass images_dir="):
        write_coco(records, LabelMap.from_names(["RBC", "WBC"]), tmp_path / "elsewhere" / "instances.json")


@pytest.mark.slow
def test_coco_fake100_ground_truth(coco_fake100_dir):
    readout = read_coco(coco_fake100_dir / "instances_val2014_100.json")
    assert readout.problems == []
    assert len(readout.records) == 100
    assert sum(r.num_boxes for r in readout.records) == 839
    assert sum(int(r.is_crowd.sum()) for r in readout.records) == 9
    assert readout.label_map.num_classes == 80 and readout.label_map.ids[-1] == 90


@pytest.mark.slow
def test_bccd_voc_to_coco_and_back(bccd_root, tmp_path):
    from detkeeper.data.voc import read_voc

    voc = read_voc(bccd_root)
    images_dir = voc.records[0].image_path.resolve().parent
    path = write_coco(voc.records, voc.label_map, tmp_path / "bccd.json", images_dir=images_dir)

    readout = read_coco(path, images_dir=images_dir, label_map=voc.label_map)

    assert readout.problems == []
    assert len(readout.records) == len(voc.records)
    assert_same_records(readout.records, voc.records)
