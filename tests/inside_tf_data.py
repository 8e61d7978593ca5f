"""Raising an exception where a record read raises it: inside a tf.data pipeline (a
``numpy_function``), which hands it on wrapped in TensorFlow's error."""

from __future__ import annotations


def raise_inside_tf_data(error: Exception) -> None:
    """Iterate a one-element pipeline whose read raises `error`."""
    import tensorflow as tf

    def read(_):
        raise error

    next(iter(tf.data.Dataset.range(1).map(lambda index: tf.numpy_function(read, [index], tf.int64))))
