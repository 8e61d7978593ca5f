"""The TF OD API's ``ConvolutionalBoxPredictor`` as the SSD MobileNetV2 configs build it.

From ``predictors/convolutional_keras_box_predictor.py`` and ``predictors/heads/keras_{box,class}_head.py``
with ``use_depthwise: false``, no dropout and ``min_depth: 0``: each feature map has its own layers,
nothing is shared between maps:

- with ``num_layers_before_predictor`` > 0 and ``max_depth`` > 0 (the zoo config has 0 and 0: none),
  that many 1x1 convolutions without bias to ``min(map depth, max_depth)`` channels, each followed
  by batch norm and ReLU6 (``_shared_nets/<i>/<3 j>`` and ``<3 j + 1>``);
- a ``kernel_size`` box convolution with bias, ``K_i * 4`` channels (``_prediction_heads/box_encodings/<i>/
  _box_encoder_layers/0``), and a class convolution with bias, ``K_i * (C + 1)`` channels, slot 0
  the background, its bias starting at ``class_prediction_bias_init`` (-4.6)
  (``_prediction_heads/class_predictions_with_background/<i>/_class_predictor_layers/0``); ``K_i``
  is the anchors per location of map ``i`` (3 on the first with ``reduce_boxes_in_lowest_layer``, 6 after).

Outputs are reshaped ``[B, H, W, K * D] -> [B, H * W * K, D]`` per map and concatenated finest
first: the order of :func:`detkeeper.models.ssd.multiple_grid_anchors.multiple_grid_anchors`.
Not reproduced: ``use_depthwise: true`` (a depthwise output with its own batch norm), dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from detkeeper.models import batch_norm
from detkeeper.models.ssd.predictor import BOX_CODE_SIZE, CLASS_PREDICTION_BIAS_INIT
from detkeeper.models.ssd.zoo_checkpoint import PREDICTOR_PREFIX, ZooSlot, layer_slots

KERNEL_SIZE = 1
#: The predictor's ``random_normal_initializer { stddev: 0.01 }``.
CONV_INITIALIZER_STDDEV = 0.01
#: Batch norm of the layers before the outputs, as the config's ``conv_hyperparams``.
BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM = 1e-3, 0.97


class ConvolutionalBoxPredictor(keras.layers.Layer):
    """``[map_0, ..., map_n]`` -> box encodings ``[B, A, 4]`` and class logits ``[B, A, C + 1]``."""

    def __init__(self, num_classes: int, anchors_per_location: Sequence[int], kernel_size: int = KERNEL_SIZE,
                 class_bias_init: float = CLASS_PREDICTION_BIAS_INIT, layers_before: int = 0, max_depth: int = 0,
                 batch_norm_momentum: float = BATCH_NORM_MOMENTUM, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.anchors_per_location = num_classes, tuple(anchors_per_location)
        self.kernel_size, self.class_bias_init = kernel_size, class_bias_init
        self.layers_before, self.max_depth, self.batch_norm_momentum = layers_before, max_depth, batch_norm_momentum
        self.box_outputs = [self._conv(anchors * BOX_CODE_SIZE, f"box_predictor_{index}", "zeros")
                            for index, anchors in enumerate(self.anchors_per_location)]
        self.class_outputs = [self._conv(anchors * (num_classes + 1), f"class_predictor_{index}",
                                         keras.initializers.Constant(class_bias_init))
                              for index, anchors in enumerate(self.anchors_per_location)]
        self.shared_convs: list[list[keras.layers.Conv2D]] = []
        self.shared_norms: list[list[keras.layers.BatchNormalization]] = []

    def _conv(self, channels: int, name: str, bias_initializer) -> keras.layers.Conv2D:
        return keras.layers.Conv2D(
            channels, self.kernel_size, padding="same", name=name, bias_initializer=bias_initializer,
            kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV))

    def build(self, feature_maps_shape) -> None:
        """The layers before each map's outputs, whose width follows the map's depth (the API's
        ``max(min(features_depth, max_depth), min_depth)`` with ``min_depth`` 0)."""
        convs, norms = [], []
        for index, shape in enumerate(feature_maps_shape):
            depth = min(int(shape[-1]), self.max_depth)
            names = [f"shared_{index}_conv{position}" for position in range(self.layers_before if depth > 0 else 0)]
            convs.append([keras.layers.Conv2D(
                depth, 1, padding="same", use_bias=False, name=name,
                kernel_initializer=keras.initializers.RandomNormal(stddev=CONV_INITIALIZER_STDDEV)) for name in names])
            norms.append([batch_norm.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=self.batch_norm_momentum,
                                                        name=f"{name}_batchnorm") for name in names])
        self.shared_convs, self.shared_norms = convs, norms

    def call(self, feature_maps: list, training=False) -> tuple:
        if len(feature_maps) != len(self.anchors_per_location):
            raise ValueError(f"expected {len(self.anchors_per_location)} feature maps, got {len(feature_maps)}")
        box_encodings, class_logits = [], []
        for index, (features, box_output, class_output) in enumerate(zip(feature_maps, self.box_outputs,
                                                                         self.class_outputs)):
            for conv, norm in zip(self.shared_convs[index], self.shared_norms[index]):
                features = ops.relu6(norm(conv(features), training=training))
            batch = ops.shape(features)[0]
            box_encodings.append(ops.reshape(box_output(features), [batch, -1, BOX_CODE_SIZE]))
            class_logits.append(ops.reshape(class_output(features), [batch, -1, self.num_classes + 1]))
        return ops.concatenate(box_encodings, axis=1), ops.concatenate(class_logits, axis=1)

    def zoo_checkpoint_slots(self) -> list[ZooSlot]:
        """Every variable with the key the API's predictor stores it under (part ``head``)."""
        slots, heads = [], f"{PREDICTOR_PREFIX}_prediction_heads/"
        for index, (convs, norms) in enumerate(zip(self.shared_convs, self.shared_norms)):
            for position, (conv, norm) in enumerate(zip(convs, norms)):  # [conv, norm, activation] per layer
                slots += layer_slots("head", f"{PREDICTOR_PREFIX}_shared_nets/{index}/{3 * position}/", conv)
                slots += layer_slots("head", f"{PREDICTOR_PREFIX}_shared_nets/{index}/{3 * position + 1}/", norm)
        for index, (box_output, class_output) in enumerate(zip(self.box_outputs, self.class_outputs)):
            slots += layer_slots("head", f"{heads}box_encodings/{index}/_box_encoder_layers/0/", box_output)
            slots += layer_slots("head", f"{heads}class_predictions_with_background/{index}/_class_predictor_layers/0/",
                                 class_output, class_output=True)
        return slots

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_location": list(self.anchors_per_location), "kernel_size": self.kernel_size,
                "class_bias_init": self.class_bias_init, "layers_before": self.layers_before,
                "max_depth": self.max_depth, "batch_norm_momentum": self.batch_norm_momentum}
