"""VOC and COCO sources through the dataset index (issue 18): a second start parses no annotation and
opens no image; a changed annotation file is read again; an image file changed after indexing is
opened again on its own, and what checking it finds replaces what was found before."""

from __future__ import annotations

import numpy as np
import pytest

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data import coco, index, voc
from detkeeper.data.columns import RecordColumns
from detkeeper.data.coco import read_coco
from detkeeper.data.label_map import LabelMap
from detkeeper.data.sources import DataSources

from detkeeper.data.voc import read_voc

from test_coco import CATEGORIES, coco_file, jpeg_bytes
from test_voc import _annotation, _good, _object, _voc_folder


@pytest.fixture
def reads(monkeypatch):
    """The annotation files parsed and the images opened, in order."""
    done = {"parsed": [], "images": []}
    load_json, read_annotation, inspect = coco._load_json, voc._read_annotation, index.inspect_image

    def counting_read_annotation(root, image_id, *args):
        done["parsed"].append(f"{image_id}.xml")
        return read_annotation(root, image_id, *args)

    def counting_load_json(path):
        done["parsed"].append(path.name)
        return load_json(path)

    def counting_inspect(record, record_index=None):
        done["images"].append(record.image_path.name)
        return inspect(record, record_index)

    monkeypatch.setattr(coco, "_load_json", counting_load_json)
    monkeypatch.setattr(voc, "_read_annotation", counting_read_annotation)
    monkeypatch.setattr(index, "inspect_image", counting_inspect)
    return done


def _same(first, second):
    assert isinstance(second.records, RecordColumns)
    assert [r.image_id for r in first.records] == [r.image_id for r in second.records]
    for a, b in zip(first.records, second.records):
        assert (a.image_path, a.source, a.original_id, a.width, a.height) == (
            b.image_path, b.source, b.original_id, b.width, b.height)
        for field in ("boxes", "class_ids", "is_crowd", "area"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert first.problems == second.problems and first.checked == second.checked
    assert first.label_map == second.label_map and first.label_map.source == second.label_map.source


@pytest.fixture
def coco_set(tmp_path):
    """The three-image COCO file of test_coco, its images written beside it (c.jpg not an image)."""
    for name, size in (("a.jpg", (64, 48)), ("b.jpg", (32, 32))):
        (tmp_path / name).write_bytes(jpeg_bytes(*size))
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    return coco_file(tmp_path)


def test_a_second_coco_read_parses_no_json_and_opens_no_image(coco_set, reads, tmp_path):
    first = read_coco(coco_set, check_images=True)
    assert reads == {"parsed": ["instances.json"], "images": ["a.jpg", "b.jpg", "c.jpg"]}
    assert [(p.kind, p.record_index) for p in first.checked] == [("not_an_image", 2)]
    again = read_coco(coco_set, check_images=True)
    assert reads == {"parsed": ["instances.json"], "images": ["a.jpg", "b.jpg", "c.jpg"]}
    _same(first, again)
    assert again.records[0].image_path == (tmp_path / "a.jpg").resolve()
    assert again.records[1].source == f"{coco_set}#images[1]"
    assert again.label_map.ids == [3, 18] and again.label_map.source == f"{coco_set} categories"
    # What the records depend on keys the entry: another label map, another images folder.
    read_coco(coco_set, label_map=LabelMap.from_names(["dog", "car"]))
    other = tmp_path / "other"
    other.mkdir()
    assert read_coco(coco_set, images_dir=other).records[0].image_path == (other / "a.jpg").resolve()
    assert reads["parsed"] == ["instances.json"] * 3


def test_a_changed_coco_file_is_read_again(coco_set, reads):
    read_coco(coco_set)
    coco_file(coco_set.parent, annotations=[], images=[{"id": 5, "file_name": "b.jpg"}], categories=CATEGORIES)
    readout = read_coco(coco_set)
    assert reads["parsed"] == ["instances.json"] * 2
    assert [r.image_id for r in readout.records] == ["5"] and readout.records[0].num_boxes == 0


def test_an_image_changed_after_indexing_is_opened_again_alone(coco_set, reads, tmp_path):
    read_coco(coco_set, check_images=True)
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)  # now starts like a JPEG but is not one
    (tmp_path / "c.jpg").write_bytes(jpeg_bytes(10, 10))  # now a good image
    reads["images"].clear()
    readout = read_coco(coco_set, check_images=True)
    assert sorted(reads["images"]) == ["a.jpg", "c.jpg"] and reads["parsed"] == ["instances.json"]
    assert [(p.kind, p.record_index) for p in readout.checked] == [("corrupt_image", 0)]
    assert readout.checked == read_coco(coco_set, check_images=True).checked  # the entry was updated
    assert sorted(reads["images"]) == ["a.jpg", "c.jpg"]
    (tmp_path / "b.jpg").unlink()
    assert [(p.kind, p.record_index) for p in read_coco(coco_set, check_images=True).checked] == [
        ("corrupt_image", 0), ("missing_image", 1)]


