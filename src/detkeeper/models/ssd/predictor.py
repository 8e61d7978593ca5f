"""The TF OD API's ``WeightSharedConvolutionalBoxPredictor`` as the FPN-lite configs build it.

From ``predictors/convolutional_keras_box_predictor.py`` and ``predictors/heads/keras_{box,class}_head.py``
with ``use_depthwise: true``, ``share_prediction_tower: true`` and batch norm in ``conv_hyperparams``:

- one tower, shared by the box and the class heads and by every level: ``convs`` 3x3 separable
  convolutions without bias (``_head_scope_conv_layers/PredictionTower/i``), each followed by a
  batch norm **of its level** (the statistics differ between levels, so only the convolutions are
  shared: ``_base_tower_layers_for_heads/box_encodings/<level>/<3 i + 1>``) and ReLU6;
- a 3x3 separable box output with bias, ``K * 4`` channels (``_box_prediction_head``), and a 3x3
  separable class output with bias, ``K * (C + 1)`` channels, slot 0 the background, its bias
  starting at ``class_prediction_bias_init`` (-4.6) (``_prediction_heads/class_predictions_with_background``).

Outputs are reshaped ``[B, H, W, K * D] -> [B, H * W * K, D]`` per level and concatenated finest
level first: the order of :func:`detkeeper.models.ssd.anchors.multiscale_grid_anchors`.
Not reproduced: separate box and class towers (``share_prediction_tower: false``), regular
convolutions (``use_depthwise: false``), feature maps of different depths (projection layers).
"""

from __future__ import annotations

import keras
from keras import ops

from detkeeper.models.ssd.fpn_lite import BATCH_NORM_MOMENTUM, batch_norm, separable_conv

#: The FPN-lite configs' ``class_prediction_bias_init``: sigmoid(-4.6) = 0.01, the focal-loss prior.
CLASS_PREDICTION_BIAS_INIT = -4.6
BOX_CODE_SIZE = 4


class WeightSharedBoxPredictor(keras.layers.Layer):
    """``[P_min, ..., P_max]`` -> box encodings ``[B, A, 4]`` and class logits ``[B, A, C + 1]``."""

    def __init__(self, num_classes: int, anchors_per_location: int, channels: int = 128, convs: int = 4,
                 num_levels: int = 5, batch_norm_momentum: float = BATCH_NORM_MOMENTUM,
                 class_bias_init: float = CLASS_PREDICTION_BIAS_INIT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.anchors_per_location = num_classes, anchors_per_location
        self.channels, self.convs, self.num_levels = channels, convs, num_levels
        self.batch_norm_momentum, self.class_bias_init = batch_norm_momentum, class_bias_init
        self.tower = [separable_conv(channels, f"prediction_tower_conv{i}") for i in range(convs)]
        self.tower_norms = [[batch_norm(f"prediction_tower_conv{i}_batchnorm_level{index}", batch_norm_momentum)
                             for i in range(convs)] for index in range(num_levels)]
        self.box_output = separable_conv(anchors_per_location * BOX_CODE_SIZE, "box_predictor", use_bias=True)
        self.class_output = separable_conv(
            anchors_per_location * (num_classes + 1), "class_predictor", use_bias=True,
            bias_initializer=keras.initializers.Constant(class_bias_init))

    def call(self, pyramid: list, training=False) -> tuple:
        if len(pyramid) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(pyramid)}")
        box_encodings, class_logits = [], []
        for level, features in enumerate(pyramid):
            x = features
            for conv, norm in zip(self.tower, self.tower_norms[level]):
                x = ops.relu6(norm(conv(x), training=training))
            batch = ops.shape(features)[0]
            box_encodings.append(ops.reshape(self.box_output(x), [batch, -1, BOX_CODE_SIZE]))
            class_logits.append(ops.reshape(self.class_output(x), [batch, -1, self.num_classes + 1]))
        return ops.concatenate(box_encodings, axis=1), ops.concatenate(class_logits, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_location": self.anchors_per_location, "channels": self.channels,
                "convs": self.convs, "num_levels": self.num_levels,
                "batch_norm_momentum": self.batch_norm_momentum, "class_bias_init": self.class_bias_init}
