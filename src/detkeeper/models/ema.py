"""An exponential moving average of a model's weights: what is evaluated and exported when
``train.ema_decay`` is set.

:class:`WeightAverage` keeps one non-trainable ``tf.Variable`` per variable in ``model.weights``,
initialised from the model's current values. Each :meth:`~WeightAverage.update` does, for every
trainable float weight ``w``::

    decay_t = min(decay, (1 + step) / (10 + step))
    average = decay_t * average + (1 - decay_t) * w

The warmup of the decay is ``tf.train.ExponentialMovingAverage(num_updates=...)``'s, which the
TF OD API and TF Model Garden (``ema_optimizer.ExponentialMovingAverage(dynamic_decay=True)``)
use: early averages follow the weights closely instead of remembering the random init.

Non-trainable weights (BatchNormalization's moving mean and variance) are *copied*, not averaged:
they are already running averages, and the ones the model computed go with its latest weights.
This is what Model Garden's EMA does by default (``trainable_weights_only=True``: they are never
shadowed, so the model keeps its own) and timm's ``ModelEmaV3(exclude_buffers=True)``; timm's
default averages them too. Non-float variables are copied as well.

Step: the training callback (:class:`detkeeper.training.ema.EmaCallback`) passes
``optimizer.iterations`` after the update, i.e. the number of updates done so far (1 after the
first), as Model Garden's EMA does; the first update therefore uses ``decay_t = 2 / 11``.

It lives with the models, not with training, because restoring a kept checkpoint (the ``run``
layer) reads the averages back into a model. The averages are checkpointed with
``tf.train.Checkpoint(ema=weight_average)``, keyed by the position of the variable in
``model.weights`` (as Keras' functional models key their own).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import keras
import tensorflow as tf


class _Untracked:
    """Holds references a ``tf.Module`` must neither checkpoint nor list in ``.variables``."""

    def __init__(self, values: list) -> None:
        self.values = values


class WeightAverage(tf.Module):
    """Exponential moving average of `model`'s weights (see the module docstring).

    Build the model (call it once) before creating this; under a ``tf.distribute`` strategy,
    create it inside the strategy's scope.
    """

    def __init__(self, model: keras.Model, decay: float, name: str = "weight_average") -> None:
        super().__init__(name=name)
        if not 0 < decay < 1:
            raise ValueError(f"decay: expected 0 < decay < 1, got {decay}")
        weights = list(model.weights)
        if not weights:
            raise ValueError(f"model {model.name!r} has no weights yet: build it (call it on a batch) "
                             "before creating its WeightAverage")
        self.decay = float(decay)
        self._model_weights = _Untracked(weights)
        with self.name_scope:
            self.averages = [
                tf.Variable(_read(weight), trainable=False, name=_variable_name(weight))
                for weight in weights
            ]
        self._averaged = _Untracked(tuple(
            index for index, weight in enumerate(weights)
            if weight.trainable and tf.as_dtype(weight.dtype).is_floating
        ))

    @property
    def model_weights(self) -> list:
        """The model variables, in the order of :attr:`averages`."""
        return list(self._model_weights.values)

    def decay_at(self, step) -> tf.Tensor:
        """The decay used at `step`: ``min(decay, (1 + step) / (10 + step))``."""
        step = tf.cast(step, tf.float32)
        return tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + step) / (10.0 + step))

    def update(self, step) -> None:
        """Move the averages towards the model's current weights; `step` = updates done so far."""
        self._update(tf.convert_to_tensor(step, tf.int64))

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64)], autograph=False)
    def _update(self, step: tf.Tensor) -> None:
        decay = self.decay_at(step)
        averaged = set(self._averaged.values)
        for index, (average, weight) in enumerate(zip(self.averages, self._model_weights.values)):
            value = _read(weight)
            if index in averaged:
                d = tf.cast(decay, average.dtype)
                average.assign(d * average + (1.0 - d) * value)
            else:
                average.assign(value)

    def copy_to(self, model: keras.Model) -> None:
        """Assign the averages to `model`'s weights for good (end of training, export).

        `model` may be another instance of the same architecture: weights are matched by position
        in ``model.weights`` and their shapes checked."""
        _assign_all(self._matching_weights(model), self.averages)

    @contextlib.contextmanager
    def swapped_in(self, model: keras.Model) -> Iterator[keras.Model]:
        """Within the block `model` holds the averages; on exit, even by an exception, it gets its
        own weights back exactly."""
        targets = self._matching_weights(model)
        raw = [tf.identity(_read(weight)) for weight in targets]
        _assign_all(targets, self.averages)
        try:
            yield model
        finally:
            _assign_all(targets, raw)

    def _matching_weights(self, model: keras.Model) -> list:
        weights = list(model.weights)
        if len(weights) != len(self.averages) or any(
                tuple(w.shape) != tuple(a.shape) for w, a in zip(weights, self.averages)):
            raise ValueError(f"model {model.name!r} does not match this WeightAverage: "
                             f"{len(weights)} weights vs {len(self.averages)} averages, or shapes differ")
        return weights


def _read(weight) -> tf.Tensor:
    """A Keras or TF variable's current value as a tensor."""
    return tf.convert_to_tensor(weight.value if isinstance(weight, keras.Variable) else weight)


def _variable_name(weight) -> str:
    return (getattr(weight, "path", None) or weight.name).replace(":", "_")


def _assign_all(targets, sources) -> None:
    for target, source in zip(targets, sources):
        target.assign(source)
