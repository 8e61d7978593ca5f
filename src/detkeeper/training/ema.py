"""Keeping a :class:`~detkeeper.models.ema.WeightAverage` up to date while ``fit`` trains."""

from __future__ import annotations

import keras

from detkeeper.models.ema import WeightAverage


class EmaCallback(keras.callbacks.Callback):
    """Updates a :class:`WeightAverage` after every training batch, with the optimizer's step.

    Put it before callbacks that evaluate or save the averaged weights, so they see this step's.
    With ``compile(steps_per_execution=k)`` Keras calls it once per ``k`` steps, so the average
    then moves every ``k`` steps. A step that a ``LossScaleOptimizer`` skips (non-finite
    gradients) does not advance ``iterations``; the average still moves towards the unchanged
    weights.
    """

    def __init__(self, weight_average: WeightAverage) -> None:
        super().__init__()
        self.weight_average = weight_average

    def on_train_begin(self, logs=None) -> None:
        tracked = {id(weight) for weight in self.weight_average.model_weights}
        if tracked != {id(weight) for weight in self.model.weights}:
            raise ValueError(f"this WeightAverage does not average model {self.model.name!r}: "
                             "create it from the model being trained")

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.weight_average.update(self.model.optimizer.iterations)
