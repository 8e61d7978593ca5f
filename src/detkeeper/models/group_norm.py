"""GroupNormalization whose training step is TensorFlow's fused batch-norm kernel.

Keras 3 writes GroupNormalization in ``keras.ops``: a reshape into groups, the moments, the
normalisation and the scale and offset, with their gradient many small graph ops per layer. FCOS
normalises every conv of its head towers with it, at every pyramid level, so in the ``bccd`` preset
those ops are about a sixth of the training step. Group normalisation is batch normalisation with
one "channel" per (image, group): the group's values moved to the last axis of a ``[1, S, D, N*G]``
tensor, ``FusedBatchNormV3`` computes each one's mean and (biased) variance over the rest and
normalises in one kernel, its gradient in one more; the layer's own ``gamma`` and ``beta`` follow
per channel. The training step of the ``bccd`` preset takes about 9% less time
(``benchmarks/fused_updates.py --versus group-norm``; RESULTS.md, "Fused GroupNormalization").

Only the training step of 4-D inputs with channels last changes. Inference (the same function: group
normalisation keeps no statistics) stays Keras' ops, so exports and TFLite conversion see what they
saw before. The variables, the config and so the checkpoints are Keras' GroupNormalization's, and
the class keeps Keras' name so weight files load both ways (see :mod:`detkeeper.models.batch_norm`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from detkeeper.models.batch_norm import FUSED_MIN_EPSILON


@keras.saving.register_keras_serializable(package="detkeeper")
class GroupNormalization(keras.layers.GroupNormalization):
    """:class:`keras.layers.GroupNormalization`, its training step on ``[B, H, W, C]`` one fused kernel
    (serialized as ``detkeeper>GroupNormalization``)."""

    def _fusable(self, inputs, training) -> bool:
        return (bool(training) and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and inputs.shape[-1] is not None and self.epsilon >= FUSED_MIN_EPSILON)

    def call(self, inputs, training=None):
        if not self._fusable(inputs, training):
            return super().call(inputs)
        inputs = tf.cast(inputs, tf.float32)  # as Keras: GN computes in float32 under mixed precision
        shape = tf.shape(inputs)
        batch, pixels = shape[0], shape[1] * shape[2]
        channels = inputs.shape[-1]
        groups, per_group = self.groups, channels // self.groups
        # [B, H, W, C] -> [1, H*W, C/G, B*G]: each (image, group) a channel of the fused kernel.
        grouped = tf.transpose(tf.reshape(inputs, [batch, pixels, groups, per_group]), [1, 3, 0, 2])
        grouped = tf.reshape(grouped, [1, pixels, per_group, batch * groups])
        normalized, _, _ = tf.compat.v1.nn.fused_batch_norm(
            grouped, tf.ones([batch * groups]), tf.zeros([batch * groups]), epsilon=self.epsilon,
            data_format="NHWC", is_training=True)
        normalized = tf.transpose(tf.reshape(normalized, [pixels, per_group, batch, groups]), [2, 0, 3, 1])
        outputs = tf.reshape(normalized, shape)
        if self.scale:
            outputs *= tf.cast(self.gamma, tf.float32)
        if self.center:
            outputs += tf.cast(self.beta, tf.float32)
        return tf.cast(outputs, self.compute_dtype)
