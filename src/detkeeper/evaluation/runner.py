"""One validation pass: run a detector over an evaluation dataset and feed the COCO evaluator.

The model sees resized, padded images; COCO is computed in original-image pixels, so detections
are mapped back with the batch's ``image_scales`` and clipped to ``image_sizes``. Ground truth
comes from the records when given: exact boxes, crowd flags, declared areas and original image
ids (so a COCO dataset scores what pycocotools gives on its JSON files), every box even past
``max_boxes``; else from the batch itself (no crowds, box areas, string ids). The pass also times
the detector, for ``val_latency_ms``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data import columns
from detkeeper.data.image_format import decoded_size
from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord, denormalize_yxyx_batch
from detkeeper.evaluation.coco import CocoEvaluator
from detkeeper.evaluation.results import EvaluationResult
from detkeeper.models.boxes import content_windows, to_original_pixels

#: ``detect(images, windows)``: a batch of canvases and where each image lies in its canvas.
Detect = Callable[[tf.Tensor, tf.Tensor], Mapping[str, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class ValidationPass:
    """What one pass measured: the COCO result and the detector's speed."""

    result: EvaluationResult
    latency_ms: float  # detector wall time per image, first batch (tracing) excluded when possible
    num_images: int


def compiled_detect(model) -> Detect:
    """``model.detect`` as one graph (about 10x eager on CPU), retraced only for new batch sizes;
    traced as written, without AutoGraph, as Keras 3 traces a model (see detkeeper.data.pipeline)."""
    def detect(images, windows):
        return model.detect(images, windows)

    return tf.function(detect, reduce_retracing=True, autograph=False)


def run_validation(detect: Detect, dataset: tf.data.Dataset, label_map: LabelMap, *,
                   ground_truth: Sequence[DetectionRecord] | None = None, backend: str = "faster_coco_eval",
                   max_detections: int = 100, progress: Callable[[int], None] | None = None,
                   on_batch: Callable[[list[str], dict], None] | None = None) -> ValidationPass:
    """Detections of `detect` over `dataset` (a detkeeper evaluation dataset) scored by COCO.

    `detect` maps images and their content windows (``boxes.content_windows``) to ``{"boxes"
    (model pixels, yxyx), "scores", "classes" (contiguous indices, -1 padding), "num_detections"}``,
    i.e. :meth:`Detector.detect`. `on_batch` receives each batch's image ids and its detections
    as scored: original-image pixels, label-map ids.
    """
    def batches():
        for batch in dataset:
            started = time.perf_counter()
            raw = detect(batch["images"], content_windows(batch["image_scales"], batch["image_sizes"]))
            detections = {key: np.asarray(value) for key, value in raw.items()}
            seconds = time.perf_counter() - started
            image_ids = [value.decode("utf-8") for value in batch["image_ids"].numpy()]
            scales, sizes = batch["image_scales"].numpy(), batch["image_sizes"].numpy()
            yield (image_ids, original_detections(detections, label_map, scales, sizes), seconds,
                   None if ground_truth is not None else _batch_ground_truth(batch, label_map, image_ids, scales))

    return score_batches(batches(), label_map, ground_truth, backend, max_detections, progress, on_batch)


def run_export_validation(detect_encoded: Callable[[list[bytes]], Mapping[str, np.ndarray]],
                          records: Sequence[DetectionRecord], label_map: LabelMap, *, batch_size: int,
                          backend: str = "faster_coco_eval", max_detections: int = 100,
                          progress: Callable[[int], None] | None = None,
                          on_batch: Callable[[list[str], dict], None] | None = None) -> ValidationPass:
    """As :func:`run_validation` for an exported model: `detect_encoded` takes the records' encoded
    images and answers as a SavedModel does (``detection_boxes`` normalized, ``detection_classes``
    label-map ids); the export does its own resizing, so it is scored exactly as it will serve."""
    def batches():
        for first in range(0, len(records), batch_size):
            chosen = records[first:first + batch_size]
            encoded = [record.read_encoded() for record in chosen]
            sizes = np.array([decoded_size(data) for data in encoded], np.float32)
            started = time.perf_counter()
            outputs = detect_encoded(encoded)
            seconds = time.perf_counter() - started
            count = np.asarray(outputs["num_detections"]).astype(np.int64)
            width = np.asarray(outputs["detection_scores"]).shape[1]
            real = np.arange(width)[None, :] < count[:, None]
            classes = np.where(real, np.asarray(outputs["detection_classes"]).astype(np.int64), -1)
            boxes = denormalize_yxyx_batch(outputs["detection_boxes"], sizes)
            yield ([record.image_id for record in chosen],
                   {"boxes": boxes, "scores": np.asarray(outputs["detection_scores"]), "classes": classes,
                    "num_detections": count}, seconds, None)

    return score_batches(batches(), label_map, records, backend, max_detections, progress, on_batch)


