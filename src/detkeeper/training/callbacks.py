"""Keras callbacks that keep the best model; they work in ``detkeeper train`` and in a user's own ``fit``.

Put them after :class:`detkeeper.evaluation.CocoEvaluationCallback` (which writes ``val_mAP``
into the logs) and after :class:`EarlyStopping` (so its state is saved with the checkpoint)::

    state = EarlyStoppingState()
    model.fit(train, epochs=20, steps_per_epoch=500, callbacks=[
        CocoEvaluationCallback(val, label_map),
        EarlyStopping("val_mAP", patience=5, state=state),
        BestCheckpoints("runs/mine/checkpoints", monitor="val_mAP", extra={"early_stopping": state}),
    ])
"""

from __future__ import annotations

import math
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from detkeeper.errors import DetkeeperError, RunFailed
from detkeeper.run.checkpoints import CheckpointStore
from detkeeper.run.ledger import LedgerEntry, RetentionPolicy


class TrainingDiverged(RunFailed):
    """The loss became NaN or infinite."""


class BestCheckpoints(keras.callbacks.Callback):
    """Save a ``tf.train.Checkpoint`` at each evaluation and keep the best `keep_best` by `monitor`
    plus the latest `keep_last`, recorded in ``<directory>/ledger.json``.

    The checkpoint holds the model, its optimizer (with the step and the learning-rate schedule
    position), the EMA weights when `weight_average` is given, and every object in `extra`.
    Only the chief writes under ``tf.distribute``; other workers write to a scratch folder.
    The best is always the top of the ledger's ranking: `min_delta` is only recorded with the
    policy and changes neither the best nor what is kept (patience is :class:`EarlyStopping`'s).
    """

    def __init__(self, directory, monitor: str = "val_mAP", *, mode: str = "max", keep_best: int = 3,
                 keep_last: int = 2, min_delta: float = 0.0, weight_average=None,
                 extra: Mapping[str, tf.Module] | None = None, is_chief: bool | None = None) -> None:
        super().__init__()
        if is_chief is None:
            is_chief = tf.distribute.get_strategy().extended.should_checkpoint
        policy = RetentionPolicy(monitor, mode=mode, keep_best=keep_best, keep_last=keep_last, min_delta=min_delta)
        self.store = CheckpointStore(directory, policy, is_chief=is_chief)
        self.weight_average = weight_average
        self.extra = dict(extra or {})
        self.save_seconds: list[float] = []
        self.last_entry: LedgerEntry | None = None
        self.problems: list[str] = []  # damaged checkpoints the last restore("latest") skipped

    @property
    def ledger(self):
        return self.store.ledger

    def checkpoint(self, model: keras.Model | None = None) -> tf.train.Checkpoint:
        """A fresh Checkpoint over everything saved (a new object per save: see the pitfalls note)."""
        model = model or self.model
        objects = {"model": model, "optimizer": model.optimizer, **self.extra}
        if self.weight_average is not None:
            objects["ema"] = self.weight_average
        return tf.train.Checkpoint(**objects)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.store.policy.monitor not in logs:
            return  # no evaluation this epoch
        step = int(self.model.optimizer.iterations.numpy())
        metrics = {key: float(value) for key, value in logs.items() if _is_number(value)}
        self.last_entry = self.store.save(self.checkpoint(), step=step, epoch=epoch + 1, metrics=metrics,
                                          ema=self.weight_average is not None)
        self.save_seconds.append(self.store.last_save_seconds)

    def restore(self, model: keras.Model, which: str = "latest") -> LedgerEntry | None:
        """Restore `model` (built, compiled, optimizer built) from a kept checkpoint; None when there
        is none. ``latest`` skips damaged ones and lists them in ``self.problems``."""
        if which == "latest":
            entry, problems = self.store.latest_intact()
            self.problems = problems
            if entry is None:
                return None
        else:
            entry = self.store.resolve(which)
        path = self.store.path_of(entry)
        try:
            # Consumed, not just matched: a model with fewer layers than the saved one (Keras keys
            # layers by position) would otherwise restore a silent subset.
            self.checkpoint(model).read(path).assert_consumed()
        except (AssertionError, ValueError) as error:
            raise DetkeeperError(
                f"{path} does not fit the model and optimizer the config describes: the config (model, "
                f"train.optimizer, train.ema_decay) or a custom layer's code changed since it was saved. "
                f"Use the original config, or a new run_dir to start over. "
                f"({str(error).splitlines()[0][:300]})") from None
        return entry


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raise :class:`TrainingDiverged` at the first NaN or infinite loss, before anything is saved."""

    def __init__(self, describe_kept=None) -> None:
        super().__init__()
        self.describe_kept = describe_kept

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        step = int(self.model.optimizer.iterations.numpy())
        kept = f" {self.describe_kept()}" if self.describe_kept else ""
        raise TrainingDiverged(
            f"the training loss became {float(loss)} at step {step}; training stopped.{kept} "
            "Common causes: a learning rate too high for this model and batch size (lower "
            "train.optimizer.learning_rate or raise train.schedule.warmup_steps), no gradient "
            "clipping (train.optimizer.clipnorm), or boxes in the data far outside their images "
            "(run `detkeeper data check`).")


def _is_number(value) -> bool:
    try:
        return bool(np.ndim(value) == 0) and isinstance(float(value), float)
    except (TypeError, ValueError):
        return False
