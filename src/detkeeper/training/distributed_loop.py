"""``fit`` for the tf.distribute strategies: Keras' own ``train_step`` in every replica, driven
step by step, with the callbacks ``fit`` would call.

Keras 3's ``Model.fit`` does not work under ``MultiWorkerMirroredStrategy`` in TF 2.21: its
symbolic build reduces a ``PerReplica`` batch it cannot convert (keras-team/keras#20585, open),
and its train function then reduces scalar logs with ``strategy.reduce("MEAN", v, axis=0)``,
which fails for scalars. What does work is the step itself: :func:`fit_distributed` runs
``Model.train_step`` (loss, gradients, the optimizer's all-reduced update) in each replica with
``strategy.run`` inside one ``tf.function``, averages the logs over all replicas as Keras does
under ``MirroredStrategy``, and calls the callbacks exactly where ``fit`` does, so evaluation,
early stopping, checkpoints, the evaluation line and TensorBoard behave as with the default
strategy. Every non-default strategy uses this loop, so the two-device mirrored tests exercise the
same code as a multi-worker run.

The model, its optimizer (built) and every variable the callbacks keep must have been created
in the strategy's scope before the first step.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def fit_distributed(model: keras.Model, dataset: tf.distribute.DistributedDataset, *, epochs: int,
                    initial_epoch: int, steps_per_epoch: int,
                    callbacks: Sequence[keras.callbacks.Callback]) -> None:
    """Train as ``model.fit(dataset, epochs=..., initial_epoch=..., steps_per_epoch=...,
    callbacks=..., verbose=0)`` would: the same callback calls in the same order, logs as floats."""
    callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=False, add_progbar=False,
                                                 model=model, epochs=epochs, steps=steps_per_epoch, verbose=0)
    train_function = _train_function(model)
    iterator = iter(dataset)
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        logs: dict[str, float] = {}
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            logs = {name: float(value) for name, value in train_function(iterator).items()}
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = dict(logs)
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    callback_list.on_train_end(epoch_logs)


def _train_function(model: keras.Model):
    strategy = model.distribute_strategy

    @tf.function(autograph=False)
    def train_step(iterator):
        outputs = strategy.run(model.train_step, args=(next(iterator),))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in outputs.items()}

    return train_step
