"""The TF OD API's MobileNetV2 feature extractor base, as keras.applications builds it in Keras 3.

The API (``models/keras_models/mobilenet_v2.py``) builds the Keras MobileNetV2 application with its
layers overridden: every convolution ``"same"``-padded (its ``ZeroPadding2D`` becomes a no-op),
batch norm with the config's epsilon (0.001, as the application's), ReLU6 from the config. At depth
multiplier 1.0 this is, layer for layer, the Keras 3 application: its stride-2 depthwise
convolutions pad ``correct_pad`` = (0, 1) before a ``"valid"`` convolution, which is what TF's
``"SAME"`` pads for an even input, and the same (1, 1) for an odd one. The 104 layers with weights
come in the same order as the checkpoint's ``classification_backbone/layer_with_weights-N``
(:func:`application_layers_with_weights`).

The FPN-lite extractor (``models/ssd_mobilenet_v2_fpn_keras_feature_extractor.py``) taps
``layer_7`` = ``block_5_add`` (stride 8, 32 channels), ``layer_14`` = ``block_12_add`` (stride 16,
96) and ``layer_19`` = ``out_relu`` (stride 32, 1280; the "modified" 256-channel ``Conv_1`` it
defines for depthwise FPNs is never passed to the backbone, and the zoo checkpoint has 1280).
Those are ``C3``, ``C4`` and ``C5`` here (a block without its residual add, which a depth
multiplier can make, is tapped at its ``project_BN``, as the API does). The SSD MobileNetV2
extractor without FPN (``models/ssd_mobilenet_v2_keras_feature_extractor.py``) taps
``layer_15/expansion_output`` = ``block_13_expand_relu`` (stride 16, 576 channels) and ``layer_19``
= ``out_relu``: ``C4`` and ``C5`` (:data:`SSD_FEATURE_LAYERS`).

Other depth multipliers (``feature_extractor.depth_multiplier``, ``model.backbone.depth_multiplier``):
the API then also scales ``Conv_1`` and floors every width at ``min_depth``, which
keras.applications does not, so :func:`api_mobilenet_v2` builds that network itself, from random
initialisation (no ImageNet weights fit it).
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.models import batch_norm
from detkeeper.models.backbones import RANDOM_INIT_BN_MOMENTUM, build_backbone, check_backbone
from detkeeper.models.ssd.zoo_checkpoint import EXTRACTOR_PREFIX, ZooSlot, layer_slots

#: The API's MobileNetV2 at depth multiplier 1.0: the backbone zoo checkpoints fit.
BACKBONE_NAME = "mobilenetv2"
#: detkeeper's small CNN (:func:`detkeeper.models.backbones.tiny`): quick tests and CPU demos of
#: the family's neck, head and loss; no zoo checkpoint fits it.
TINY_NAME = "tiny"
BACKBONE_NAMES = (BACKBONE_NAME, TINY_NAME)
#: The FPN extractor's feature blocks by the API's level (``_feature_blocks[level - 2]``).
FEATURE_LAYERS = {"C3": "block_5_add", "C4": "block_12_add", "C5": "out_relu"}
#: The extractor without FPN: ``layer_15/expansion_output`` and ``layer_19``.
SSD_FEATURE_LAYERS = {"C4": "block_13_expand_relu", "C5": "out_relu"}
FEATURE_STRIDES = {"C3": 8, "C4": 16, "C5": 32}
#: The tapped application's name (``<backbone>_<variant>_features``) by variant: the FPN-lite
#: family's ``fpnlite`` (as its saved models have it), the no-FPN family's ``ssd``.
VARIANTS = {"fpnlite": FEATURE_LAYERS, "ssd": SSD_FEATURE_LAYERS}
#: Where both extractors keep the MobileNetV2 in a zoo checkpoint.
ZOO_BACKBONE_PREFIX = f"{EXTRACTOR_PREFIX}classification_backbone/"


def check_backbone_name(name: str, depth_multiplier: float = 1.0, weights: str = "none") -> None:
    """The backbone names the families take; a depth multiplier only for the API's MobileNetV2, and
    then from random initialisation."""
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"model.backbone.name: the SSD MobileNetV2 families are built on the TF OD "
                          f"API's MobileNetV2 ({BACKBONE_NAME!r}), or detkeeper's {TINY_NAME!r} backbone "
                          f"for tests and CPU demos; got {name!r}")
    if depth_multiplier != 1.0 and name != BACKBONE_NAME:
        raise ConfigError(f"model.backbone.depth_multiplier: only the API's MobileNetV2 ({BACKBONE_NAME!r}) "
                          f"takes a depth multiplier; expected 1.0 for {name!r}, got {depth_multiplier}")
    if depth_multiplier != 1.0 and weights != "none":
        raise ConfigError(f"model.backbone.weights: the API's MobileNetV2 at depth multiplier {depth_multiplier} "
                          f"(Conv_1 and min_depth as the API sets them) has no ImageNet or Keras weights file "
                          f"that fits it; expected \"none\" (a zoo checkpoint of the same multiplier loads "
                          f"through model.init_from), got {weights!r}")


def build_ssd_backbone(name: str, weights: str, image_size: int, variant: str = "fpnlite",
                       size_multiple: int = 32, depth_multiplier: float = 1.0) -> keras.Model:
    """The backbone ``model.backbone`` names: the API's MobileNetV2 at `depth_multiplier` tapped as
    the `variant`'s extractor (:data:`VARIANTS`), or detkeeper's tiny CNN (C3, C4, C5).
    `size_multiple` as :func:`detkeeper.models.backbones.build_backbone`'s."""
    check_backbone_name(name, depth_multiplier, weights)
    if name == TINY_NAME:
        return build_backbone(TINY_NAME, weights, image_size, size_multiple)
    return build_mobilenet_v2(weights, image_size, variant, size_multiple, depth_multiplier)


