"""TensorBoard logs on a step axis: losses and learning rate while training, every validation stat
and pictures of the model's predictions at each evaluation.

Keras' own TensorBoard callback puts epoch logs on an epoch axis; detkeeper's "epoch" is an
evaluation interval, so this writer uses the optimizer's step for everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from detkeeper.data.label_map import LabelMap
from detkeeper.run.layout import TRAIN_LOGS_DIR, VALIDATION_LOGS_DIR
from detkeeper.visualize import draw_boxes


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes ``<log_dir>/train`` (losses, learning rate) and ``<log_dir>/validation`` (stats, images).

    `sample_batch` (a few validation images from the evaluation dataset) is drawn at each evaluation
    with the detections `detections()` returns for them (``{image_id: detections}`` in original
    pixels and label-map ids: :attr:`CocoEvaluationCallback.kept_detections`, the pass that was just
    scored, EMA weights included), so the pictures show what was scored and cost no detector run.
    """

    def __init__(self, log_dir: str | Path, *, every_steps: int = 20, learning_rate=None,
                 sample_batch: dict | None = None, label_map: LabelMap | None = None,
                 detections: Callable[[], Mapping[str, dict]] | None = None, monitor_prefix: str = "val_") -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.every_steps, self.learning_rate = every_steps, learning_rate
        self.sample_batch, self.label_map, self.detections = sample_batch, label_map, detections
        self.prefix = monitor_prefix
        self._train_writer = self._validation_writer = None

    def on_train_begin(self, logs=None) -> None:
        self._train_writer = tf.summary.create_file_writer(str(self.log_dir / TRAIN_LOGS_DIR))
        self._validation_writer = tf.summary.create_file_writer(str(self.log_dir / VALIDATION_LOGS_DIR))

    def on_train_end(self, logs=None) -> None:
        for writer in (self._train_writer, self._validation_writer):
            if writer is not None:
                writer.close()

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None) -> None:
        step = self._step()
        if step % self.every_steps:
            return
        with self._train_writer.as_default(step=step):
            for name, value in (logs or {}).items():
                if np.ndim(value) == 0:
                    tf.summary.scalar(name, float(value))
            if self.learning_rate is not None:
                tf.summary.scalar("learning_rate", float(self.learning_rate()))

    def on_epoch_end(self, epoch, logs=None) -> None:
        logs = logs or {}
        stats = {key[len(self.prefix):]: value for key, value in logs.items() if key.startswith(self.prefix)}
        if not stats:
            return
        step = self._step()
        with self._validation_writer.as_default(step=step):
            for name, value in stats.items():
                tf.summary.scalar(name, float(value))
            pictures = self._pictures()
            if pictures is not None:
                tf.summary.image("predictions", pictures, max_outputs=len(pictures))
        self._validation_writer.flush()

    def _pictures(self) -> np.ndarray | None:
        """The sample images with their scored detections above 0.3 (what a user would call a
        detection, not every candidate), boxes mapped back into the model's input; None when this
        process scored none of them (a worker that is not the chief)."""
        if self.sample_batch is None or self.label_map is None or self.detections is None:
            return None
        kept, batch = self.detections(), self.sample_batch
        pictures = []
        for image, image_id, factors in zip(batch["images"].numpy(), batch["image_ids"].numpy(),
                                            batch["image_scales"].numpy()):
            found = kept.get(image_id.decode("utf-8"))
            if found is None:
                continue
            count = int(found["num_detections"])
            scores = found["scores"][:count]
            keep = scores >= 0.3
            boxes = found["boxes"][:count][keep] * np.tile(factors, 2)  # original pixels -> the model input's
            pictures.append(np.asarray(draw_boxes(image, boxes, found["classes"][:count][keep], self.label_map,
                                                  scores=scores[keep])))
        return np.stack(pictures).astype(np.uint8) if pictures else None
