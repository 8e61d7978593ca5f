"""The TF OD API's ResNet V1 (50, 101, 152) feature extractor base, as its SSD ResNet FPN configs build it.

The API (``models/keras_models/resnet_v1.py``) builds the Keras ResNet applications (the V1
``resnet`` module: stride on each stage's first 1x1 convolutions) with its layers overridden, which
keras.applications cannot reproduce, so the network is built here, with the application's names:

- every convolution has ``max(int(filters * depth_multiplier), min_depth)`` filters and no bias;
  ``"same"`` padding, except the 7x7 stride-2 ``conv1_conv``, padded 3 on each side then ``"valid"``
  (the API's ``fixed_padding``, the application's ``conv1_pad``);
- ``pool1_pool`` is a 3x3 stride-2 ``"same"`` max pooling (the application pads 1 on each side,
  which differs on even inputs);
- batch norm and activation from the config's ``conv_hyperparams`` when
  ``override_base_feature_extractor_hyperparams`` (the zoo's: epsilon 0.001, ReLU6, also after each
  residual add).

The input is the resized image minus the channel means ``[123.68, 116.779, 103.939]`` (RGB, no
scaling; the extractor's ``preprocess``). Taps for the FPN (``_RESNET_MODEL_OUTPUT_LAYERS``): each
stage's last block, ``conv3`` (C3, stride 8), ``conv4`` (C4), ``conv5`` (C5): ``conv3_block4_out``,
``conv4_block6_out``, ``conv5_block3_out`` for ResNet-50.

Zoo checkpoint keys: ``classification_backbone/layer_with_weights-N`` is the N-th layer with weights
in TF Keras 2's order, which puts a first block's shortcut after its second convolution:
``1_conv, 1_bn, 2_conv, 2_bn, 0_conv, 3_conv, 0_bn, 3_bn`` (:func:`zoo_layer_order`).
"""

from __future__ import annotations

import keras

from detkeeper.errors import DetkeeperError
from detkeeper.models import batch_norm
from detkeeper.models.backbones import RANDOM_INIT_BN_MOMENTUM
from detkeeper.models.ssd.zoo_checkpoint import EXTRACTOR_PREFIX, ZooSlot, layer_slots

CHANNEL_MEANS = (123.68, 116.779, 103.939)
MIN_DEPTH = 16
#: ``shape_utils.check_min_image_dim(129, ...)`` in the extractor.
MIN_IMAGE_SIZE = 129
#: Blocks per stage (conv2..conv5) by backbone name, as keras.applications' ResNet50/101/152.
BLOCKS = {"resnet50_v1": (3, 4, 6, 3), "resnet101_v1": (3, 4, 23, 3), "resnet152_v1": (3, 8, 36, 3)}
BACKBONE_NAMES = tuple(BLOCKS)
#: Each stage's (name, filters, first stride).
STAGES = (("conv2", 64, 1), ("conv3", 128, 2), ("conv4", 256, 2), ("conv5", 512, 2))
FEATURE_STAGES = {"C3": "conv3", "C4": "conv4", "C5": "conv5"}
FEATURE_STRIDES = {"C3": 8, "C4": 16, "C5": 32}
ZOO_BACKBONE_PREFIX = f"{EXTRACTOR_PREFIX}classification_backbone/"
#: The zoo configs' ``conv_hyperparams`` batch norm.
BATCH_NORM_EPSILON = 1e-3


def zoo_layer_order(name: str) -> list[str]:
    """The names of backbone `name`'s layers with weights in the checkpoint's ``layer_with_weights`` order."""
    names = ["conv1_conv", "conv1_bn"]
    for (stage, _, _), blocks in zip(STAGES, BLOCKS[name]):
        for block in range(1, blocks + 1):
            prefix = f"{stage}_block{block}_"
            names += [f"{prefix}1_conv", f"{prefix}1_bn", f"{prefix}2_conv", f"{prefix}2_bn"]
            if block == 1:
                names += [f"{prefix}0_conv", f"{prefix}3_conv", f"{prefix}0_bn", f"{prefix}3_bn"]
            else:
                names += [f"{prefix}3_conv", f"{prefix}3_bn"]
    return names


def build_resnet_v1(name: str, image_size: int, depth_multiplier: float = 1.0,
                    min_depth: int = MIN_DEPTH) -> keras.Model:
    """``images [B, S, S, 3]`` in 0..255 -> ``{"C3", "C4", "C5"}``: the API's ResNet V1 `name`
    (:data:`BLOCKS`) at `depth_multiplier`, from random initialisation, with its channel-mean input
    normalisation."""

    def conv(x, filters: int, kernel: int, name: str, strides: int = 1):
        filters = max(int(filters * depth_multiplier), min_depth)
        padding = "same"
        if strides > 1 and kernel > 1:
            x = keras.layers.ZeroPadding2D((kernel - 1) // 2, name=name.replace("_conv", "_pad"))(x)
            padding = "valid"
        return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)

    def norm(x, name: str):
        return batch_norm.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=RANDOM_INIT_BN_MOMENTUM,
                                             name=name)(x)

    def relu6(x, name: str):
        return keras.layers.ReLU(6.0, name=name)(x)

    images = keras.Input((image_size, image_size, 3), name="images")
    means = [-mean for mean in CHANNEL_MEANS]
    x = keras.layers.Rescaling(1.0, offset=means, name=f"{name}_input_means")(images)
    x = relu6(norm(conv(x, 64, 7, "conv1_conv", strides=2), "conv1_bn"), "conv1_relu")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_pool")(x)
    stage_outputs = {}
    for (stage, filters, first_stride), blocks in zip(STAGES, BLOCKS[name]):
        for block in range(1, blocks + 1):
            prefix, strides = f"{stage}_block{block}_", first_stride if block == 1 else 1
            shortcut = norm(conv(x, 4 * filters, 1, f"{prefix}0_conv", strides), f"{prefix}0_bn") if block == 1 else x
            y = relu6(norm(conv(x, filters, 1, f"{prefix}1_conv", strides), f"{prefix}1_bn"), f"{prefix}1_relu")
            y = relu6(norm(conv(y, filters, 3, f"{prefix}2_conv"), f"{prefix}2_bn"), f"{prefix}2_relu")
            y = norm(conv(y, 4 * filters, 1, f"{prefix}3_conv"), f"{prefix}3_bn")
            x = relu6(keras.layers.Add(name=f"{prefix}add")([shortcut, y]), f"{prefix}out")
        stage_outputs[stage] = x
    backbone = keras.Model(images, {key: stage_outputs[stage] for key, stage in FEATURE_STAGES.items()},
                           name=f"{name}_backbone")
    backbone.feature_strides = dict(FEATURE_STRIDES)
    return backbone


def resnet_zoo_slots(backbone: keras.Model) -> list[ZooSlot]:
    """The ResNet's variables by their zoo checkpoint keys (:func:`zoo_layer_order`)."""
    name = backbone.name.removesuffix("_backbone")
    if name not in BLOCKS:
        raise DetkeeperError(f"a TF OD API SSD ResNet checkpoint fits the API's ResNet V1 (model.backbone.name: "
                             f"{', '.join(BACKBONE_NAMES)}), not backbone {backbone.name!r}")
    return [slot for index, layer in enumerate(zoo_layer_order(name))
            for slot in layer_slots("backbone", f"{ZOO_BACKBONE_PREFIX}layer_with_weights-{index}/",
                                    backbone.get_layer(layer))]
