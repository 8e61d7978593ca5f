"""TensorBoard logs on a step axis: losses and learning rate while training, every validation stat
and pictures of the model's predictions at each evaluation.

Keras' own TensorBoard callback puts epoch logs on an epoch axis; detkeeper's "epoch" is an
evaluation interval, so this writer uses the optimizer's step for everything.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from detkeeper.data.label_map import LabelMap
from detkeeper.models.boxes import content_windows
from detkeeper.run.layout import TRAIN_LOGS_DIR, VALIDATION_LOGS_DIR
from detkeeper.visualize import draw_boxes


class TensorBoardLogger(keras.callbacks.Callback):
    """Writes ``<log_dir>/train`` (losses, learning rate) and ``<log_dir>/validation`` (stats, images).

    `sample_batch` (a few validation images from the evaluation dataset) is drawn with the
    model's detections at each evaluation; with `weight_average` the averaged weights draw them.
    """

    def __init__(self, log_dir: str | Path, *, every_steps: int = 20, learning_rate=None,
                 sample_batch: dict | None = None, label_map: LabelMap | None = None,
                 weight_average=None, monitor_prefix: str = "val_") -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.every_steps, self.learning_rate = every_steps, learning_rate
        self.sample_batch, self.label_map = sample_batch, label_map
        self.weight_average, self.prefix = weight_average, monitor_prefix
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
            if self.sample_batch is not None and self.label_map is not None:
                pictures = self._pictures()
                tf.summary.image("predictions", pictures, max_outputs=len(pictures))
        self._validation_writer.flush()

    def _pictures(self) -> np.ndarray:
        swap = self.weight_average.swapped_in(self.model) if self.weight_average else contextlib.nullcontext()
        with swap:
            detections = self.model.detect(self.sample_batch["images"], content_windows(
                self.sample_batch["image_scales"], self.sample_batch["image_sizes"]))
        pictures = []
        for image, boxes, scores, classes, count in zip(
                self.sample_batch["images"].numpy(), detections["boxes"].numpy(), detections["scores"].numpy(),
                detections["classes"].numpy(), detections["num_detections"].numpy()):
            keep = scores[:count] >= 0.3  # what a user would call a detection, not every candidate
            ids = self.label_map.indices_to_ids(classes[:count][keep])
            pictures.append(np.asarray(draw_boxes(image, boxes[:count][keep], ids, self.label_map,
                                                  scores=scores[:count][keep])))
        return np.stack(pictures).astype(np.uint8)
