"""The tf.data options of every dataset detkeeper iterates: autotuning off.

tf.data's autotuning gives each iterator a thread that re-optimises the pipeline at a period that
doubles from 10 ms up to 60 s. In TensorFlow 2.21 dropping the iterator sometimes does not wake
that thread: the caller then blocks until the thread's next round, up to as long as the iterator
lived and a minute at most. Every validation pass, `detkeeper evaluate` and `predict`, and every
TFRecord file read end by dropping one. The test suite caught workers in that wait for 20-60 s at a
time (benchmarks/RESULTS.md, "tf.data's autotuning off").

Nothing in detkeeper's pipelines needs the tuning (benchmarks/iterator_release.py: the same
images/s): with it off, a ``map`` with ``num_parallel_calls=AUTOTUNE`` runs one call per core (16
at most, tf.data's starting value), and ``prefetch(AUTOTUNE)`` keeps its own buffer tuner.
"""

from __future__ import annotations

import tensorflow as tf


def untuned_options() -> tf.data.Options:
    """Options with tf.data's autotuning (and its per-iterator thread) off."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return options


def tfrecord_dataset(path: str) -> tf.data.Dataset:
    """The records of one TFRecord file in order, read without the autotuning thread."""
    return tf.data.TFRecordDataset(path).with_options(untuned_options())