def test_a_coco_split_prepared_from_the_index_drops_what_the_checks_found(coco_set, reads):
    data = DataConfig(train=SourceConfig("coco", str(coco_set)), val=None, test=None)
    for start in range(2):
        prepared = DataSources(data).prepare("train")
        assert [r.image_id for r in prepared.records] == ["7", "9"] and isinstance(prepared.records, RecordColumns)
        assert prepared.report.counts() == {"not_an_image": 1}
    assert reads["parsed"] == ["instances.json"] and len(reads["images"]) == 3


@pytest.fixture
def voc_set(tmp_path):
    """A VOC folder of three images (c's image is not one) and a split listing a and c."""
    root = _voc_folder(tmp_path / "voc", {name: _good(name) for name in "abc"}, {"some": "a\nc\n"})
    for name in "ab":
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg_bytes(64, 48))
    (root / "JPEGImages" / "c.jpg").write_bytes(b"not an image")
    return root


def test_a_second_voc_read_parses_no_xml_and_opens_no_image(voc_set, reads):
    first = read_voc(voc_set, split="some", check_images=True)
    assert reads == {"parsed": ["a.xml", "c.xml"], "images": ["a.jpg", "c.jpg"]}
    assert [(p.kind, p.source) for p in first.checked] == [("not_an_image", "Annotations/c.xml")]
    again = read_voc(voc_set, split="some", check_images=True)
    assert reads == {"parsed": ["a.xml", "c.xml"], "images": ["a.jpg", "c.jpg"]}
    _same(first, again)
    assert again.label_map.names == ["cat"] and again.label_map.source.startswith("derived from the class names")
    assert again.records[1].image_path == (voc_set / "JPEGImages" / "c.jpg").resolve()
    # Each split (and every annotation, without one) is an entry of its own.
    assert [r.image_id for r in read_voc(voc_set).records] == ["a", "b", "c"]
    assert [r.image_id for r in read_voc(voc_set).records] == ["a", "b", "c"]
    assert len(reads["parsed"]) == 2 + 3


def test_a_changed_voc_annotation_or_split_file_reads_the_split_again(voc_set, reads):
    read_voc(voc_set, split="some")
    (voc_set / "Annotations" / "c.xml").write_text(_annotation("c", _object(), _object("dog"), filename="c.jpg"))
    readout = read_voc(voc_set, split="some")
    assert reads["parsed"] == ["a.xml", "c.xml"] * 2
    assert readout.label_map.names == ["cat", "dog"] and readout.records[1].num_boxes == 2
    (voc_set / "ImageSets" / "Main" / "some.txt").write_text("a\nb\nc\n")
    assert [r.image_id for r in read_voc(voc_set, split="some").records] == ["a", "b", "c"]
    (voc_set / "Annotations" / "b.xml").unlink()
    readout = read_voc(voc_set, split="some")
    assert [(p.kind, p.source) for p in readout.problems] == [("malformed_annotation", "Annotations/b.xml")]
    assert [r.image_id for r in readout.records] == ["a", "c"] and len(reads["parsed"]) == 2 + 2 + 3 + 3


def test_a_voc_image_changed_after_indexing_is_opened_again_alone(voc_set, reads):
    read_voc(voc_set, split="some", check_images=True)
    (voc_set / "JPEGImages" / "c.jpg").write_bytes(jpeg_bytes(64, 48))
    readout = read_voc(voc_set, split="some", check_images=True)
    assert reads["images"] == ["a.jpg", "c.jpg", "c.jpg"] and readout.checked == []


def test_the_first_usable_records_open_only_the_images_it_takes(tmp_path, monkeypatch):
    """An export verifies on a few images: they are found without opening the split's other images."""
    from detkeeper.data import check

    names = [f"i{number}" for number in range(8)]
    root = _voc_folder(tmp_path / "voc", {name: _good(name) for name in names}, {"val": "\n".join(names)})
    for name in names:
        (root / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg_bytes(64, 48))
    (root / "JPEGImages" / "i1.jpg").write_bytes(b"not an image")
    opened = []
    inspect = check.inspect_image
    monkeypatch.setattr(check, "inspect_image", lambda record: opened.append(record.image_id) or inspect(record))
    sources = DataSources(DataConfig(val=SourceConfig("voc", str(root), split="val")), check_images=False)
    assert [record.image_id for record in sources.first_usable("val", 2)] == ["i0", "i2"]
    assert set(opened) == {"i0", "i1", "i2", "i3"}  # the first 2, then the first 4
