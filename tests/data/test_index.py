"""The dataset index (issue 18): a TFRecord shard is read and its images opened once; later reads come
from the index while the shard is unchanged; a changed, added or damaged shard is read again on its
own; an index entry that does not load is never trusted."""

from __future__ import annotations

import os

import numpy as np
import pytest

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data import index, tfrecord
from detkeeper.data.label_map import LabelMap
from detkeeper.data.sources import DataSources
from detkeeper.data.tfrecord import read_tfrecords
from detkeeper.data.tfrecord_writer import write_tfrecords

from test_tfrecord import LABEL_MAP, make_record


@pytest.fixture
def shards(tmp_path):
    records = [make_record(i, num_boxes=1 + i % 3) for i in range(12)]
    return write_tfrecords(records, LABEL_MAP, tmp_path / "data" / "train.record", num_shards=3), records


@pytest.fixture
def reads(monkeypatch):
    """The shards read from their files, and the images opened, in order."""
    done = {"files": [], "images": 0}
    read_file, inspect = tfrecord.read_tfrecord_file, index.inspect_image

    def counting_read(file, label_map):
        done["files"].append(os.path.basename(file))
        return read_file(file, label_map)

    def counting_inspect(record, record_index=None):
        done["images"] += 1
        return inspect(record, record_index)

    monkeypatch.setattr(tfrecord, "read_tfrecord_file", counting_read)
    monkeypatch.setattr(index, "inspect_image", counting_inspect)
    return done


