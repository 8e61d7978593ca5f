"""A COCO split is evaluated streaming its images (issue 18): the pipeline keeps where each image
is, never its bytes, and reads each file when its batch is made; the ground truth of a pass is made
a batch at a time from the columns, and classes are mapped onto the model's without leaving them.
benchmarks/coco_val_memory.py measures the process's memory at 500 and 5,000 images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data import columns, pipeline
from detkeeper.data.columns import RecordColumns
from detkeeper.data.label_map import LabelMap
from detkeeper.data.sources import DataSources
from detkeeper.evaluation.evaluate import _map_classes
from detkeeper.evaluation.runner import RecordsById

IMAGES, SIDE = 12, 96


def _noise_jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture
def coco_split(tmp_path):
    """A COCO val split of 12 noise photos (a few KB each: more than the split's whole index), one box each."""
    images = tmp_path / "val"
    images.mkdir()
    entries, annotations = [], []
    for number in range(IMAGES):
        (images / f"{number:04d}.jpg").write_bytes(_noise_jpeg(number))
        entries.append({"id": 100 + number, "file_name": f"{number:04d}.jpg", "width": SIDE, "height": SIDE})
        annotations.append({"id": number + 1, "image_id": 100 + number, "bbox": [8, 8, 40, 30],
                            "category_id": 18 if number % 2 else 3, "area": 1000.0, "iscrowd": 0})
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": [{"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]}))
    data = DataConfig(val=SourceConfig("coco", str(path), images=str(images)))
    return DataSources(data).prepare("val"), images


def test_the_evaluation_pipeline_holds_where_images_are_and_reads_them_when_batched(coco_split):
    prepared, images = coco_split
    records = prepared.records
    assert isinstance(records, RecordColumns) and len(records) == IMAGES and (records.lengths == -1).all()
    tensors = pipeline._RecordTensors(records, prepared.label_map)
    held = sum(getattr(tensors, name).numpy().nbytes if name != "files" else
               sum(len(path) for path in tensors.files.numpy()) for name in
               ("files", "file_index", "offsets", "lengths", "image_ids", "row_splits", "boxes", "classes"))
    on_disk = sum(path.stat().st_size for path in images.iterdir())
    assert tensors.inline is None and held < on_disk / 10, (held, on_disk)

    dataset = pipeline.evaluation_dataset(records, prepared.label_map, image_size=SIDE, batch_size=4, max_boxes=2)
    grey = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (128, 128, 128)).save(grey, "PNG")
    (images / "0005.jpg").write_bytes(grey.getvalue())  # after the dataset is made: read when its batch is
    batches = list(dataset)
    assert [b["images"].shape[0] for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[1]["images"][1].numpy(), np.full((SIDE, SIDE, 3), 128.0, np.float32))
    assert batches[1]["images"][0].numpy().std() > 50  # a noise photo
    assert [value.decode() for value in batches[1]["image_ids"].numpy()] == ["104", "105", "106", "107"]


def test_a_pass_makes_the_ground_truth_of_each_batch_from_the_columns(coco_split, monkeypatch):
    records = coco_split[0].records
    made = []
    real = columns.DetectionRecord
    monkeypatch.setattr(columns, "DetectionRecord", lambda **fields: made.append(fields["image_id"]) or real(**fields))
    by_id = RecordsById(records)
    assert made == [] and len(by_id) == IMAGES and list(by_id)[:2] == ["100", "101"]
    record = by_id["103"]
    assert made == ["103"] and record.original_id == 103 and record.class_ids.tolist() == [18]


def test_classes_are_mapped_onto_the_model_label_map_in_the_columns(coco_split):
    prepared = coco_split[0]
    model_map = LabelMap.from_names(["dog", "car"])
    mapped = _map_classes(prepared.records, prepared.label_map, model_map, "val")
    assert isinstance(mapped, RecordColumns)
    assert mapped.class_ids.tolist() == [2, 1] * 6 and prepared.records.class_ids.tolist() == [3, 18] * 6
    assert [record.image_id for record in mapped] == [record.image_id for record in prepared.records]
