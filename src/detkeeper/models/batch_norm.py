"""BatchNormalization whose training step is TensorFlow's fused kernel.

Keras 3 writes a BatchNormalization's training step in ``keras.ops``: the batch moments, the
moving-statistics update and the normalisation come to about 20 graph ops, and their gradient to
about 40 more, for every BN layer of the model. TensorFlow computes the same step in one kernel,
``FusedBatchNormV3``, and its gradient in one more (``FusedBatchNormGradV3``): what Keras 2 ran by
default (``fused=True``). With it the training step of the ``bccd`` preset takes 10% less time, of
``demo`` 7% less, of ``mobilenetv2_fpn_320`` 15% less, and the first step (its trace) 15-26% less
(``benchmarks/fused_updates.py --versus batch-norm``; RESULTS.md, "Fused BatchNormalization").

Only the training step of 4-D inputs with channels last changes, and it computes Keras'
formulas: the batch mean and biased variance normalise the batch, the moving statistics move by
``momentum`` towards them (the kernel's variance carries Bessel's correction, which is taken off,
as Keras 2 did). Inference, and what the kernel does not cover (synchronised BN over replicas,
renorm, masks, other axes, epsilon below the kernel's 1.001e-5), stay Keras' own. The variables,
the config and so the checkpoints are Keras' BatchNormalization's. The class keeps Keras' name too:
Keras' weight files (``.weights.h5``, the weights inside a ``.keras`` archive) file a layer's weights
under its class name, so weights saved from either layer load into the other.
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: The smallest epsilon ``FusedBatchNormV3`` accepts.
FUSED_MIN_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package="detkeeper")
class BatchNormalization(keras.layers.BatchNormalization):
    """:class:`keras.layers.BatchNormalization`, its training step on ``[B, H, W, C]`` one fused kernel
    (serialized as ``detkeeper>BatchNormalization``)."""

    def _fusable(self, inputs, training, mask) -> bool:
        return (bool(training) and self.trainable and mask is None and not self.renorm and not self.synchronized
                and len(inputs.shape) == 4 and self.axis in (-1, 3) and self.epsilon >= FUSED_MIN_EPSILON)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        inputs = tf.cast(inputs, tf.float32)  # as Keras: BN computes in float32 under mixed precision
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, epsilon=self.epsilon, data_format="NHWC", is_training=True)
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance *= (count - 1.0) / count  # the kernel returns the unbiased variance; Keras keeps the biased
        momentum = self.momentum
        self.moving_mean.assign(tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(
            tf.cast(self.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
        return tf.cast(outputs, self.compute_dtype)