def _feature_layer(application: keras.Model, name: str) -> str:
    """`name`, or for a block whose residual add the depth multiplier removed, its ``project_BN``
    (the API's ``add_name if add_name in layer_names else project_name``)."""
    names = {layer.name for layer in application.layers}
    if name in names or not name.endswith("_add"):
        return name
    return name[: -len("add")] + "project_BN"


def build_mobilenet_v2(weights: str, image_size: int, variant: str = "fpnlite",
                       size_multiple: int = 32, depth_multiplier: float = 1.0) -> keras.Model:
    """``images [B, S, S, 3]`` in 0..255 -> the `variant`'s taps (``{"C3", "C4", "C5"}`` for FPN-lite,
    ``{"C4", "C5"}`` for the SSD without FPN) as the API's extractor takes them.

    `weights` as ``model.backbone.weights`` ("none", "imagenet" or a file saved from the
    ``mobilenetv2`` backbone): detkeeper's own MobileNetV2 backbone is built with them (its weight
    handling, ImageNet download errors and random-init batch-norm momentum included), and its
    application is tapped at the API's layers instead of detkeeper's. The input is scaled to
    [-1, 1] (``x / 127.5 - 1``, the API's ``(2 / 255) x - 1``) inside the model. At depth
    multipliers other than 1.0 the network is :func:`api_mobilenet_v2`'s, from random init.
    """
    feature_layers = VARIANTS[variant]
    check_backbone_name(BACKBONE_NAME, depth_multiplier, weights)
    if depth_multiplier == 1.0:
        base = build_backbone(BACKBONE_NAME, weights, image_size, size_multiple)
        application = base.get_layer(f"{BACKBONE_NAME}_features")
        scaling = base.get_layer(f"{BACKBONE_NAME}_input_scaling")
    else:
        check_backbone(BACKBONE_NAME, weights, image_size, size_multiple)
        application = api_mobilenet_v2(image_size, depth_multiplier)
        scaling = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{BACKBONE_NAME}_input_scaling")
    taps = {key: application.get_layer(_feature_layer(application, layer)).output
            for key, layer in feature_layers.items()}
    extractor = keras.Model(application.input, taps, name=f"{BACKBONE_NAME}_{variant}_features")
    images = keras.Input((image_size, image_size, 3), name="images")
    scaled = scaling(images)
    features = extractor(scaled)
    backbone = keras.Model(images, {key: features[key] for key in feature_layers},
                           name=f"{BACKBONE_NAME}_{variant}_backbone")
    backbone.feature_strides = {key: FEATURE_STRIDES[key] for key in feature_layers}
    return backbone


def application_layers_with_weights(backbone: keras.Model) -> list[keras.layers.Layer]:
    """The MobileNetV2 layers that hold variables, in the application's order: the checkpoint's
    ``classification_backbone/layer_with_weights-N`` is the N-th of them. ``DetkeeperError`` for
    another backbone."""
    names = {f"{BACKBONE_NAME}_{variant}_features" for variant in VARIANTS}
    extractors = [layer for layer in backbone.layers if layer.name in names]
    if not extractors:
        raise DetkeeperError(f"a TF OD API checkpoint fits the API's MobileNetV2 (model.backbone.name: "
                             f"{BACKBONE_NAME}), not backbone {backbone.name!r}")
    return [layer for layer in extractors[0].layers if layer.weights]