def score_batches(batches, label_map: LabelMap, ground_truth, backend: str, max_detections: int, progress,
                  on_batch) -> ValidationPass:
    """Feed each ``(image ids, original-pixel detections, seconds, batch ground truth)`` to COCO
    (``batch ground truth`` None when `ground_truth`, the records, is given; image ids are the
    records' ``image_id`` strings). Every validation pass, in training, ``detkeeper evaluate`` and
    export verification, scores through here."""
    evaluator = CocoEvaluator(label_map, backend=backend, max_detections=max_detections)
    records = RecordsById(ground_truth) if ground_truth is not None else None
    timings: list[tuple[float, int]] = []
    for image_ids, detections, seconds, batch_truth in batches:
        timings.append((seconds, len(image_ids)))
        evaluator.update(records_ground_truth(records, image_ids) if records is not None else batch_truth,
                         detections)
        if on_batch is not None:
            on_batch(image_ids, detections)
        if progress is not None:
            progress(len(image_ids))
    return ValidationPass(result=evaluator.result(), latency_ms=_latency_ms(timings),
                          num_images=evaluator.num_images)


def original_detections(detections: dict, label_map: LabelMap, scales: np.ndarray, sizes: np.ndarray) -> dict:
    """Detections in model pixels and class indices -> original-image pixels and label-map ids."""
    boxes = to_original_pixels(detections["boxes"], scales, sizes).numpy()
    classes = detections["classes"].astype(np.int64)
    valid = classes >= 0
    ids = np.full_like(classes, -1)
    ids[valid] = label_map.indices_to_ids(classes[valid])
    return {"boxes": boxes, "scores": detections["scores"], "classes": ids,
            "num_detections": detections["num_detections"]}


def _batch_ground_truth(batch: dict, label_map: LabelMap, image_ids: list[str], scales: np.ndarray) -> dict:
    boxes = to_original_pixels(batch["boxes"], scales).numpy()
    classes = batch["classes"].numpy().astype(np.int64)
    valid = classes >= 0
    ids = np.full_like(classes, -1)
    ids[valid] = label_map.indices_to_ids(classes[valid])
    return {"image_ids": image_ids, "boxes": boxes, "classes": ids, "num_boxes": batch["num_boxes"].numpy()}


class RecordsById(Mapping[str, DetectionRecord]):
    """`records` looked up by image id (the last record of an id), each record made only when it is
    looked up: a split kept as columns stays columns through a pass, not 5,000 record objects."""

    def __init__(self, records: Sequence[DetectionRecord]) -> None:
        self._records = records
        self._position = {image_id: position for position, image_id in enumerate(columns.image_ids(records))}

    def __getitem__(self, image_id: str) -> DetectionRecord:
        return self._records[self._position[image_id]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._position)

    def __len__(self) -> int:
        return len(self._position)


def records_ground_truth(records: Mapping[str, DetectionRecord], image_ids: Iterable[str]) -> dict:
    """The evaluator's ground truth for `image_ids` (records' ``image_id``), straight from the
    records: crowd flags, COCO areas, and the original ids, whose type decides COCO's image order."""
    chosen = [records[image_id] for image_id in image_ids]
    width = max([record.num_boxes for record in chosen] + [1])
    boxes = np.full([len(chosen), width, 4], -1.0)
    classes = np.full([len(chosen), width], -1, np.int64)
    crowd = np.zeros([len(chosen), width], bool)
    area = np.zeros([len(chosen), width])
    for row, record in enumerate(chosen):
        count = record.num_boxes
        boxes[row, :count] = record.boxes
        classes[row, :count] = record.class_ids
        crowd[row, :count] = record.is_crowd
        area[row, :count] = record.coco_areas()
    return {"image_ids": [record.original_id for record in chosen], "boxes": boxes, "classes": classes,
            "is_crowd": crowd, "area": area, "num_boxes": np.array([record.num_boxes for record in chosen])}


def _latency_ms(timings: list[tuple[float, int]]) -> float:
    """Milliseconds per image; the first batch pays for tracing, so it is left out when others exist."""
    measured = timings[1:] if len(timings) > 1 else timings
    images = sum(count for _, count in measured)
    return 1000.0 * sum(seconds for seconds, _ in measured) / max(images, 1)
