"""Early stopping whose state lives in the checkpoint, so patience does not reset on resume.

Keras' own ``EarlyStopping`` keeps its best value and wait counter in Python attributes, lost when
the process dies. Here they are ``tf.Variable``s in a trackable object that the checkpointer saves
with the model: a run killed at ``patience 3/5`` resumes at 3/5, and a run that stopped early
stays stopped.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from detkeeper.run.ledger import RetentionPolicy


class EarlyStoppingState(tf.Module):
    """Best value, its step, the wait counter and the step training stopped at (-1: not stopped).

    `best` is patience's reference (the last value that improved by more than `min_delta`), so it
    can lag the best checkpoint, which is always the top of the ledger's ranking."""

    def __init__(self) -> None:
        super().__init__(name="early_stopping")
        self.best = tf.Variable(math.nan, dtype=tf.float64, trainable=False, name="best")
        self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="best_step")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.stopped_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="stopped_step")

    @property
    def best_value(self) -> float | None:
        value = float(self.best.numpy())
        return None if math.isnan(value) else value

    @property
    def stopped(self) -> bool:
        return int(self.stopped_step.numpy()) >= 0


class EarlyStopping(keras.callbacks.Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` evaluations.

    Runs at each epoch end where `monitor` is in the logs (so after the evaluation callback).
    `start_from` (a step) delays counting; `baseline` must be beaten before anything counts as
    an improvement. The step comes from the optimizer, so it is right across resumes.
    """

    def __init__(self, monitor: str = "val_mAP", *, mode: str = "max", patience: int = 5,
                 min_delta: float = 0.0, start_from: int = 0, baseline: float | None = None,
                 state: EarlyStoppingState | None = None) -> None:
        super().__init__()
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.start_from, self.baseline = monitor, patience, start_from, baseline
        self.policy = RetentionPolicy(monitor, mode=mode, min_delta=min_delta)
        self.state = state or EarlyStoppingState()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            return
        value = float(logs[self.monitor])
        step = int(self.model.optimizer.iterations.numpy())
        reference = self.state.best_value
        if reference is None:
            reference = self.baseline
        if self.policy.improves(value, reference):
            self.state.best.assign(value)
            self.state.best_step.assign(step)
            self.state.wait.assign(0)
        elif step >= self.start_from:
            self.state.wait.assign_add(1)
        if int(self.state.wait.numpy()) >= self.patience:
            self.state.stopped_step.assign(step)
            self.model.stop_training = True

    def describe(self) -> str:
        """``patience 2/5`` for the evaluation line."""
        return f"patience {int(self.state.wait.numpy())}/{self.patience}"