def backbone_zoo_slots(backbone: keras.Model) -> list[ZooSlot]:
    """The MobileNetV2's variables by their zoo checkpoint keys: ``classification_backbone/
    layer_with_weights-N`` is the N-th application layer with weights."""
    return [slot for index, layer in enumerate(application_layers_with_weights(backbone))
            for slot in layer_slots("backbone", f"{ZOO_BACKBONE_PREFIX}layer_with_weights-{index}/", layer)]


# --- The API's MobileNetV2 at other depth multipliers ---------------------------------------------

#: The API's floor on the backbone's convolution widths (``feature_extractor.min_depth``, whose
#: proto default and zoo value is 16); ``expand`` convolutions are exempt, as in the API.
MIN_DEPTH = 16
#: ``(filters, stride, expansion)`` of the application's inverted residual blocks 0..16.
_BLOCKS = ((16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6), (32, 1, 6), (32, 1, 6), (64, 2, 6), (64, 1, 6),
           (64, 1, 6), (64, 1, 6), (96, 1, 6), (96, 1, 6), (96, 1, 6), (160, 2, 6), (160, 1, 6), (160, 1, 6),
           (320, 1, 6))
LAST_CONV_FILTERS = 1280


def make_divisible(value: float, divisor: int = 8) -> int:
    """keras.applications' (and the API's) ``_make_divisible``: the nearest multiple of `divisor`,
    at least `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def api_mobilenet_v2(image_size: int, depth_multiplier: float, min_depth: int = MIN_DEPTH) -> keras.Model:
    """``[B, S, S, 3]`` in [-1, 1] -> ``out_relu``: MobileNetV2 as the API builds it at
    `depth_multiplier` (``models/keras_models/mobilenet_v2.py``), layer for layer the Keras
    application's graph (same names, same order of the layers with weights) with the API's changes:

    - ``Conv_1`` has ``make_divisible(1280 * depth_multiplier)`` filters below 1.0 too (the
      application keeps 1280 there);
    - every convolution but the ``expand`` ones has at least `min_depth` filters;
    - a block adds its input back when its input width equals its *nominal* output width (the
      application's test, made before the floor): a block whose input was raised to `min_depth`
      does not add, as in the API;
    - every convolution is ``"same"``-padded (the application's stride-2 ``ZeroPadding2D`` +
      ``"valid"`` pads the same way).
    """
    def conv(x, filters: int, kernel: int, name: str, strides: int = 1):
        if not name.endswith("expand"):
            filters = max(filters, min_depth)
        return keras.layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=name)(x)

    def norm(x, name: str):
        return batch_norm.BatchNormalization(epsilon=1e-3, momentum=RANDOM_INIT_BN_MOMENTUM, name=name)(x)

    inputs = keras.Input((image_size, image_size, 3), name="scaled_images")
    x = conv(inputs, make_divisible(32 * depth_multiplier), 3, "Conv1", strides=2)
    x = keras.layers.ReLU(6.0, name="Conv1_relu")(norm(x, "bn_Conv1"))
    for block_id, (filters, stride, expansion) in enumerate(_BLOCKS):
        in_channels = x.shape[-1]
        nominal = make_divisible(int(filters * depth_multiplier))
        prefix, y = (f"block_{block_id}_", x) if block_id else ("expanded_conv_", x)
        if block_id:
            y = conv(y, expansion * in_channels, 1, f"{prefix}expand")
            y = keras.layers.ReLU(6.0, name=f"{prefix}expand_relu")(norm(y, f"{prefix}expand_BN"))
        y = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                         name=f"{prefix}depthwise")(y)
        y = keras.layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(norm(y, f"{prefix}depthwise_BN"))
        y = norm(conv(y, nominal, 1, f"{prefix}project"), f"{prefix}project_BN")
        x = keras.layers.Add(name=f"{prefix}add")([x, y]) if in_channels == nominal and stride == 1 else y
    x = norm(conv(x, make_divisible(LAST_CONV_FILTERS * depth_multiplier), 1, "Conv_1"), "Conv_1_bn")
    outputs = keras.layers.ReLU(6.0, name="out_relu")(x)
    return keras.Model(inputs, outputs, name=f"{BACKBONE_NAME}_api_{depth_multiplier:g}")
