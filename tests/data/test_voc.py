"""Pascal VOC reading (BCCD and hand-made broken folders) and the write -> read round trip."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord
from detkeeper.data.voc import read_voc, write_voc
from detkeeper.errors import DataError


def _object(name: str | None = "cat", box: tuple | None = (10, 20, 30, 40)) -> str:
    name_tag = "" if name is None else f"<name>{name}</name>"
    box_tag = "" if box is None else (
        "<bndbox>" + "".join(f"<{tag}>{value}</{tag}>" for tag, value
                             in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox>")
    return f"<object>{name_tag}<difficult>1</difficult>{box_tag}</object>"


def _annotation(image_id: str, *objects: str, filename: str | None = None, size: str = "64x48") -> str:
    filename_tag = "" if filename is None else f"<filename>{filename}</filename>"
    width, height = size.split("x")
    return (f"<annotation><folder>JPEGImages</folder>{filename_tag}"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            + "".join(objects) + "</annotation>")


def _voc_folder(root: Path, annotations: dict[str, str], splits: dict[str, str] | None = None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    for split, text in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
    return root


def _good(image_id: str) -> str:
    return _annotation(image_id, _object(), filename=f"{image_id}.jpg")


# --- BCCD ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bccd_every_annotation(bccd_root: Path) -> None:
    readout = read_voc(bccd_root)
    assert readout.problems == []
    assert len(readout.records) == 364
    assert sum(record.num_boxes for record in readout.records) == 4888
    assert readout.label_map.names == ["Platelets", "RBC", "WBC"]
    assert readout.label_map.ids == [1, 2, 3]
    assert readout.label_map.source.startswith(f"derived from the class names in {bccd_root / 'Annotations'}")
    counts = collections.Counter(readout.label_map.item_of_id(class_id).name
                                 for record in readout.records for class_id in record.class_ids)
    assert counts == {"RBC": 4155, "WBC": 372, "Platelets": 361}
    first = readout.records[0]
    assert first.source == f"Annotations/{first.image_id}.xml"
    assert (first.width, first.height) == (640, 480)
    assert first.image_path == (bccd_root / "JPEGImages" / f"{first.image_id}.jpg").resolve()
    assert all(record.image_path.is_file() for record in readout.records)
    assert not any(record.is_crowd.any() for record in readout.records)


@pytest.mark.parametrize("split, count", [("train", 205), ("val", 87), ("test", 72), ("trainval", 292)])
def test_bccd_splits(bccd_root: Path, split: str, count: int) -> None:
    readout = read_voc(bccd_root, split)
    assert len(readout.records) == count
    assert readout.problems == []


@pytest.mark.parametrize("image_id", ["BloodImage_00338", "BloodImage_00343"])
def test_bccd_zero_area_boxes_are_kept_raw(bccd_root: Path, image_id: str) -> None:
    readout = read_voc(bccd_root)
    record = next(record for record in readout.records if record.image_id == image_id)
    ymin, xmin, ymax, xmax = record.boxes.T
    assert ((xmin == xmax) | (ymin == ymax)).sum() == 1


def test_bccd_coordinates_taken_as_written(bccd_root: Path) -> None:
    record = read_voc(bccd_root, "test").records[0]
    xml = (bccd_root / record.source).read_text()
    first_box = xml.split("<bndbox>")[1]
    xmin = float(first_box.split("<xmin>")[1].split("<")[0])
    ymax = float(first_box.split("<ymax>")[1].split("<")[0])
    assert record.boxes[0, 1] == xmin and record.boxes[0, 2] == ymax


# --- reading broken folders ---------------------------------------------------------------------
def _only_problem(readout, kind: str):
    assert [problem.kind for problem in readout.problems] == [kind]
    return readout.problems[0]


@pytest.mark.parametrize("xml, expected", [
    ("<annotation><object>", "not well-formed"),
    (_annotation("a", _object(box=None)), "no <bndbox>"),
    (_annotation("a", _object(box=(1, "ten", 3, 4))), "'ten' is not a number"),
    (_annotation("a", _object(box=(1, 2, 3, ""))), "<ymax> is missing"),
    (_annotation("a", _object(name=None)), "no <name>"),
    (_annotation("a", _object(), size="abcx48"), "<width> 'abc' is not a number"),
    ("<?xml version='1.0'?><!DOCTYPE a [<!ENTITY e 'x'>]><annotation>&e;</annotation>", "DOCTYPE"),
    ("<notvoc/>", "not <annotation>"),
])
def test_malformed_annotation_is_a_record_problem(tmp_path: Path, xml: str, expected: str) -> None:
    root = _voc_folder(tmp_path, {"a": xml, "b": _good("b")})
    readout = read_voc(root)
    problem = _only_problem(readout, "malformed_annotation")
    assert problem.source == "Annotations/a.xml" and problem.image_id == "a"
    assert problem.scope == "record"
    assert expected in problem.detail
    assert [record.image_id for record in readout.records] == ["b"]


def test_every_issue_of_a_file_is_named(tmp_path: Path) -> None:
    xml = _annotation("a", _object(), _object(box=None), _object(box=(1, 2, "x", 4)))
    problem = _only_problem(read_voc(_voc_folder(tmp_path, {"a": xml, "b": _good("b")})),
                            "malformed_annotation")
    assert "object 1" in problem.detail and "object 2" in problem.detail


def test_no_class_to_derive_a_label_map_from(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {"a": "<annotation>", "b": _annotation("b")})
    with pytest.raises(DataError, match=r"no objects in 1 readable annotation.*\n.*Annotations/a.xml"):
        read_voc(root)


def test_path_traversal_in_filename_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    root = _voc_folder(tmp_path / "voc", {
        "a": _annotation("a", _object(), filename="../../secret.jpg"),
        "b": _annotation("b", _object(), filename=str(secret)),
        "c": _good("c"),
    })
    readout = read_voc(root)
    assert [problem.kind for problem in readout.problems] == ["malformed_annotation"] * 2
    assert all("points outside JPEGImages" in problem.detail for problem in readout.problems)
    assert [record.image_id for record in readout.records] == ["c"]


def test_unknown_class_drops_the_box_only(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {
        "a": _good("a"),
        "b": _annotation("b", _object("cat", (1, 2, 3, 4)), _object("dog"), _object("cat", (5, 6, 7, 8))),
    })
    readout = read_voc(root, label_map=LabelMap.from_names(["cat"]))
    problem = _only_problem(readout, "unknown_class")
    assert (problem.source, problem.image_id, problem.record_index, problem.box_index) == (
        "Annotations/b.xml", "b", 1, 1)
    assert "'dog'" in problem.detail and problem.scope == "box"
    record = readout.records[1]
    np.testing.assert_array_equal(record.boxes, [[2, 1, 4, 3], [6, 5, 8, 7]])
    np.testing.assert_array_equal(record.class_ids, [1, 1])


def test_derived_label_map_is_sorted(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {"a": _annotation("a", _object("zebra"), _object("ant"))})
    readout = read_voc(root)
    assert readout.label_map == LabelMap.from_names(["ant", "zebra"])
    assert str(root / "Annotations") in readout.label_map.source
    np.testing.assert_array_equal(readout.records[0].class_ids, [2, 1])


def test_split_file_columns_blank_lines_and_missing_xml(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {"a": _good("a"), "b": _good("b")},
                       splits={"cat_train": "b  1\n\n a -1\nghost 0\n../../up 1\n"})
    readout = read_voc(root, "cat_train")
    assert [record.image_id for record in readout.records] == ["b", "a"]
    ghost, up = readout.problems
    assert (ghost.kind, ghost.source, up.kind) == ("malformed_annotation", "Annotations/ghost.xml",
                                                   "malformed_annotation")
    assert "ImageSets/Main/cat_train.txt" in ghost.detail and "does not exist" in ghost.detail
    assert "points outside Annotations/" in up.detail


def test_missing_split_names_the_file_and_the_splits(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {"a": _good("a")}, splits={"train": "a\n", "val": "a\n"})
    with pytest.raises(DataError) as error:
        read_voc(root, "test")
    message = str(error.value)
    assert str(root / "ImageSets" / "Main" / "test.txt") in message
    assert "train, val" in message


def test_missing_root_or_annotations(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="VOC dataset folder not found"):
        read_voc(tmp_path / "nowhere")
    with pytest.raises(DataError, match="Annotations"):
        read_voc(tmp_path)


def test_defaults_for_filename_and_size(tmp_path: Path) -> None:
    root = _voc_folder(tmp_path, {"a": _annotation("a", _object(), size="0x0")})
    record = read_voc(root).records[0]
    assert record.image_path == (root / "JPEGImages" / "a.jpg").resolve()
    assert (record.width, record.height) == (None, None)
    assert record.num_boxes == 1  # <difficult>1</difficult> is ignored


def test_raw_boxes_are_not_validated(tmp_path: Path) -> None:
    objects = [_object(box=(30, 40, 10, 20)), _object(box=(5, 5, 5, 9)), _object(box=(-50, -50, -10, -10))]
    record = read_voc(_voc_folder(tmp_path, {"a": _annotation("a", *objects)})).records[0]
    np.testing.assert_array_equal(record.boxes, [[40, 30, 20, 10], [5, 5, 9, 5], [-50, -50, -10, -10]])


# --- writing ------------------------------------------------------------------------------------
def _image_bytes(format_name: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buffer, format=format_name)
    return buffer.getvalue()


def _assert_same_records(written: list[DetectionRecord], read: list[DetectionRecord]) -> None:
    assert [record.image_id for record in read] == [record.image_id for record in written]
    for before, after in zip(written, read):
        np.testing.assert_array_equal(after.boxes, before.boxes)
        np.testing.assert_array_equal(after.class_ids, before.class_ids)
        assert (after.width, after.height) == (before.width, before.height)
        assert after.read_encoded() == before.read_encoded()


def test_write_read_round_trip(tmp_path: Path) -> None:
    label_map = LabelMap.from_names(["cat", "dog"])
    outside = tmp_path / "elsewhere" / "photo.jpeg"
    outside.parent.mkdir()
    outside.write_bytes(_image_bytes("JPEG"))
    records = [
        DetectionRecord("jpeg_bytes", [[1, 2, 3, 4], [0, 0, 12, 16]], [1, 2], None, "test",
                        encoded_image=_image_bytes("JPEG"), width=16, height=12),
        DetectionRecord("png_bytes", [[1.25, 2.5, 3.1, 4.7], [0.001, 1e-3, 11.999, 15.3333]], [2, 2], None,
                        "test", encoded_image=_image_bytes("PNG"), width=16, height=12),
        DetectionRecord("from_file", np.zeros((0, 4)), [], None, "test", image_path=outside),
    ]
    root = write_voc(tmp_path / "voc", records, label_map, split="train")
    assert sorted(path.name for path in (root / "JPEGImages").iterdir()) == [
        "from_file.jpeg", "jpeg_bytes.jpg", "png_bytes.png"]
    readout = read_voc(root, "train", label_map=label_map)
    assert readout.problems == []
    _assert_same_records(records, readout.records)
    assert "<xmin>2</xmin>" in (root / "Annotations" / "jpeg_bytes.xml").read_text()

    # Written again from what was read: images already in JPEGImages are referenced, not copied.
    before = {path: path.stat().st_mtime_ns for path in (root / "JPEGImages").iterdir()}
    write_voc(root, readout.records, label_map, split="again")
    assert {path: path.stat().st_mtime_ns for path in (root / "JPEGImages").iterdir()} == before
    _assert_same_records(records, read_voc(root, "again", label_map=label_map).records)


def test_round_trip_within_tolerance_for_any_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(0, 5000, size=(50, 4)), axis=1)
    record = DetectionRecord("a", boxes, np.ones(50), None, "test", encoded_image=_image_bytes("PNG"))
    label_map = LabelMap.from_names(["cat"])
    read = read_voc(write_voc(tmp_path, [record], label_map), label_map=label_map).records[0]
    np.testing.assert_allclose(read.boxes, boxes, atol=1e-3, rtol=0)


@pytest.mark.slow
def test_bccd_round_trip(bccd_root: Path, tmp_path: Path) -> None:
    readout = read_voc(bccd_root, "test")
    root = write_voc(tmp_path, readout.records, readout.label_map, split="test")
    again = read_voc(root, "test", label_map=readout.label_map)
    assert again.problems == []
    _assert_same_records(readout.records, again.records)


@pytest.mark.parametrize("image_id", ["", "../up", "a b", "sub/dir"])
def test_write_refuses_ids_that_are_not_file_names(tmp_path: Path, image_id: str) -> None:
    record = DetectionRecord(image_id, np.zeros((0, 4)), [], None, "test", encoded_image=_image_bytes("PNG"))
    with pytest.raises(DataError, match="cannot be a VOC file name"):
        write_voc(tmp_path, [record], LabelMap.from_names(["cat"]))


def test_write_refuses_unknown_class_ids_and_unknown_bytes(tmp_path: Path) -> None:
    label_map = LabelMap.from_names(["cat"])
    unknown_class = DetectionRecord("a", [[0, 0, 1, 1]], [7], None, "rec a", encoded_image=_image_bytes("PNG"))
    with pytest.raises(DataError, match="class id 7"):
        write_voc(tmp_path, [unknown_class], label_map)
    not_an_image = DetectionRecord("b", np.zeros((0, 4)), [], None, "rec b", encoded_image=b"hello")
    with pytest.raises(DataError, match="rec b: the encoded image is not JPEG"):
        write_voc(tmp_path, [not_an_image], label_map)
