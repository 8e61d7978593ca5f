"""``detkeeper.load``: an export (or a run's checkpoint) as a predictor that knows its labels.

    predictor = detkeeper.load("runs/cells/exports/step-0001200")
    found = predictor.detect_files(["a.jpg", "b.png"])          # per image: pixel boxes + labels
    raw = predictor(uint8_images)                               # the SavedModel's own outputs

An export is loaded with ``tf.saved_model.load``, as a user without detkeeper would, so a
predictor answers exactly as the export will in production. TF OD API exports load too (their
classes are named by id when they carry no label map). A run directory or checkpoint is wrapped
in the same serving module in memory, with the run's evaluation thresholds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data.image_format import decoded_size
from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import denormalize_yxyx_batch
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.export.exporter import serving_module_for
from detkeeper.export.serving import DETECTION_KEYS
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.run.sources import find_saved_model, resolve_model_source


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    """Detections of one image, in its own pixels: boxes ``[N, 4]`` (ymin, xmin, ymax, xmax)."""

    image: str
    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray  # label-map ids
    labels: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    image: str
    reason: str


class Predictor:
    """Detections with labels from an export or a checkpoint; see :func:`load`."""

    def __init__(self, detect_images, detect_encoded, label_map: LabelMap | None, metadata: dict,
                 source: str) -> None:
        self._detect_images = detect_images  # uint8 [B, H, W, 3] -> the SavedModel's outputs
        self._detect_encoded = detect_encoded  # string [B] -> the SavedModel's outputs
        self.label_map = label_map  # None for a TF OD API export, which carries none
        self.metadata = metadata
        self.source = source

    @property
    def labels(self) -> dict[int, str]:
        """Display names by label-map id (empty when the export carries no label map)."""
        return {} if self.label_map is None else {item.id: item.display_name for item in self.label_map.items}

    def __call__(self, images) -> dict[str, np.ndarray]:
        """The SavedModel's outputs (normalized boxes, float ids) for uint8 ``[B, H, W, 3]`` images
        of one size (or one ``[H, W, 3]`` image)."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DetkeeperError(f"images: expected uint8 [batch, height, width, 3], got shape {images.shape}")
        return _numpy(self._detect_images(tf.constant(images.astype(np.uint8))))

    def detect_encoded(self, encoded: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The SavedModel's outputs for encoded images (JPEG, PNG, BMP, GIF), each of its own size."""
        return _numpy(self._detect_encoded(tf.constant(list(encoded), tf.string)))

    def detect_files(self, paths: Iterable[str | os.PathLike], *, batch_size: int = 8,
                     progress: Callable[[int], None] | None = None,
                     skipped: list[SkippedImage] | None = None) -> list[ImageDetections]:
        """Detections per image file. Files that cannot be read or decoded are appended to `skipped`
        (a list you pass) with the reason, and the others go on."""
        found: list[ImageDetections] = []
        batch: list[tuple[str, bytes, tuple[int, int]]] = []
        for path in paths:
            try:
                data = Path(path).read_bytes()
                size = decoded_size(data)
            except (OSError, DataError) as error:
                if skipped is None:
                    raise DataError(f"{path}: {error}") from None
                skipped.append(SkippedImage(str(path), str(error)))
                if progress is not None:
                    progress(1)
                continue
            batch.append((str(path), data, size))
            if len(batch) == batch_size:
                found += self._detect_batch(batch, progress)
                batch = []
        if batch:
            found += self._detect_batch(batch, progress)
        return found

    def _detect_batch(self, batch, progress) -> list[ImageDetections]:
        outputs = self.detect_encoded([data for _, data, _ in batch])
        found = []
        for row, (name, _, (height, width)) in enumerate(batch):
            count = int(outputs["num_detections"][row])
            boxes = denormalize_yxyx_batch(outputs["detection_boxes"][row, :count], (height, width))
            class_ids = outputs["detection_classes"][row, :count].astype(np.int64)
            labels = tuple(self.labels.get(int(class_id), f"class {int(class_id)}") for class_id in class_ids)
            found.append(ImageDetections(name, height, width, boxes, outputs["detection_scores"][row, :count],
                                         class_ids, labels))
        if progress is not None:
            progress(len(batch))
        return found


def load(path: str | os.PathLike, checkpoint: str | int | None = None) -> Predictor:
    """A :class:`Predictor` for an export directory or SavedModel (TF OD API ones too), or for a
    run directory / checkpoint (`checkpoint`: best, latest or a step)."""
    saved_model = find_saved_model(path)
    if saved_model is None:
        return _from_checkpoint(path, checkpoint)
    if checkpoint is not None:
        raise DetkeeperError(f"{path} is an export: it holds one checkpoint's weights; --checkpoint applies to "
                             "run directories")
    return _from_saved_model(saved_model)


def _from_saved_model(folder: Path) -> Predictor:
    try:
        module = tf.saved_model.load(os.fspath(folder))
    except (tf.errors.OpError, ValueError, OSError, IndexError) as error:  # IndexError: a truncated file
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        raise DetkeeperError(f"{folder}: cannot load the SavedModel, is it complete? "
                             f"({message.strip().splitlines()[0][:300]})") from None
    signatures = getattr(module, "signatures", {})
    serving = signatures.get("serving_default") if hasattr(signatures, "get") else None
    outputs = set(serving.structured_outputs) if serving is not None else set()
    if not set(DETECTION_KEYS) <= outputs or "encoded_image_string_tensor" not in signatures:
        raise DetkeeperError(
            f"{folder}: not a detection SavedModel: expected signatures serving_default (outputs "
            f"{', '.join(DETECTION_KEYS)}) and encoded_image_string_tensor, found "
            f"{', '.join(sorted(signatures.keys())) or 'none'}")
    if "metadata" in signatures:
        described = signatures["metadata"]()
        metadata = json.loads(described["metadata"].numpy().decode("utf-8"))
        label_map = LabelMap.from_pbtxt_text(described["label_map"].numpy().decode("utf-8"), f"{folder} label map")
    else:  # a TF OD API export: no label map inside
        metadata, label_map = {}, None
    encoded = signatures["encoded_image_string_tensor"]
    return Predictor(lambda images: serving(input_tensor=images), lambda data: encoded(input_tensor=data),
                     label_map, metadata, str(folder))


def _from_checkpoint(path, checkpoint) -> Predictor:
    run, which = resolve_model_source(path, checkpoint)
    restored = restore_run_checkpoint(run, which)
    module, metadata = serving_module_for(restored)
    return Predictor(module, module.detect_encoded_images, restored.label_map, metadata, str(path))


def _numpy(outputs) -> dict[str, np.ndarray]:
    """Every output the SavedModel has: the eight of detkeeper and TF OD API exports, or the four
    detection outputs of detkeeper exports made before the raw and per-anchor ones were added."""
    return {key: np.asarray(value) for key, value in outputs.items()}
