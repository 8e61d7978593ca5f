"""COCO mAP inside Keras: a callback that writes ``val_mAP`` and friends into ``logs``.

Callbacks talk through Keras' ``logs`` dict, so whatever runs after this one in the same
``fit`` (detkeeper's checkpointer, Keras' own ``EarlyStopping`` or ``ModelCheckpoint``) can
monitor ``val_mAP``, ``val_mAP50``, ..., ``val_latency_ms`` and any custom monitor.

Custom monitors: a weighted sum of stats (``weighted_monitor({"mAP50": 0.1, "mAP": 0.9})``) or any
function of the stats registered with :func:`detkeeper.evaluation.monitors.register_monitor`;
each appears as ``val_<name>``.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import keras

from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord
from detkeeper.config.schema import MONITOR_STATS
from detkeeper.evaluation.monitors import Monitor, registered_monitors
from detkeeper.evaluation.runner import ValidationPass, compiled_detect, run_validation

class CocoEvaluationCallback(keras.callbacks.Callback):
    """Every `every_epochs` epochs, COCO-evaluate the model on `dataset` and add the stats to logs.

    `dataset` is a detkeeper evaluation dataset (:func:`detkeeper.data.pipeline.evaluation_dataset`).
    Pass the split's records as `ground_truth` for exact COCO numbers (every box, crowd flags, COCO
    areas, original image ids: what pycocotools gives on the dataset's files); without them the
    batch's own padded boxes are used. `max_detections` may be any N >= 1 (COCO's maxDets
    ``[1, min(10, N), N]``). With `weight_average`
    (:class:`detkeeper.models.ema.WeightAverage`) the averaged weights are evaluated. With
    `distributed` (:class:`detkeeper.evaluation.distributed.DistributedValidation`, under a
    tf.distribute strategy) every replica detects its share, the chief scores and the stats it
    computed are broadcast, so every worker's logs hold the same values; `dataset` is then unused.
    The detections of the images `keep_detections_of` names (record ``image_id``s) are kept from
    each pass in ``kept_detections`` (original pixels, label-map ids), for pictures of them
    (TensorBoard's) that need no detector run of their own; only the chief keeps any.
    """

    def __init__(self, dataset, label_map: LabelMap, *, ground_truth: Sequence[DetectionRecord] | None = None,
                 every_epochs: int = 1, prefix: str = "val_", backend: str = "faster_coco_eval",
                 max_detections: int = 100, weight_average=None,
                 monitors: Mapping[str, Monitor] | None = None,
                 on_progress: Callable[[int], None] | None = None, distributed=None,
                 keep_detections_of: Sequence[str] = ()) -> None:
        super().__init__()
        if every_epochs < 1:
            raise ValueError(f"every_epochs must be >= 1, got {every_epochs}")
        self.dataset, self.label_map, self.ground_truth = dataset, label_map, ground_truth
        self.every_epochs, self.prefix, self.backend = every_epochs, prefix, backend
        self.max_detections = max_detections
        self.weight_average = weight_average
        self.monitors = dict(monitors or {})
        self.on_progress = on_progress
        self.distributed = distributed
        self.last: ValidationPass | None = None  # None on a worker that is not the chief
        self.seconds: list[float] = []  # wall time of each validation pass, for the training benchmark
        self.kept_detections: dict[str, dict] = {}  # image_id -> its detections in the last pass
        self._keep = frozenset(keep_detections_of)
        self._detect = None

    def evaluate(self) -> ValidationPass | None:
        """One validation pass now (EMA weights when configured); also kept as ``self.last``.
        Distributed, only the chief gets the result (None elsewhere)."""
        started = time.perf_counter()
        self.kept_detections = {}
        if self._detect is None and self.distributed is None:
            self._detect = compiled_detect(self.model)
        if self.weight_average is not None:
            with self.weight_average.swapped_in(self.model):
                self.last = self._run()
        else:
            self.last = self._run()
        self.seconds.append(time.perf_counter() - started)
        return self.last

    def _run(self) -> ValidationPass | None:
        on_batch = self._keep_detections if self._keep else None
        if self.distributed is not None:
            return self.distributed.run(self.model, self.on_progress, on_batch)
        return run_validation(self._detect, self.dataset, self.label_map, ground_truth=self.ground_truth,
                              backend=self.backend, max_detections=self.max_detections,
                              progress=self.on_progress, on_batch=on_batch)

    def _keep_detections(self, image_ids: list[str], detections: dict) -> None:
        for row, image_id in enumerate(image_ids):
            if image_id in self._keep:
                self.kept_detections[image_id] = {key: value[row] for key, value in detections.items()}

    def stats(self, validation: ValidationPass) -> dict[str, float]:
        """Stats without prefix, custom monitors included."""
        stats = {**validation.result.stats, "latency_ms": validation.latency_ms}
        for name, function in {**registered_monitors(), **self.monitors}.items():
            stats[name] = float(function(stats))
        return stats

    def stat_names(self) -> list[str]:
        """The names :meth:`stats` returns, in its order."""
        return [*MONITOR_STATS, *{**registered_monitors(), **self.monitors}]

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every_epochs and not self.model.stop_training:
            return
        validation = self.evaluate()
        stats = self.stats(validation) if validation is not None else None
        if self.distributed is not None:
            stats = self.distributed.broadcast(stats, self.stat_names())
        if logs is not None:
            logs.update({f"{self.prefix}{name}": value for name, value in stats.items()})
