"""Images that do not decode, in a TFRecord dataset (issue 18): each is found once, when its shard is
indexed, by the decoder training uses, and left out of the split on every start alike, so the
batches (and exact resume) stay a pure function of (dataset, seed, step); training goes on, and the
records skipped are counted in train.log and in the ledger.

Six records in two shards: record 2's image is a JPEG's first three bytes and garbage, record 4's a PNG without its last
chunk, which Pillow decodes and TensorFlow refuses (before the check decoded with TensorFlow, the
check let it through and training stopped at it with a TensorFlow error).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import training_dataset
from detkeeper.data.record import DetectionRecord
from detkeeper.data.sources import DataSources
from detkeeper.data.tfrecord_writer import write_tfrecords
from detkeeper.training.trainer import train

LABEL_MAP = LabelMap.from_names(["cell"])
SKIPPED = {"corrupt_image": 2}


def _png(number: int) -> bytes:
    pixels = np.random.default_rng(number).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """(shard pattern, label map file, records): six records, two of whose images do not decode."""
    monkeypatch.setenv("DETKEEPER_CACHE", str(tmp_path / "cache"))
    images = [_png(number) for number in range(6)]
    images[2] = b"\xff\xd8\xff" + np.random.default_rng(2).bytes(500)  # a JPEG's first bytes, then garbage
    images[4] = images[4][:-20]  # the IEND chunk and a little more: Pillow still decodes it
    records = [DetectionRecord(image_id=f"img_{number}", boxes=[[4, 6, 30, 40]], class_ids=[1], is_crowd=[False],
                               source=f"made#{number}", encoded_image=image, width=64, height=48)
               for number, image in enumerate(images)]
    paths = write_tfrecords(records, LABEL_MAP, tmp_path / "data" / "train.record", num_shards=2)
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")
    return str(paths[0].parent / "train.record-*"), tmp_path / "label_map.pbtxt", records


def _batches(pattern, label_map_file, count=6, start_step=0):
    """A start's training batches of 2 from `start_step` on, `count` of them (6: three epochs of the four
    good records)."""
    data = DataConfig(train=SourceConfig("tfrecord", pattern), val=None, test=None, label_map=str(label_map_file))
    sources = DataSources(data)
    prepared = sources.prepare("train")
    dataset = training_dataset(prepared.records, sources.label_map, image_size=32, batch_size=2, max_boxes=2,
                               augmentation=None, seed=3, start_step=start_step)
    return prepared, [batch for _, batch in zip(range(count), dataset)]


def test_undecodable_images_are_left_out_alike_on_every_start_and_counted(dataset):
    first, batches = _batches(*dataset[:2])  # indexes the shards, decoding every image once
    again, batches_again = _batches(*dataset[:2])  # from the index: nothing decoded to decide
    _, resumed = _batches(*dataset[:2], count=3, start_step=3)  # a run resumed at step 3 sees batches 3, 4, 5
    ids = [image_id.decode() for batch in batches for image_id in batch["image_ids"].numpy()]
    assert sorted(set(ids)) == ["img_0", "img_1", "img_3", "img_5"] and len(ids) == 12
    for batch, same in [*zip(batches, batches_again), *zip(batches[3:], resumed)]:
        np.testing.assert_array_equal(batch["images"].numpy(), same["images"].numpy())
        np.testing.assert_array_equal(batch["image_ids"].numpy(), same["image_ids"].numpy())
    assert first.counts() == again.counts() == {"read": 6, "used": 4, "skipped": SKIPPED}
    problems = {problem.image_id: problem for problem in first.report.problems}
    assert "cannot be decoded: not a readable image (Invalid PNG data" in problems["img_4"].detail
    assert problems["img_4"].source.endswith("train.record-00000-of-00002#2")


def test_a_run_skips_them_logs_and_records_how_many(dataset, tmp_path):
    pattern, label_map_file, _ = dataset
    split = {"format": "tfrecord", "path": pattern, "split": None}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "preset": "demo", "run_dir": str(tmp_path / "run"),
        "data": {"train": split, "val": {**split, "path": pattern.replace("*", "00001-of-00002")}, "test": None,
                 "label_map": str(label_map_file),
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "model": {"image_size": 64, "neck": {"channels": 16, "max_level": 5}, "head": {"channels": 16, "convs": 0}},
        "train": {"batch_size": 2, "steps": 2, "schedule": {"name": "constant", "warmup_steps": 0}},
        "evaluation": {"every_steps": 2}, "early_stopping": {"enabled": False},
    }))
    result = train(config)
    assert result.status == "finished" and result.step == 2
    log = (tmp_path / "run" / "train.log").read_text()
    assert "4 of 6 records kept" in log and "2  corrupt_image" in log
    ledger = json.loads(result.ledger_path.read_text())
    assert ledger["data"] == {"train": {"read": 6, "used": 4, "skipped": SKIPPED},
                              "val": {"read": 3, "used": 3, "skipped": {}}}  # the val split: shard 1 alone
