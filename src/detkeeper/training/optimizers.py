"""The optimizer and its learning-rate schedule, built from the ``train`` config section.

The schedule is the TF Object Detection API's: the rate climbs linearly from 0 at step 0 to the
peak at ``warmup_steps`` (``learning_schedules.cosine_decay_with_warmup`` with
``warmup_learning_rate: 0``), then stays constant, follows a half cosine down to 0 at the last
training step, or is multiplied by ``decay_rate`` at each of ``decay_steps`` (absolute step
numbers, as in the API's ``manual_stepping``). It is a pure function of the optimizer's step
counter, which a ``tf.train.Checkpoint`` of the optimizer stores, so a resumed run continues the
schedule exactly where it stopped.

Keras evaluates the schedule at ``optimizer.iterations`` *before* incrementing it, so update
``k`` (counting from 0) uses ``schedule(k)``: the very first update has rate 0 when there is a
warmup, as in the TF OD API.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import keras
import tensorflow as tf

from detkeeper.config.schema import ScheduleConfig, TrainConfig
from detkeeper.errors import ConfigError
from detkeeper.training.fused_updates import FusedAdam, FusedAdamW, FusedSGD

Decay = Literal["constant", "cosine", "step"]
DECAYS: tuple[str, ...] = ("constant", "cosine", "step")


@keras.saving.register_keras_serializable(package="detkeeper")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to `peak_learning_rate` over `warmup_steps`, then `decay`.

    - ``constant``: the peak from ``warmup_steps`` on.
    - ``cosine``: ``peak * 0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps -
      warmup_steps)))``, reaching 0 at `total_steps` and staying there.
    - ``step``: ``peak * decay_rate ** n``, ``n`` the number of `decay_steps` boundaries that
      `step` has reached (``step >= boundary``). Boundaries are absolute steps; one inside the
      warmup takes effect when the warmup ends.

    With ``warmup_steps == 0`` the rate at step 0 is already the peak (or its decayed value).
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int = 0, decay: Decay = "constant",
                 total_steps: int | None = None, decay_rate: float = 0.1,
                 decay_steps: Sequence[int] = (), name: str = "warmup_schedule") -> None:
        super().__init__()
        if not peak_learning_rate > 0:
            raise ValueError(f"peak_learning_rate: expected > 0, got {peak_learning_rate}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected >= 0, got {warmup_steps}")
        if decay not in DECAYS:
            raise ValueError(f"decay: expected one of {', '.join(DECAYS)}, got {decay!r}")
        if decay == "cosine" and (total_steps is None or total_steps < warmup_steps):
            raise ValueError(f"total_steps: the cosine decay needs total_steps >= warmup_steps "
                             f"({warmup_steps}), got {total_steps}")
        decay_steps = [int(boundary) for boundary in decay_steps]
        if any(b < 1 for b in decay_steps) or any(a >= b for a, b in zip(decay_steps, decay_steps[1:])):
            raise ValueError(f"decay_steps: expected strictly increasing positive steps, got {decay_steps}")
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.total_steps = None if total_steps is None else int(total_steps)
        self.decay_rate = float(decay_rate)
        self.decay_steps = decay_steps
        self.name = name

    def __call__(self, step):
        with tf.name_scope(self.name):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.peak_learning_rate, tf.float32)
            rate = self._decayed(step, peak)
            if self.warmup_steps > 0:
                # One multiplication by a constant slope (the TF OD API's form): eager and graph
                # mode round it alike, whereas `peak * step / warmup_steps` may be rewritten.
                slope = tf.constant(self.peak_learning_rate / self.warmup_steps, tf.float32)
                rate = tf.where(step < float(self.warmup_steps), slope * step, rate)
            return rate

    def _decayed(self, step: tf.Tensor, peak: tf.Tensor) -> tf.Tensor:
        """The rate after warmup, as a function of the absolute step."""
        if self.decay == "cosine":
            # max(.., 1): no division by 0 when total_steps == warmup_steps (the rate is then
            # 0 from total_steps on, by the tf.where below).
            inverse_span = tf.constant(1.0 / max(self.total_steps - self.warmup_steps, 1), tf.float32)
            progress = tf.clip_by_value((step - float(self.warmup_steps)) * inverse_span, 0.0, 1.0)
            rate = 0.5 * peak * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step >= float(self.total_steps), tf.zeros_like(rate), rate)
        if self.decay == "step" and self.decay_steps:
            reached = tf.add_n([tf.cast(step >= float(b), tf.float32) for b in self.decay_steps])
            return peak * tf.pow(tf.constant(self.decay_rate, tf.float32), reached)
        return peak

    def get_config(self) -> dict:
        return {"peak_learning_rate": self.peak_learning_rate, "warmup_steps": self.warmup_steps,
                "decay": self.decay, "total_steps": self.total_steps, "decay_rate": self.decay_rate,
                "decay_steps": list(self.decay_steps), "name": self.name}


def build_schedule(schedule: ScheduleConfig, peak_learning_rate: float, total_steps: int) -> WarmupSchedule:
    """The ``train.schedule`` section as a :class:`WarmupSchedule` peaking at `peak_learning_rate`.

    Raises :class:`ConfigError` for settings that are valid one by one but not together: a cosine
    warmup longer than the run, a step schedule without boundaries.
    """
    if schedule.name == "cosine" and schedule.warmup_steps > total_steps:
        raise ConfigError(f"train.schedule.warmup_steps: the cosine schedule needs a warmup of at most "
                          f"the {total_steps} training steps, got {schedule.warmup_steps}")
    if schedule.name == "step" and not schedule.decay_steps:
        raise ConfigError("train.schedule.decay_steps: the step schedule needs at least one step to "
                          "decay at, got []; use name: constant for a constant rate")
    return WarmupSchedule(peak_learning_rate, warmup_steps=schedule.warmup_steps, decay=schedule.name,
                          total_steps=total_steps, decay_rate=schedule.decay_rate,
                          decay_steps=schedule.decay_steps)


def build_optimizer(train_config: TrainConfig, total_steps: int | None = None, *,
                    num_replicas: int = 1) -> keras.optimizers.Optimizer:
    """The optimizer ``train.optimizer`` names, its learning rate the ``train.schedule``.

    `total_steps` is where the cosine schedule reaches 0; default ``train.steps``.

    - ``sgd``: momentum ``train.optimizer.momentum``, no Nesterov (the TF OD API's
      ``momentum_optimizer``); ``adam``; ``adamw``. Each is Keras' own, its per-variable update
      one fused TensorFlow op (:mod:`detkeeper.training.fused_updates`).
    - ``weight_decay`` > 0 is Keras' decoupled weight decay (``w -= lr * weight_decay * w`` each
      step, outside the momentum / Adam moments), for every optimizer; ``adam`` with weight decay
      therefore behaves as ``adamw``. Keras decays every trainable variable, biases and
      normalization scales included, unless the caller excludes them with
      ``optimizer.exclude_from_weight_decay(...)`` before the optimizer is built.
    - ``clipnorm`` clips by the *global* norm of all gradients together (Keras
      ``global_clipnorm``), which is what the TF OD API's TF2 loop does
      (``tf.clip_by_global_norm(gradients, clip_gradients_value)`` in ``model_lib_v2.py``) and
      keeps the update's direction; Keras' per-variable ``clipnorm`` would clip each tensor
      separately and change it.
    - ``mixed_precision: true`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer``
      (dynamic loss scaling; clipping applies to the unscaled gradients). Setting the
      ``mixed_float16`` dtype policy before building the model is the caller's job.
    - ``num_replicas`` > 1 (tf.distribute) with clipping: the optimizer clips the gradients summed
      over the replicas, as one device would (see :class:`ClipSummedGradients`).
    """
    settings = train_config.optimizer
    schedule = build_schedule(train_config.schedule, settings.learning_rate,
                              train_config.steps if total_steps is None else total_steps)
    common = {"learning_rate": schedule, "global_clipnorm": settings.clipnorm}
    weight_decay = settings.weight_decay or None  # None: Keras skips the decay step entirely
    classes = _SUMMED_CLIPPING if num_replicas > 1 and settings.clipnorm else _FUSED_CLASSES
    if settings.name == "sgd":
        optimizer = classes["sgd"](momentum=settings.momentum, nesterov=False,
                                         weight_decay=weight_decay, **common)
    elif settings.name == "adam":
        optimizer = classes["adam"](weight_decay=weight_decay, **common)
    elif settings.name == "adamw":
        # AdamW needs a float (its own default is 0.004, not the config's 0).
        optimizer = classes["adamw"](weight_decay=settings.weight_decay, **common)
    else:
        raise ConfigError(f"train.optimizer.name: expected sgd, adam or adamw, got {settings.name!r}")
    if train_config.mixed_precision:
        optimizer = StepCountingLossScaleOptimizer(optimizer)
    return optimizer


class ClipSummedGradients:
    """Mixin: clip the gradients of the *global* batch under tf.distribute.

    Keras 3 (TF backend) clips each replica's gradients in ``_clip_gradients`` and only then sums
    them over the replicas (``_backend_update_step``), so with 2 replicas a clip norm of 10 lets
    through up to 20, and training differs from one device whenever clipping is active. Here each
    replica first sums the gradients over all replicas, clips that sum, and hands on its
    ``1/replicas`` share, so Keras' own sum afterwards is the clipped global gradient (exactly, for
    a power-of-two number of replicas). One extra all-reduce per step; with one replica this is
    Keras' own clipping.
    """

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return super()._clip_gradients(grads)
        count = context.num_replicas_in_sync
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, list(grads))
        return [gradient / count for gradient in super()._clip_gradients(summed)]


@keras.saving.register_keras_serializable(package="detkeeper")
class ReplicaClippedSGD(ClipSummedGradients, FusedSGD):
    """SGD whose clipping sees the gradient summed over tf.distribute replicas."""


@keras.saving.register_keras_serializable(package="detkeeper")
class ReplicaClippedAdam(ClipSummedGradients, FusedAdam):
    """Adam whose clipping sees the gradient summed over tf.distribute replicas."""


@keras.saving.register_keras_serializable(package="detkeeper")
class ReplicaClippedAdamW(ClipSummedGradients, FusedAdamW):
    """AdamW whose clipping sees the gradient summed over tf.distribute replicas."""


_FUSED_CLASSES = {"sgd": FusedSGD, "adam": FusedAdam, "adamw": FusedAdamW}
_SUMMED_CLIPPING = {"sgd": ReplicaClippedSGD, "adam": ReplicaClippedAdam, "adamw": ReplicaClippedAdamW}


@keras.saving.register_keras_serializable(package="detkeeper")
class StepCountingLossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras' dynamic loss scaling, except that a step skipped for non-finite gradients still
    counts in ``iterations``.

    detkeeper's step is ``optimizer.iterations``: it places evaluations, names checkpoints,
    positions the learning-rate schedule and, on resume, the data order. Keras' optimizer counts
    only applied updates, so every skipped step (several while the loss scale settles) would shift
    a resumed run's data by a batch. Counting every batch is also what the TF OD API's global step
    does.
    """

    def _stateful_handle_non_finite_grads(self):
        super()._stateful_handle_non_finite_grads()
        self.inner_optimizer.iterations.assign_add(1)


def learning_rate_at(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer's next update uses, as a Python float (for logs).

    Works for a plain optimizer and for one wrapped in a ``LossScaleOptimizer``; eager only.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))
