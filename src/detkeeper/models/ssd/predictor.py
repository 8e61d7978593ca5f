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
EfficientDet's configs build it otherwise, which the arguments select: separate box and class
towers (``share_tower=False``: ``BoxPredictionTower`` / ``ClassPredictionTower``, each with its
own batch norms per level), tower convolutions with a bias (``tower_bias``, the configs'
``force_use_bias``), swish (``activation``), no background slot (``background_class=False``,
``add_background_class: false``). The SSD ResNet FPN configs' ``use_depthwise: false`` makes the
tower convolutions and both outputs regular ``kernel_size`` convolutions (``separable=False``; keys
``kernel`` instead of ``depthwise_kernel`` / ``pointwise_kernel``), ``share_prediction_tower: false``
gives separate towers as above.
Not reproduced: feature maps of different depths (projection layers).
"""

from __future__ import annotations

import keras
from keras import ops

from detkeeper.models.ssd.fpn_lite import BATCH_NORM_MOMENTUM, CONV_INITIALIZER_STDDEV, batch_norm_layer, separable_conv
from detkeeper.models.ssd.zoo_checkpoint import PREDICTOR_PREFIX, ZooSlot, layer_slots

#: The FPN-lite configs' ``class_prediction_bias_init``: sigmoid(-4.6) = 0.01, the focal-loss prior.
CLASS_PREDICTION_BIAS_INIT = -4.6
BOX_CODE_SIZE = 4


class WeightSharedBoxPredictor(keras.layers.Layer):
    """``[P_min, ..., P_max]`` -> box encodings ``[B, A, 4]`` and class logits ``[B, A, C + 1]``
    (``[B, A, C]`` without the background slot). ``tower`` / ``tower_norms`` are the shared tower,
    or the box tower when ``class_tower`` / ``class_tower_norms`` exist."""

    def __init__(self, num_classes: int, anchors_per_location: int, channels: int = 128, convs: int = 4,
                 num_levels: int = 5, batch_norm_momentum: float = BATCH_NORM_MOMENTUM,
                 class_bias_init: float = CLASS_PREDICTION_BIAS_INIT, share_tower: bool = True,
                 tower_bias: bool = False, activation: str = "relu6", background_class: bool = True,
                 separable: bool = True, kernel_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.anchors_per_location = num_classes, anchors_per_location
        self.channels, self.convs, self.num_levels = channels, convs, num_levels
        self.batch_norm_momentum, self.class_bias_init = batch_norm_momentum, class_bias_init
        self.share_tower, self.tower_bias, self.activation = share_tower, tower_bias, activation
        self.background_class, self.separable, self.kernel_size = background_class, separable, kernel_size
        self.class_slots = num_classes + 1 if background_class else num_classes
        self.tower, self.tower_norms = self._tower("prediction_tower" if share_tower else "box_tower")
        if not share_tower:
            self.class_tower, self.class_tower_norms = self._tower("class_tower")
        self.box_output = self._conv(anchors_per_location * BOX_CODE_SIZE, "box_predictor", use_bias=True)
        self.class_output = self._conv(
            anchors_per_location * self.class_slots, "class_predictor", use_bias=True,
            bias_initializer=keras.initializers.Constant(class_bias_init))

    def _conv(self, channels: int, name: str, use_bias: bool, **kwargs) -> keras.layers.Layer:
        """A "same" `kernel_size` convolution: separable (the API's ``use_depthwise: true``) or regular."""
        if self.separable:
            return separable_conv(channels, name, use_bias=use_bias, kernel_size=self.kernel_size, **kwargs)
        return keras.layers.Conv2D(
            channels, self.kernel_size, padding="same", use_bias=use_bias, name=name,
            kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV), **kwargs)

    def _tower(self, name: str) -> tuple[list, list]:
        """`convs` convolutions shared by the levels, and each level's batch norms."""
        convs = [self._conv(self.channels, f"{name}_conv{i}", use_bias=self.tower_bias) for i in range(self.convs)]
        norms = [[batch_norm_layer(f"{name}_conv{i}_batchnorm_level{index}", self.batch_norm_momentum)
                  for i in range(self.convs)] for index in range(self.num_levels)]
        return convs, norms

    def _apply_tower(self, convs: list, norms: list, x, training):
        activation = keras.activations.get(self.activation)
        for conv, norm in zip(convs, norms):
            x = activation(norm(conv(x), training=training))
        return x

    def call(self, pyramid: list, training=False) -> tuple:
        if len(pyramid) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature maps, got {len(pyramid)}")
        box_encodings, class_logits = [], []
        for level, features in enumerate(pyramid):
            x = self._apply_tower(self.tower, self.tower_norms[level], features, training)
            if not self.share_tower:
                class_features = self._apply_tower(self.class_tower, self.class_tower_norms[level], features, training)
            else:
                class_features = x
            batch = ops.shape(features)[0]
            box_encodings.append(ops.reshape(self.box_output(x), [batch, -1, BOX_CODE_SIZE]))
            class_logits.append(ops.reshape(self.class_output(class_features), [batch, -1, self.class_slots]))
        return ops.concatenate(box_encodings, axis=1), ops.concatenate(class_logits, axis=1)

    def zoo_checkpoint_slots(self) -> list[ZooSlot]:
        """Every variable with the key the API's predictor stores it under (part ``head``)."""
        towers = {"box_encodings": (self.tower, self.tower_norms)}
        if self.share_tower:
            scopes = {"box_encodings": "PredictionTower"}
        else:
            scopes = {"box_encodings": "BoxPredictionTower",
                      "class_predictions_with_background": "ClassPredictionTower"}
            towers["class_predictions_with_background"] = (self.class_tower, self.class_tower_norms)
        slots = []
        for head, (convs, levels) in towers.items():
            for index, conv in enumerate(convs):
                slots += layer_slots("head", f"{PREDICTOR_PREFIX}_head_scope_conv_layers/{scopes[head]}/{index}/", conv)
            for level, norms in enumerate(levels):
                for index, norm in enumerate(norms):
                    # A level's tower is [conv, norm, activation] * convs: norm i sits at 3 i + 1.
                    slots += layer_slots(
                        "head", f"{PREDICTOR_PREFIX}_base_tower_layers_for_heads/{head}/{level}/{3 * index + 1}/", norm)
        slots += layer_slots("head", f"{PREDICTOR_PREFIX}_box_prediction_head/_box_encoder_layers/0/", self.box_output)
        slots += layer_slots("head", f"{PREDICTOR_PREFIX}_prediction_heads/class_predictions_with_background/"
                             "_class_predictor_layers/0/", self.class_output, class_output=True)
        return slots

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_location": self.anchors_per_location, "channels": self.channels,
                "convs": self.convs, "num_levels": self.num_levels,
                "batch_norm_momentum": self.batch_norm_momentum, "class_bias_init": self.class_bias_init,
                "share_tower": self.share_tower, "tower_bias": self.tower_bias, "activation": self.activation,
                "background_class": self.background_class, "separable": self.separable,
                "kernel_size": self.kernel_size}
