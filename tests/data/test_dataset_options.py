"""tf.data's autotuning stays off in every dataset detkeeper iterates (dropping an iterator can wait
up to a minute for its thread in TensorFlow 2.21; detkeeper/data/dataset_options.py). The pipelines'
own options are checked in test_pipeline.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf

import detkeeper
from detkeeper.data import dataset_options
from detkeeper.data.dataset_options import decoding_calls, tfrecord_dataset

SOURCE = Path(detkeeper.__file__).resolve().parent


def test_a_tfrecord_file_is_read_in_order_without_autotuning(tmp_path):
    path = tmp_path / "records.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for number in range(5):
            writer.write(b"record %d" % number)
    dataset = tfrecord_dataset(str(path))
    assert dataset.options().autotune.enabled is False
    assert [record.numpy() for record in dataset] == [b"record %d" % number for number in range(5)]


def test_tfrecord_files_are_read_only_through_it():
    """The TFRecord reader and the report's TensorBoard event files both read TFRecords."""
    builders = [str(path.relative_to(SOURCE)) for path in SOURCE.rglob("*.py")
                if "TFRecordDataset(" in path.read_text() and path.name != "dataset_options.py"]
    assert builders == []


@pytest.mark.parametrize(("cores", "calls"), [(1, 1), (2, 1), (8, 7)])
def test_decoding_leaves_a_core_to_the_models_step(monkeypatch, cores, calls):
    """On 2 cores a second decoding call slowed the training step it fed by 4-6%."""
    monkeypatch.setattr(dataset_options.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert decoding_calls() == calls
