"""The tf.data options of every dataset detkeeper iterates (autotuning off), and how many images
its pipelines decode at once.

tf.data's autotuning gives each iterator a thread that re-optimises the pipeline at a period that
doubles from 10 ms up to 60 s. In TensorFlow 2.21 dropping the iterator sometimes does not wake
that thread: the caller then blocks until the thread's next round, up to as long as the iterator
lived and a minute at most. Every validation pass, `detkeeper evaluate` and `predict`, and every
TFRecord file read end by dropping one. The test suite caught workers in that wait for 20-60 s at a
time (benchmarks/RESULTS.md, "tf.data's autotuning off").

Without it the decoding ``map`` runs :func:`decoding_calls` calls at once, a core for each but one:
the training step's own threads use every core, and on 2 cores a second decoding call slowed the
step it fed by 4-6% against autotuning on in the same round (benchmarks/input_pipeline.py, fed /
model alone: 0.87-0.94 with two calls, 0.95-0.97 with one, 0.92-1.00 with autotuning on).
``prefetch(AUTOTUNE)`` keeps its own buffer tuner, which needs no thread.
"""

from __future__ import annotations

import os

import tensorflow as tf


def untuned_options() -> tf.data.Options:
    """Options with tf.data's autotuning (and its per-iterator thread) off."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def tfrecord_dataset(path: str) -> tf.data.Dataset:
    """The records of one TFRecord file in order, read without the autotuning thread."""
    return tf.data.TFRecordDataset(path).with_options(untuned_options())


def decoding_calls() -> int:
    """Parallel calls of the pipelines' decoding ``map``: the cores this process may run on, less
    one for the model's step, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)
