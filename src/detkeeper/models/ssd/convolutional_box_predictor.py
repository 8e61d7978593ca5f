"""The TF OD API's ``ConvolutionalBoxPredictor`` as the SSD MobileNetV2 config builds it.

From ``predictors/convolutional_keras_box_predictor.py`` and ``predictors/heads/keras_{box,class}_head.py``
with ``kernel_size: 1``, ``use_depthwise: false``, no dropout and no layers before the predictor
(``num_layers_before_predictor: 0``; ``max_depth: 0`` would disable them anyway): each feature map
has its own heads, nothing is shared between levels:

- a box convolution with bias, ``K_i * 4`` channels (``_prediction_heads/box_encodings/<i>/
  _box_encoder_layers/0``), and a class convolution with bias, ``K_i * (C + 1)`` channels, slot 0
  the background, its bias starting at ``class_prediction_bias_init`` (-4.6)
  (``_prediction_heads/class_predictions_with_background/<i>/_class_predictor_layers/0``); ``K_i``
  is the anchors per location of map ``i`` (3 on the first with ``reduce_boxes_in_lowest_layer``, 6 after).

Outputs are reshaped ``[B, H, W, K * D] -> [B, H * W * K, D]`` per map and concatenated finest
first: the order of :func:`detkeeper.models.ssd.multiple_grid_anchors.multiple_grid_anchors`.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from detkeeper.models.ssd.predictor import BOX_CODE_SIZE, CLASS_PREDICTION_BIAS_INIT

KERNEL_SIZE = 1
#: The predictor's ``random_normal_initializer { stddev: 0.01 }``.
CONV_INITIALIZER_STDDEV = 0.01


class ConvolutionalBoxPredictor(keras.layers.Layer):
    """``[map_0, ..., map_n]`` -> box encodings ``[B, A, 4]`` and class logits ``[B, A, C + 1]``."""

    def __init__(self, num_classes: int, anchors_per_location: Sequence[int], kernel_size: int = KERNEL_SIZE,
                 class_bias_init: float = CLASS_PREDICTION_BIAS_INIT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.anchors_per_location = num_classes, tuple(anchors_per_location)
        self.kernel_size, self.class_bias_init = kernel_size, class_bias_init
        self.box_outputs = [self._conv(anchors * BOX_CODE_SIZE, f"box_predictor_{index}", "zeros")
                            for index, anchors in enumerate(self.anchors_per_location)]
        self.class_outputs = [self._conv(anchors * (num_classes + 1), f"class_predictor_{index}",
                                         keras.initializers.Constant(class_bias_init))
                              for index, anchors in enumerate(self.anchors_per_location)]

    def _conv(self, channels: int, name: str, bias_initializer) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(
            channels, self.kernel_size, padding="same", name=name, bias_initializer=bias_initializer,
            kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV))

    def call(self, feature_maps: list, training=False) -> tuple:
        if len(feature_maps) != len(self.anchors_per_location):
            raise ValueError(f"expected {len(self.anchors_per_location)} feature maps, got {len(feature_maps)}")
        box_encodings, class_logits = [], []
        for features, box_output, class_output in zip(feature_maps, self.box_outputs, self.class_outputs):
            batch = ops.shape(features)[0]
            box_encodings.append(ops.reshape(box_output(features), [batch, -1, BOX_CODE_SIZE]))
            class_logits.append(ops.reshape(class_output(features), [batch, -1, self.num_classes + 1]))
        return ops.concatenate(box_encodings, axis=1), ops.concatenate(class_logits, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_location": list(self.anchors_per_location), "kernel_size": self.kernel_size,
                "class_bias_init": self.class_bias_init}