def _same(first, second):
    assert [r.image_id for r in first.records] == [r.image_id for r in second.records]
    for a, b in zip(first.records, second.records):
        assert a.image_span == b.image_span and a.source == b.source and a.original_id == b.original_id
        assert (a.width, a.height) == (b.width, b.height)
        for field in ("boxes", "class_ids", "is_crowd", "area"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    assert first.problems == second.problems and first.label_map == second.label_map
    assert first.checked == second.checked


def test_a_second_read_comes_from_the_index_without_reading_the_shards(shards, reads):
    paths, records = shards
    pattern = str(paths[0].parent / "train.record-*")
    first = read_tfrecords(pattern, LABEL_MAP, check_images=True)
    assert sorted(reads["files"]) == [path.name for path in paths] and reads["images"] == 12
    again = read_tfrecords(pattern, LABEL_MAP, check_images=True)
    assert len(reads["files"]) == 3 and reads["images"] == 12  # nothing read or opened again
    _same(first, again)
    assert [record.read_encoded() for record in again.records[:2]] == [record.read_encoded()
                                                                       for record in first.records[:2]]
    # Another label map reads the shards anew (ids and dropped boxes depend on it).
    read_tfrecords(pattern, LabelMap.from_names(["cat"]))
    assert len(reads["files"]) == 6


def test_a_changed_or_added_shard_is_read_again_alone(shards, reads, tmp_path):
    paths, records = shards
    pattern = str(paths[0].parent / "train.record-*")
    read_tfrecords(pattern, LABEL_MAP)
    # Shard 1 rewritten with other content (another size), shard 2 touched (same bytes, newer mtime).
    write_tfrecords(records[:2], LABEL_MAP, tmp_path / "other" / "x.record", num_shards=1)[0].replace(paths[1])
    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (tmp_path / "data" / "train.record-extra").write_bytes((tmp_path / "data" / "train.record-00000-of-00003")
                                                           .read_bytes())
    reads["files"].clear()
    readout = read_tfrecords(pattern, LABEL_MAP)
    assert sorted(reads["files"]) == ["train.record-00001-of-00003", "train.record-00002-of-00003",
                                      "train.record-extra"]
    assert [r.image_id for r in readout.records[4:6]] == ["img_000", "img_001"]  # the new shard 1
    assert len(readout.records) == 4 + 2 + 4 + 4


def test_a_shard_cut_short_after_indexing_is_read_again_and_its_damage_reported(shards, reads):
    paths, _ = shards
    read_tfrecords(paths[0], LABEL_MAP)
    paths[0].write_bytes(paths[0].read_bytes()[:-20])
    readout = read_tfrecords(paths[0], LABEL_MAP)
    assert len(reads["files"]) == 2
    assert [problem.kind for problem in readout.problems] == ["corrupt_record"]
    assert readout.problems[0].source == f"{paths[0]}#3" and len(readout.records) == 3


def test_an_index_entry_that_does_not_load_is_never_trusted(shards, reads, caplog):
    paths, _ = shards
    first = read_tfrecords(paths[0], LABEL_MAP, check_images=True)
    entry = index._entry_path(paths[0], LABEL_MAP.to_pbtxt())
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # as a tool killed mid-copy would leave it
    again = read_tfrecords(paths[0], LABEL_MAP, check_images=True)
    assert len(reads["files"]) == 2 and "does not load" in caplog.text
    _same(first, again)
    read_tfrecords(paths[0], LABEL_MAP, check_images=True)
    assert len(reads["files"]) == 2  # the entry was written anew, whole


def test_an_index_without_image_checks_is_completed_when_a_check_asks_for_them(shards, reads):
    paths, _ = shards
    read_tfrecords(paths[0], LABEL_MAP)
    assert reads["images"] == 0
    assert read_tfrecords(paths[0], LABEL_MAP, check_images=True).checked == []
    assert reads["images"] == 4


def test_a_split_prepared_from_the_index_drops_what_the_checks_found(tmp_path, reads):
    """A corrupt image found in the indexing pass is dropped from the split on every later start too,
    without opening it again."""
    records = [make_record(i) for i in range(4)]
    broken = make_record(4, encoded_image=b"\xff\xd8\xff" + b"\x00" * 64)  # starts like a JPEG, is not one
    (path,) = write_tfrecords(records + [broken], LABEL_MAP, tmp_path / "train.record")
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")

    data = DataConfig(train=SourceConfig("tfrecord", str(path)), val=None, test=None,
                      label_map=str(tmp_path / "label_map.pbtxt"))
    for start in range(2):
        prepared = DataSources(data).prepare("train")
        assert [r.image_id for r in prepared.records] == [f"img_{i:03d}" for i in range(4)]
        assert [(p.kind, p.image_id) for p in prepared.report.problems] == [("corrupt_image", "img_004")]
    assert len(reads["files"]) == 1 and reads["images"] == 5


def test_a_warm_prepare_takes_the_checks_of_each_record_from_the_index(tmp_path, reads, monkeypatch):
    """What checking a record alone finds (its image, its boxes against the image's size) is kept in the
    index: a later start checks no box again, and finds the same problems, indexed into the split."""
    from detkeeper.data import check

    records = [make_record(i, num_boxes=3) for i in range(9)]
    records[4] = make_record(4, boxes=[[0, 0, 0, 9], [-5, 3, 20, 30], [50, 2, 60, 9]], class_ids=[1, 2, 3],
                             is_crowd=[False] * 3)  # zero area, crosses the border, outside the 64x48 image
    records[7] = make_record(7, encoded_image=b"\xff\xd8\xff" + b"\x00" * 64)
    paths = write_tfrecords(records, LABEL_MAP, tmp_path / "train.record", num_shards=3)
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")
    data = DataConfig(train=SourceConfig("tfrecord", str(tmp_path / "train.record-*")), val=None, test=None,
                      label_map=str(tmp_path / "label_map.pbtxt"), max_boxes=2)
    first = DataSources(data).prepare("train")
    opened = read_tfrecords(paths, LABEL_MAP)  # the same records, their images opened by the checker itself
    assert first.report.problems == opened.problems + check.check_records(opened.records, max_boxes=2)
    as_list = list(opened.records)  # the policy on columns keeps what it keeps on a list of records
    by_list = check.drop_bad(as_list, check.check_records(as_list, max_boxes=2))
    assert [r.image_id for r in first.records] == [r.image_id for r in by_list]
    for kept, wanted in zip(first.records, by_list):
        np.testing.assert_array_equal(kept.boxes, wanted.boxes)
        np.testing.assert_array_equal(kept.class_ids, wanted.class_ids)
    assert {(p.kind, p.record_index) for p in first.report.problems} >= {
        ("zero_area_box", 4), ("box_clipped", 4), ("box_outside_image", 4), ("corrupt_image", 5)}  # in shard 1

    checked_boxes = []
    monkeypatch.setattr(check, "check_boxes", lambda *args: checked_boxes.append(args) or [])
    again = DataSources(data).prepare("train")
    assert checked_boxes == [] and reads["images"] == 9
    assert again.report.problems == first.report.problems
    assert [r.image_id for r in again.records] == [r.image_id for r in first.records]
    np.testing.assert_array_equal(again.records[4].boxes, first.records[4].boxes)  # clipped on both


def test_the_images_of_one_shard_are_opened_side_by_side(tmp_path, monkeypatch):
    """A dataset in one shard is checked in parallel threads too (Pillow decodes without the GIL): two
    images of the shard must be open at the same time, or the barrier below times out."""
    import threading

    (path,) = write_tfrecords([make_record(i) for i in range(4)], LABEL_MAP, tmp_path / "one.record")
    both_open = threading.Barrier(2, timeout=10)
    inspect = index.inspect_image

    def meeting(record, record_index=None):
        if record.image_id in ("img_000", "img_001"):
            both_open.wait()
        return inspect(record, record_index)

    monkeypatch.setattr(index, "inspect_image", meeting)
    readout = read_tfrecords(path, LABEL_MAP, check_images=True)
    assert len(readout.records) == 4 and not readout.problems


def test_a_split_without_a_label_map_is_read_once_to_derive_it_and_to_train(shards, reads, tmp_path):
    """The label map derived from the first split comes from the same read as that split's records: each
    shard is read once, on a cold start as on a warm one (one index entry per shard)."""
    paths, records = shards
    (val,) = write_tfrecords(records[:2], LABEL_MAP, tmp_path / "val" / "val.record")
    data = DataConfig(train=SourceConfig("tfrecord", str(paths[0].parent / "train.record-*")),
                      val=SourceConfig("tfrecord", str(val)), test=None)
    for start in range(2):
        sources = DataSources(data)
        train, val_split = sources.prepare("train"), sources.prepare("val")
        assert sorted(reads["files"]) == sorted([path.name for path in paths] + [val.name])
        assert sources.label_map.names == LABEL_MAP.names and len(train.records) == 12 and len(val_split.records) == 2
    derived = sources.label_map.to_pbtxt()
    assert all(index._entry_path(str(path), "").is_file() and not index._entry_path(str(path), derived).exists()
               for path in paths)
