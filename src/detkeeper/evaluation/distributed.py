"""Validation under a tf.distribute strategy: detect on every replica, score once on the chief.

Each replica detects its slice of every global batch (:func:`detkeeper.data.pipeline.
sharded_evaluation_dataset`: no worker decodes another's images); the detections of all replicas,
on all workers, are gathered once per batch (``strategy.gather``); the chief alone runs the COCO
evaluation; its stats are then broadcast (an all-reduce to which only replica 0, on the chief,
contributes), so every worker writes the same ``val_*`` values into its logs and takes the same
early-stopping and stop-training decisions, as the collective steps that follow require.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data.label_map import LabelMap
from detkeeper.data.augment import Resize
from detkeeper.data.pipeline import InputShard, evaluation_steps, sharded_evaluation_dataset
from detkeeper.data.record import DetectionRecord
from detkeeper.evaluation.runner import ValidationPass, original_detections, score_batches
from detkeeper.models.boxes import content_windows

_GATHERED = ("boxes", "scores", "classes", "num_detections", "record_index", "image_scales", "image_sizes")


class DistributedValidation:
    """One validation pass of `records` under `strategy`, in global batches of `batch_size`."""

    def __init__(self, strategy: tf.distribute.Strategy, records: Sequence[DetectionRecord], label_map: LabelMap,
                 *, image_size: int, batch_size: int, max_boxes: int, is_chief: bool,
                 backend: str = "faster_coco_eval", max_detections: int = 100, resize: Resize = Resize()) -> None:
        self.strategy, self.records, self.label_map = strategy, records, label_map
        self.is_chief, self.backend, self.max_detections = is_chief, backend, max_detections
        self.steps = evaluation_steps(len(self.records), batch_size)

        def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return sharded_evaluation_dataset(self.records, label_map, image_size=image_size, batch_size=batch_size,
                                              max_boxes=max_boxes, resize=resize,
                                              shard=InputShard.from_input_context(context, batch_size))

        self.dataset = strategy.distribute_datasets_from_function(dataset)
        self._step = None

    def run(self, model, progress: Callable[[int], None] | None = None,
            on_batch: Callable[[list[str], dict], None] | None = None) -> ValidationPass | None:
        """Every worker must call this at the same moment; the chief gets the COCO result, the
        others None (they only detect their share). `on_batch` as in :func:`score_batches`, on the chief."""
        if self._step is None:
            self._step = self._step_function(model)
        batches = self._batches()
        if not self.is_chief:
            for _ in batches:
                pass  # the gathers are collective: every worker runs every step
            return None
        return score_batches(batches, self.label_map, self.records, self.backend, self.max_detections,
                             progress, on_batch)

    def broadcast(self, stats: Mapping[str, float] | None, names: Sequence[str]) -> dict[str, float]:
        """The chief's `stats` (by `names`, in this order) on every worker."""
        values = tf.constant([float(stats[name]) if stats is not None else 0.0 for name in names], tf.float64)
        total = _broadcast_from_replica_0(self.strategy, values)
        return {name: float(value) for name, value in zip(names, total.numpy())}

    def _step_function(self, model):
        strategy = self.strategy

        def detect(batch):
            detections = model.detect(batch["images"], content_windows(batch["image_scales"], batch["image_sizes"]))
            return {**detections, **{key: batch[key] for key in ("record_index", "image_scales", "image_sizes")}}

        @tf.function(autograph=False)
        def step(iterator):
            per_replica = strategy.run(detect, args=(next(iterator),))
            return {key: strategy.gather(per_replica[key], axis=0) for key in _GATHERED}

        return step

    def _batches(self):
        iterator = iter(self.dataset)
        for _ in range(self.steps):
            started = time.perf_counter()
            gathered = {key: np.asarray(value) for key, value in self._step(iterator).items()}
            seconds = time.perf_counter() - started
            real = gathered["record_index"] >= 0
            image_ids = [self.records[index].image_id for index in gathered["record_index"][real]]
            detections = {key: gathered[key][real] for key in ("boxes", "scores", "classes", "num_detections")}
            yield (image_ids, original_detections(detections, self.label_map, gathered["image_scales"][real],
                                                  gathered["image_sizes"][real]), seconds, None)


@tf.function(autograph=False)
def _broadcast_from_replica_0(strategy: tf.distribute.Strategy, values: tf.Tensor) -> tf.Tensor:
    """`values` of global replica 0 (on the chief) on every worker: an all-reduce of zeros elsewhere."""
    def contribution():
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, values, tf.zeros_like(values))

    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)
