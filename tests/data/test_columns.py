"""A TFRecord split kept as columns (issue 18): the same records as DetectionRecords give, indexed and
iterated as a sequence, while a warm start checks it and builds the pipeline without making one."""

from __future__ import annotations

import numpy as np
import pytest

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data import columns, pipeline
from detkeeper.data.columns import RecordColumns
from detkeeper.data.sources import DataSources
from detkeeper.data.tfrecord import read_tfrecord_file
from detkeeper.data.tfrecord_writer import write_tfrecords

from test_tfrecord import LABEL_MAP, make_record


@pytest.fixture
def shards(tmp_path):
    records = [make_record(i, num_boxes=i % 3) for i in range(7)]
    records[5] = make_record(5, image_id="42", original_id=42)
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")
    return write_tfrecords(records, LABEL_MAP, tmp_path / "train.record", num_shards=2)


def _assert_same(record, expected):
    assert (record.image_id, record.original_id, record.source, record.image_span) == (
        expected.image_id, expected.original_id, expected.source, expected.image_span)
    assert (record.width, record.height) == (expected.width, expected.height)
    for field in ("boxes", "class_ids", "is_crowd", "area"):
        np.testing.assert_array_equal(getattr(record, field), getattr(expected, field), err_msg=field)


def test_columns_give_the_records_they_were_made_of(shards):
    parts = [read_tfrecord_file(str(path), LABEL_MAP).records for path in shards]
    joined = RecordColumns.concatenate([RecordColumns.from_records(part, str(path)) for part, path in zip(parts, shards)])
    expected = parts[0] + parts[1]
    assert len(joined) == 7 and joined.box_counts.tolist() == [record.num_boxes for record in expected]
    for record, wanted in zip(joined, expected):
        _assert_same(record, wanted)
    _assert_same(joined[-1], expected[-1])
    assert [record.image_id for record in joined[1:3]] == [record.image_id for record in expected[1:3]]
    assert isinstance(joined[6].original_id, int) and joined[6].original_id == 42  # record 5, shard 1's third
    with pytest.raises(IndexError):
        joined[7]
    keep_boxes = np.ones(len(joined.boxes), bool)
    keep_boxes[0] = False  # the first box of record 1 (record 0 has none)
    edited = joined.edited(np.array([False] + [True] * 6), keep_boxes, joined.boxes)
    assert [record.image_id for record in edited] == [record.image_id for record in expected[1:]]
    _assert_same(edited[0], expected[1].with_boxes(np.array([False, True])))
    _assert_same(edited[1], expected[2])


def test_a_warm_start_checks_and_feeds_the_pipeline_without_making_a_record(shards, monkeypatch):
    data = DataConfig(train=SourceConfig("tfrecord", str(shards[0].parent / "train.record-*")), val=None, test=None,
                      label_map=str(shards[0].parent / "label_map.pbtxt"))
    first = DataSources(data).prepare("train")
    made = []
    real = columns.DetectionRecord
    monkeypatch.setattr(columns, "DetectionRecord", lambda **fields: made.append(fields) or real(**fields))
    again = DataSources(data).prepare("train")
    tensors = pipeline._RecordTensors(again.records, again.label_map)
    assert made == [] and isinstance(again.records, RecordColumns) and tensors.count == 7
    assert again.num_boxes == first.num_boxes == 6
    _assert_same(again.records[3], first.records[3])
    assert len(made) == 2
