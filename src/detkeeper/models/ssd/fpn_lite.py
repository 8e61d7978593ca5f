"""FPN-lite: the TF OD API's ``KerasFpnTopDownFeatureMaps`` with depthwise convolutions, plus the
SSD MobileNetV2 FPN extractor's coarse layers.

From ``models/feature_map_generators.py`` and ``models/ssd_mobilenet_v2_fpn_keras_feature_extractor.py``
with ``use_depthwise: true``:

- the coarsest backbone level (C5) goes through a 1x1 convolution with bias (``top_layers[0]``,
  no norm, no activation) and is output as is;
- each finer level, coarsest first: a 1x1 convolution with bias of the backbone feature
  (``residual_blocks[i]``), plus the level above upsampled x2 by nearest neighbour, then a 3x3
  separable convolution without bias, batch norm and ReLU6 (``conv_layers[i]``);
- levels above 5: a 3x3 stride-2 separable convolution, batch norm and ReLU6 on the previous
  coarsest output, starting from the top-down C5 output (``_coarse_feature_layers[i]``).

With the extractor's ``use_depthwise: false`` (``separable=False``) the 3x3 convolutions are regular
ones without bias (``create_conv_block``'s ``Conv2D``; key ``kernel``), the rest unchanged.

Layers are held in lists in the checkpoint's order, so :mod:`detkeeper.models.ssd.zoo_checkpoint`
maps ``_fpn_features_generator/residual_blocks/0/0`` to ``residual[0]`` and so on.
"""

from __future__ import annotations

import keras

from detkeeper.models import batch_norm

#: Batch norm as the FPN-lite configs' ``conv_hyperparams`` (``epsilon: 0.001``, ``decay: 0.997``).
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.997
#: The configs' conv initializer (``random_normal_initializer { stddev: 0.01 }``), which the API
#: applies to the depthwise kernels of separable convolutions (pointwise ones keep Keras' default).
CONV_INITIALIZER_STDDEV = 0.01


def separable_conv(channels: int, name: str, strides: int = 1, use_bias: bool = False, kernel_size: int = 3,
                   **kwargs) -> keras.layers.SeparableConv2D:
    """A "same" separable convolution (3x3 unless `kernel_size`) as the API's ``create_conv_block`` makes it."""
    return keras.layers.SeparableConv2D(
        channels, kernel_size, strides=strides, padding="same", use_bias=use_bias,
        depthwise_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV),
        name=name, **kwargs)


def conv_block(channels: int, name: str, separable: bool, strides: int = 1) -> keras.layers.Layer:
    """The API's ``create_conv_block`` convolution: 3x3 "same", no bias (batch norm follows),
    separable or regular."""
    if separable:
        return separable_conv(channels, name, strides=strides)
    return keras.layers.Conv2D(channels, 3, strides=strides, padding="same", use_bias=False, name=name,
                               kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV))


def batch_norm_layer(name: str, momentum: float) -> keras.layers.BatchNormalization:
    return batch_norm.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=momentum, name=name)


class FpnLiteFeatureMaps(keras.layers.Layer):
    """``{"C3", "C4", "C5"}`` -> ``[P{min_level}, ..., P{max_level}]``, each with `channels` channels.

    `min_level` is 3, 4 or 5 (the backbone's levels; the API's level 2 taps ``layer_4``, which the
    backbone here does not expose) and `max_level` at least 5: the API's extractor mislabels its
    inputs when ``max_level`` is below 5.
    """

    def __init__(self, channels: int = 128, min_level: int = 3, max_level: int = 7,
                 batch_norm_momentum: float = BATCH_NORM_MOMENTUM, separable: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 3 <= min_level <= 5 <= max_level <= 7:
            raise ValueError(f"FPN-lite levels must satisfy 3 <= min_level <= 5 <= max_level <= 7, "
                             f"got {min_level}..{max_level}")
        self.channels, self.min_level, self.max_level = channels, min_level, max_level
        self.batch_norm_momentum, self.separable = batch_norm_momentum, separable
        normal = keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV)
        self.top = keras.layers.Conv2D(channels, 1, kernel_initializer=normal, name="projection_top")
        finer = list(range(4, min_level - 1, -1))  # the levels below C5, coarsest first
        self.residual = [keras.layers.Conv2D(channels, 1, kernel_initializer=normal, name=f"projection_c{level}")
                         for level in finer]
        self.smoothing = [conv_block(channels, f"smoothing_p{level}", separable) for level in finer]
        self.smoothing_norm = [batch_norm_layer(f"smoothing_p{level}_batchnorm", batch_norm_momentum)
                               for level in finer]
        coarse = range(6, max_level + 1)
        self.coarse = [conv_block(channels, f"bottom_up_p{level}", separable, strides=2) for level in coarse]
        self.coarse_norm = [batch_norm_layer(f"bottom_up_p{level}_batchnorm", batch_norm_momentum) for level in coarse]
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest")

    def call(self, features: dict, training=False) -> list:
        top_down = self.top(features["C5"])
        outputs = [top_down]  # coarsest first
        for index, level in enumerate(range(4, self.min_level - 1, -1)):
            top_down = self.upsample(top_down) + self.residual[index](features[f"C{level}"])
            top_down = self.smoothing_norm[index](self.smoothing[index](top_down), training=training)
            top_down = keras.ops.relu6(top_down)
            outputs.append(top_down)
        outputs.reverse()  # finest first
        coarsest = outputs[-1]
        for conv, norm in zip(self.coarse, self.coarse_norm):
            coarsest = keras.ops.relu6(norm(conv(coarsest), training=training))
            outputs.append(coarsest)
        return outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels, "min_level": self.min_level,
                "max_level": self.max_level, "batch_norm_momentum": self.batch_norm_momentum,
                "separable": self.separable}
