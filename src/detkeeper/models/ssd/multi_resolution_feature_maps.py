"""The TF OD API's ``KerasMultiResolutionFeatureMaps`` as the SSD MobileNetV2 extractor lays it out.

From ``models/feature_map_generators.py`` and ``models/ssd_mobilenet_v2_keras_feature_extractor.py``
(``feature_map_layout``: ``from_layer`` ``['layer_15/expansion_output', 'layer_19', '', '', '', '']``,
``layer_depth`` ``[-1, -1, 512, 256, 256, 128]``, ``insert_1x1_conv``, ``use_depthwise: false``,
``use_explicit_padding: false``):

- the first two maps are the backbone's taps as they are (``C4`` and ``C5`` here);
- each further map is the previous one through a 1x1 convolution to half its depth, batch norm
  and ReLU6, then a 3x3 stride-2 ``"same"`` convolution to its depth, batch norm and ReLU6. The
  convolutions have no bias (the config's ``conv_hyperparams`` has batch norm). Depths are the
  API's ``get_depth_fn``: ``max(int(depth * depth_multiplier), min_depth)`` (``min_depth`` 16), the
  1x1 one's from ``depth // 2``.

Layers are held in lists in the checkpoint's order: ``feature_map_generator/convolutions/<i>/0``
(1x1 conv), ``/1`` (its norm), ``/3`` (3x3 conv), ``/4`` (its norm) for map ``i`` = 2, 3, ...
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from detkeeper.models import batch_norm

#: The extractor's extra maps, after the two backbone taps.
LAYER_DEPTHS = (512, 256, 256, 128)
MIN_DEPTH = 16
#: Batch norm as the config's ``conv_hyperparams`` (``decay: 0.97``, ``epsilon: 0.001``).
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.97
#: The extractor's ``truncated_normal_initializer { stddev: 0.03 }``.
CONV_INITIALIZER_STDDEV = 0.03


class MultiResolutionFeatureMaps(keras.layers.Layer):
    """``{"C4", "C5", ...}`` -> ``[C4, C5, extra_0, ...]``, one extra stride-2 map per `layer_depths` entry."""

    def __init__(self, layer_depths: Sequence[int] = LAYER_DEPTHS, min_depth: int = MIN_DEPTH,
                 batch_norm_momentum: float = BATCH_NORM_MOMENTUM, depth_multiplier: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layer_depths, self.min_depth = tuple(layer_depths), min_depth
        self.batch_norm_momentum, self.depth_multiplier = batch_norm_momentum, depth_multiplier
        depths = [self._depth(depth) for depth in self.layer_depths]
        reduced = [self._depth(depth // 2) for depth in self.layer_depths]
        self.reduce = [self._conv(depth, 1, 1, f"extra_{index}_1x1") for index, depth in enumerate(reduced)]
        self.reduce_norm = [self._norm(f"extra_{index}_1x1_batchnorm") for index in range(len(depths))]
        self.downsample = [self._conv(depth, 3, 2, f"extra_{index}_3x3_s2") for index, depth in enumerate(depths)]
        self.downsample_norm = [self._norm(f"extra_{index}_3x3_s2_batchnorm") for index in range(len(depths))]

    def _depth(self, depth: int) -> int:
        return max(int(depth * self.depth_multiplier), self.min_depth)

    @staticmethod
    def _conv(depth: int, kernel_size: int, strides: int, name: str) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(
            depth, kernel_size, strides=strides, padding="same", use_bias=False, name=name,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=CONV_INITIALIZER_STDDEV))

    def _norm(self, name: str) -> keras.layers.BatchNormalization:
        return batch_norm.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=self.batch_norm_momentum,
                                             name=name)

    def call(self, features: dict, training=False) -> list:
        maps = [features["C4"], features["C5"]]
        for index in range(len(self.layer_depths)):
            maps.append(self.extra_map(index, maps[-1], training=training))
        return maps

    def extra_map(self, index: int, previous, training=False):
        """Extra map `index` (the API's map ``index + 2``) from the map before it."""
        x = keras.ops.relu6(self.reduce_norm[index](self.reduce[index](previous), training=training))
        return keras.ops.relu6(self.downsample_norm[index](self.downsample[index](x), training=training))

    def get_config(self) -> dict:
        return {**super().get_config(), "layer_depths": list(self.layer_depths), "min_depth": self.min_depth,
                "batch_norm_momentum": self.batch_norm_momentum, "depth_multiplier": self.depth_multiplier}
