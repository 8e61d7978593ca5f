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
Those are ``C3``, ``C4`` and ``C5`` here. The SSD MobileNetV2 extractor without FPN
(``models/ssd_mobilenet_v2_keras_feature_extractor.py``) taps ``layer_15/expansion_output`` =
``block_13_expand_relu`` (stride 16, 576 channels) and ``layer_19`` = ``out_relu``: ``C4`` and
``C5`` (:data:`SSD_FEATURE_LAYERS`). Not reproduced: depth multipliers other than 1.0 (the
API then also scales ``Conv_1`` and applies ``min_depth``, which keras.applications does not).
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.models.backbones import build_backbone
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


def check_backbone_name(name: str) -> None:
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"model.backbone.name: the SSD MobileNetV2 families are built on the TF OD "
                          f"API's MobileNetV2 ({BACKBONE_NAME!r}), or detkeeper's {TINY_NAME!r} backbone "
                          f"for tests and CPU demos; got {name!r}")


def build_ssd_backbone(name: str, weights: str, image_size: int, variant: str = "fpnlite",
                       size_multiple: int = 32) -> keras.Model:
    """The backbone ``model.backbone`` names: the API's MobileNetV2 tapped as the `variant`'s
    extractor (:data:`VARIANTS`), or detkeeper's tiny CNN (C3, C4, C5). `size_multiple` as
    :func:`detkeeper.models.backbones.build_backbone`'s."""
    check_backbone_name(name)
    if name == TINY_NAME:
        return build_backbone(TINY_NAME, weights, image_size, size_multiple)
    return build_mobilenet_v2(weights, image_size, variant, size_multiple)


def build_mobilenet_v2(weights: str, image_size: int, variant: str = "fpnlite",
                       size_multiple: int = 32) -> keras.Model:
    """``images [B, S, S, 3]`` in 0..255 -> the `variant`'s taps (``{"C3", "C4", "C5"}`` for FPN-lite,
    ``{"C4", "C5"}`` for the SSD without FPN) as the API's extractor takes them.

    `weights` as ``model.backbone.weights`` ("none", "imagenet" or a file saved from the
    ``mobilenetv2`` backbone): detkeeper's own MobileNetV2 backbone is built with them (its weight
    handling, ImageNet download errors and random-init batch-norm momentum included), and its
    application is tapped at the API's layers instead of detkeeper's. The input is scaled to
    [-1, 1] (``x / 127.5 - 1``, the API's ``(2 / 255) x - 1``) inside the model.
    """
    feature_layers = VARIANTS[variant]
    base = build_backbone(BACKBONE_NAME, weights, image_size, size_multiple)
    application = base.get_layer(f"{BACKBONE_NAME}_features")
    taps = {key: application.get_layer(layer).output for key, layer in feature_layers.items()}
    extractor = keras.Model(application.input, taps, name=f"{BACKBONE_NAME}_{variant}_features")
    images = keras.Input((image_size, image_size, 3), name="images")
    scaled = base.get_layer(f"{BACKBONE_NAME}_input_scaling")(images)
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
