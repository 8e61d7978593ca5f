"""COCO box mAP as a Keras metric, for ``model.compile(optimizer, metrics=[CocoMetric(label_map)])``.

In a compiled test step Keras hands the metric the padded targets ``{"boxes", "classes"}`` of
:func:`detkeeper.models.detector.fit_inputs` (model-input pixels, class indices, -1 padding) and
the detector's raw head outputs. :meth:`CocoMetric.update_state` decodes those with the detector's
own ``postprocess`` (NMS, in the graph) and passes the numpy arrays of the batch to a
:class:`~detkeeper.evaluation.coco.CocoEvaluator` through ``tf.numpy_function``; the COCO API
computes the stat when Keras reads ``result()`` at the end of ``evaluate`` (``mAP``) or of the
validation pass of ``fit`` (``val_mAP``).

What it sees, and so what it measures:

* Boxes are in model-input pixels (the resized, padded image), not original-image pixels as in
  :func:`~detkeeper.evaluation.runner.run_validation`, so the size-dependent stats (``mAP_small``,
  ``AR_large``, ...) sort objects by their size in the model input; detections are clipped to the
  model input, not to the image inside its padding. Ground truth is what the targets hold: no crowd
  flags (every box is a normal object) and at most ``max_boxes`` boxes per image. For the exact
  dataset numbers (records' boxes, crowd regions, original pixels) use
  :class:`~detkeeper.evaluation.callback.CocoEvaluationCallback`.
* Images get ids 0, 1, 2, ... in the order they arrive, counted across batches and restarted by
  ``reset_state``; COCO breaks score ties across images by that order.
* Per batch, Keras' logs (progress bar, ``on_test_batch_end``) carry -1: the COCO evaluation runs
  only when ``result()`` is called eagerly, which Keras does once at the end of each pass. With
  ``run_eagerly=True`` every step's ``result()`` is eager and evaluates all images so far.
  Keep ``jit_compile`` off (the detector's default): NMS and ``tf.numpy_function`` have no XLA kernel.
* Training: COCO mAP over training batches is costly (NMS on every step) and means little (the
  weights change from batch to batch), so by default (``during_training=False``) the detector
  does not update the metric in training steps and the training logs carry -1 (COCO's
  "undefined") under its name; ``val_<name>`` is the number to monitor. With
  ``during_training=True`` the training logs get the stat over the epoch's training batches.

What the detector's ``compute_metrics`` must do for it (Keras 3 alone pairs a dict-output model's
metrics with its outputs one by one, so it refuses ``metrics=[CocoMetric(...)]`` for
``{"class_logits", "box_deltas"}`` and would look ``y_true`` up by output name): hand each
compiled metric the whole ``y`` and ``y_pred``; set ``metric.detector`` to itself where it is
``None`` (a metric restored from a ``.keras`` archive has none); skip metrics whose
``during_training`` is false in training steps. ``tests/evaluation/test_metric.py`` holds that
routing until :class:`~detkeeper.models.detector.Detector` has it.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.evaluation.coco import CocoEvaluator
from detkeeper.evaluation.results import STAT_NAMES, EvaluationResult

UNDEFINED = -1.0  # COCO's value for an average with nothing to average


@keras.saving.register_keras_serializable(package="detkeeper")
class CocoMetric(keras.metrics.Metric):
    """One COCO box stat (``stat``, one of :data:`~detkeeper.evaluation.results.STAT_NAMES`) of a
    detkeeper detector over every batch since the last ``reset_state``, as a Keras metric.

    `label_map` maps the model's class indices to the ids COCO averages over. `detector` decodes
    the raw outputs (its ``postprocess``); the detector a metric is compiled into sets it when it
    is left out. The metric is named after its stat unless `name` is given, so ``evaluate`` reports
    ``mAP`` and ``fit`` ``val_mAP``. Each instance runs its own NMS and COCO evaluation: compile two
    to watch two stats. After a pass, :attr:`last_result` holds all of that evaluation's numbers.
    """

    def __init__(self, label_map: LabelMap | Sequence[Mapping[str, Any]], stat: str = "mAP", *,
                 detector: keras.Model | None = None, during_training: bool = False,
                 backend: str = "faster_coco_eval", max_detections: int = 100, name: str | None = None,
                 dtype: str | None = None) -> None:
        if stat not in STAT_NAMES:
            raise ValueError(f"CocoMetric: unknown stat {stat!r}; choose one of {', '.join(STAT_NAMES)}")
        super().__init__(name=name or stat, dtype=dtype)
        self.label_map = label_map if isinstance(label_map, LabelMap) else _label_map_from_config(label_map)
        self.stat = stat
        self.during_training = bool(during_training)
        self.backend = backend
        self.max_detections = int(max_detections)
        self._evaluator = CocoEvaluator(self.label_map, backend=backend, max_detections=self.max_detections)
        self._lock = threading.Lock()  # numpy_function may run on several threads (e.g. one per replica)
        self._holder = _DetectorHolder(detector)
        self._next_image_id = 0
        self._result_batches = -1  # the batch count last_result was computed at
        self._batches = 0
        self.last_result: EvaluationResult | None = None

    @property
    def detector(self) -> keras.Model | None:
        """The detector whose ``postprocess`` decodes ``y_pred`` (kept out of Keras' tracking)."""
        return self._holder.detector

    @detector.setter
    def detector(self, detector: keras.Model | None) -> None:
        self._holder.detector = detector

    # --- Keras metric API -----------------------------------------------------------------------
    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch: ``y_true`` the padded targets ``{"boxes", "classes"}`` (model-input
        pixels, class indices, -1 padding), ``y_pred`` the detector's raw outputs."""
        if sample_weight is not None:
            raise ValueError("CocoMetric takes no sample weights: COCO weighs every image the same; "
                             "pass it in compile(metrics=...), not weighted_metrics")
        if not isinstance(y_true, Mapping) or "boxes" not in y_true or "classes" not in y_true:
            raise ValueError("CocoMetric: y_true must be the padded targets {'boxes', 'classes'} that "
                             f"detkeeper.models.detector.fit_inputs makes; got {_structure(y_true)}")
        if self.detector is None:
            raise ValueError(f"CocoMetric {self.name!r} has no detector to decode y_pred with: compile it "
                             "into a detkeeper detector, or set metric.detector = model")
        # y_true carries no content windows: a padded TF OD API family's detections are clipped to
        # the whole canvas here (Detector.nms_clipping), to the photo in run_validation.
        detections = self.detector.postprocess(y_pred)
        tf.numpy_function(
            self._add_batch,
            [tf.cast(y_true["boxes"], tf.float32), tf.cast(y_true["classes"], tf.int64),
             detections["boxes"], detections["scores"], tf.cast(detections["classes"], tf.int64),
             tf.cast(detections["num_detections"], tf.int64)],
            Tout=tf.int64, stateful=True, name="coco_metric_update")

    def result(self):
        """The stat as a float64 scalar; -1 in a compiled step and before any image (see module doc)."""
        if not tf.executing_eagerly():
            return tf.constant(UNDEFINED, tf.float64)
        return tf.constant(self._evaluate(), tf.float64)

    def reset_state(self) -> None:
        """Forget every image (and restart image ids at 0)."""
        with self._lock:
            self._evaluator.reset()
            self._next_image_id = 0
            self._batches = 0
            self._result_batches = -1
            self.last_result = None

    def get_config(self) -> dict:
        return {**super().get_config(), "stat": self.stat, "during_training": self.during_training,
                "backend": self.backend, "max_detections": self.max_detections,
                "label_map": [{"id": item.id, "name": item.name, "display_name": item.display_name}
                              for item in self.label_map.items]}

    @classmethod
    def from_config(cls, config: dict) -> "CocoMetric":
        """A metric without a detector: the detector it is compiled into gives it itself."""
        return cls(**config)

    # --- Python side ----------------------------------------------------------------------------
    def _add_batch(self, gt_boxes: np.ndarray, gt_classes: np.ndarray, det_boxes: np.ndarray,
                   det_scores: np.ndarray, det_classes: np.ndarray, num_detections: np.ndarray) -> np.int64:
        with self._lock:
            size = len(gt_boxes)
            image_ids = np.arange(self._next_image_id, self._next_image_id + size, dtype=np.int64)
            self._evaluator.update(
                {"image_ids": image_ids, "boxes": gt_boxes, "classes": self._ids(gt_classes)},
                {"boxes": det_boxes, "scores": det_scores, "classes": self._ids(det_classes),
                 "num_detections": num_detections})
            self._next_image_id += size
            self._batches += 1
        return np.int64(size)

    def _ids(self, indices: np.ndarray) -> np.ndarray:
        """Contiguous class indices -> label-map ids, -1 padding kept."""
        valid = indices >= 0
        ids = np.full(indices.shape, -1, np.int64)
        ids[valid] = self.label_map.indices_to_ids(indices[valid])
        return ids

    def _evaluate(self) -> float:
        with self._lock:
            if self._evaluator.num_images == 0:
                return UNDEFINED
            if self._result_batches != self._batches:
                self.last_result = self._evaluator.result()
                self._result_batches = self._batches
            return self.last_result.stats[self.stat]


class _DetectorHolder:
    """Holds the detector where neither Keras' nor TensorFlow's tracking looks, so the model never
    becomes a dependency of its own metric (no cycle in checkpoints or in ``.keras`` configs)."""

    def __init__(self, detector: keras.Model | None) -> None:
        self.detector = detector


def _label_map_from_config(items: Sequence[Mapping[str, Any]]) -> LabelMap:
    return LabelMap([LabelMapItem(int(item["id"]), str(item["name"]), str(item.get("display_name", item["name"])))
                     for item in items], source="CocoMetric label_map")


def _structure(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a dict with keys " + ", ".join(map(repr, value))
    return type(value).__name__


__all__ = ["CocoMetric"]
