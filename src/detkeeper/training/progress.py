"""Progress of a training run: one reporter interface, fed by one Keras callback.

The library never prints. Messages (each evaluation's line, resumes, how the run ended) go to the
``detkeeper.training`` logger, which the trainer also copies into ``train.log``; a
:class:`Reporter` only drives live displays such as the command line's progress bars.
"""

from __future__ import annotations

import time

import keras


class Reporter:
    """Receives training progress; subclass and override what you want to show (default: nothing)."""

    def start(self, total_steps: int, start_step: int) -> None:
        """Training begins (or resumes) at `start_step` of `total_steps`."""

    def step(self, step: int, logs: dict, images_per_second: float) -> None:
        """After each training step; `logs` holds the running losses of the current interval."""

    def evaluating(self, total_images: int) -> None:
        """A validation pass over `total_images` begins."""

    def evaluated_images(self, count: int) -> None:
        """`count` more validation images were evaluated."""

    def close(self) -> None:
        """Training ended; release terminal resources."""


class ProgressCallback(keras.callbacks.Callback):
    """Feeds a :class:`Reporter` the step, the running losses and the training throughput."""

    def __init__(self, reporter: Reporter, batch_size: int, total_steps: int) -> None:
        super().__init__()
        self.reporter, self.batch_size, self.total_steps = reporter, batch_size, total_steps
        self._window_start = time.perf_counter()
        self._window_steps = 0
        self.images_per_second = 0.0

    def on_train_begin(self, logs=None) -> None:
        self.reporter.start(self.total_steps, int(self.model.optimizer.iterations.numpy()))
        self._window_start, self._window_steps = time.perf_counter(), 0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._window_start, self._window_steps = time.perf_counter(), 0  # evaluation time is not training

    def on_train_batch_end(self, batch, logs=None) -> None:
        self._window_steps += 1
        elapsed = time.perf_counter() - self._window_start
        if elapsed > 0:
            self.images_per_second = self._window_steps * self.batch_size / elapsed
        self.reporter.step(int(self.model.optimizer.iterations.numpy()), dict(logs or {}), self.images_per_second)
