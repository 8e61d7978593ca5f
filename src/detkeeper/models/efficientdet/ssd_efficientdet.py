"""EfficientDet (the TF OD API's ``ssd_efficientdet_d0..d7`` zoo models), variable for variable.

The API's SSD meta-architecture with ``ssd_efficientnet-b<N>_bifpn_keras``: EfficientNet
(:mod:`~detkeeper.models.efficientdet.efficientnet`) -> BiFPN (:mod:`~detkeeper.models.efficientdet.bifpn`)
-> weight-shared predictor with separate box and class towers, swish, biased convolutions and no
background slot (:class:`~detkeeper.models.ssd.predictor.WeightSharedBoxPredictor`), over the
multiscale anchors (3 scales per octave, aspect ratios 1, 2, 0.5, anchor scale 4). Decoding, NMS
and the loss (focal gamma 1.5, no background slot) are
:class:`~detkeeper.models.ssd.ssd_meta_arch.SsdMetaArch`'s.

Images keep their aspect ratio and are padded (``keep_aspect_ratio_resizer`` with
``pad_to_max_dimension``, TF1's bilinear resize); the model normalises them with ImageNet's mean and
standard deviation, and the padding is the mean pixel, which normalises to the API's zeros.

Compound scaling follows the config's fields, as the API's config does, not a table of D0..D7:
``model.backbone.name`` (``efficientnet-b0`` .. ``b7``), ``model.neck.channels`` (BiFPN
``num_filters``), ``model.neck.repeats`` (``num_iterations``), ``model.neck.min_level`` /
``max_level``, ``model.head.channels`` (the predictor's ``depth``) and ``model.head.convs``
(``num_layers_before_predictor``). Unset, they are D0's.
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.models.backbones import RANDOM_INIT_BN_MOMENTUM, build_backbone, check_backbone
from detkeeper.models.efficientdet.bifpn import BATCH_NORM_MOMENTUM, BiFpnFeatureMaps
from detkeeper.models.efficientdet.efficientnet import (COMPOUND_COEFFICIENTS, IMAGENET_MEAN, build_efficientnet,
                                                        layers_with_weights)
from detkeeper.models.registry import Postprocess, register_model, resize_settings
from detkeeper.models.ssd.anchors import multiscale_grid_anchors
from detkeeper.models.ssd.predictor import WeightSharedBoxPredictor
from detkeeper.models.ssd.ssd_meta_arch import SsdMetaArch
from detkeeper.models.ssd.zoo_checkpoint import EXTRACTOR_PREFIX, ZooSlot, layer_slots

# The EfficientDet zoo configs' anchor generator and loss.
ASPECT_RATIOS = (1.0, 2.0, 0.5)
SCALES_PER_OCTAVE = 3
ANCHOR_SCALE = 4.0
FOCAL_GAMMA = 1.5
#: detkeeper's small CNN (:func:`detkeeper.models.backbones.tiny`): quick tests and CPU demos of the
#: family's neck, head and loss; no zoo checkpoint fits it.
TINY_NAME = "tiny"
BIFPN_PREFIX = f"{EXTRACTOR_PREFIX}_bifpn_stage/"


@keras.saving.register_keras_serializable(package="detkeeper")
class SsdEfficientDet(SsdMetaArch):
    """SSD with an EfficientNet backbone, a BiFPN neck and the separate-tower weight-shared predictor."""

    FOCAL_GAMMA = FOCAL_GAMMA
    BACKGROUND_CLASS = False  # the configs' add_background_class: false
    pad_value = tuple(255.0 * value for value in IMAGENET_MEAN)  # normalises to 0, where the API pads

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int, fpn_channels: int = 64,
                 fpn_repeats: int = 3, head_channels: int = 64, head_convs: int = 3, min_level: int = 3,
                 max_level: int = 7, batch_norm_momentum: float = BATCH_NORM_MOMENTUM, **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.backbone = backbone
        self.fpn_channels, self.fpn_repeats = fpn_channels, fpn_repeats
        self.head_channels, self.head_convs = head_channels, head_convs
        self.min_level, self.max_level = min_level, max_level
        self.batch_norm_momentum = batch_norm_momentum
        self.fpn = BiFpnFeatureMaps(fpn_channels, fpn_repeats, min_level, max_level, min(max_level, 5),
                                    batch_norm_momentum, name="fpn")
        self.head = WeightSharedBoxPredictor(
            num_classes, len(ASPECT_RATIOS) * SCALES_PER_OCTAVE, head_channels, head_convs,
            num_levels=max_level - min_level + 1, batch_norm_momentum=batch_norm_momentum, share_tower=False,
            tower_bias=True, activation="swish", background_class=False, name="head")
        self.anchors = multiscale_grid_anchors(image_size, min_level, max_level, ANCHOR_SCALE,
                                               ASPECT_RATIOS, SCALES_PER_OCTAVE)

    ZOO_BACKBONE_PREFIX = f"{EXTRACTOR_PREFIX}_efficientnet/"
    #: The rest of the API's classification EfficientNet (the blocks after the last tap, the ``top``
    #: convolution, the ImageNet classifier): stored in zoo checkpoints, never computed.
    ZOO_UNUSED_PREFIXES = (f"{EXTRACTOR_PREFIX}classification_backbone/",)

    def zoo_checkpoint_slots(self) -> list[ZooSlot]:
        """Every variable with the key the API's ``SSDEfficientNetBiFPNKerasFeatureExtractor`` and
        ``WeightSharedConvolutionalBoxPredictor`` store it under."""
        if not self.backbone.name.startswith("efficientnet"):
            raise DetkeeperError(f"a TF OD API checkpoint fits the API's EfficientNet (model.backbone.name: "
                                 f"efficientnet-b0 .. b7), not backbone {self.backbone.name!r}")
        slots = []
        for index, layer in enumerate(layers_with_weights(self.backbone)):
            slots += layer_slots("backbone", f"{self.ZOO_BACKBONE_PREFIX}layer_with_weights-{index}/", layer)
        fpn = self.fpn
        for key, conv in fpn.projections.items():
            node, position = key.split("_")
            slots += layer_slots("neck", f"{BIFPN_PREFIX}node_input_blocks/{node}/{position}/1/0/", conv)
            slots += layer_slots("neck", f"{BIFPN_PREFIX}node_input_blocks/{node}/{position}/1/1/",
                                 fpn.projection_norms[key])
        for node, weights in fpn.combine_weights.items():
            slots.append(ZooSlot("neck", f"{BIFPN_PREFIX}node_combine_op/{node}/bifpn_combine_weights", weights))
            slots += layer_slots("neck", f"{BIFPN_PREFIX}node_post_combine_block/{node}/1/", fpn.post_convs[node])
            slots += layer_slots("neck", f"{BIFPN_PREFIX}node_post_combine_block/{node}/2/", fpn.post_norms[node])
        return slots + self.head.zoo_checkpoint_slots()

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "fpn_channels": self.fpn_channels, "fpn_repeats": self.fpn_repeats,
                "head_channels": self.head_channels, "head_convs": self.head_convs,
                "min_level": self.min_level, "max_level": self.max_level,
                "batch_norm_momentum": self.batch_norm_momentum}


#: EfficientDet-D0's sizes, where ``model`` leaves a value unset (``model.head.channels`` unset
#: takes the neck's channels, as every zoo config has them).
DEFAULT_CHANNELS, DEFAULT_REPEATS, DEFAULT_HEAD_CONVS, DEFAULT_MIN_LEVEL, DEFAULT_MAX_LEVEL = 64, 3, 3, 3, 7
BACKBONE_NAMES = (*COMPOUND_COEFFICIENTS, TINY_NAME)


def _levels(model_config) -> tuple[int, int]:
    neck = model_config.neck
    return neck.min_level or DEFAULT_MIN_LEVEL, neck.max_level or DEFAULT_MAX_LEVEL


def check_ssd_efficientdet_config(model_config) -> None:
    """What building would refuse: another backbone, weights, a head block, levels it cannot make."""
    backbone = model_config.backbone
    if backbone.name not in BACKBONE_NAMES:
        raise ConfigError(f"model.backbone.name: EfficientDet is built on EfficientNet "
                          f"({', '.join(COMPOUND_COEFFICIENTS)}), or detkeeper's {TINY_NAME!r} backbone for "
                          f"tests and CPU demos; got {backbone.name!r}")
    if backbone.name == TINY_NAME:
        check_backbone(TINY_NAME, backbone.weights, model_config.image_size)
    elif backbone.weights != "none":
        raise ConfigError(f"model.backbone.weights: EfficientDet's EfficientNet starts from random weights "
                          f"(none), or from a TF OD API zoo checkpoint through model.init_from; "
                          f"got {backbone.weights!r}")
    if model_config.head.block is not None:
        raise ConfigError(f"model.head.block: the SSD predictor's towers are the TF OD API's separable "
                          f"convolutions; expected null, got {model_config.head.block!r}")
    min_level, max_level = _levels(model_config)
    if not 3 <= min_level <= 5:
        raise ConfigError(f"model.neck.min_level: the BiFPN starts at a backbone level, 3, 4 or 5; got {min_level}")
    if min_level > max_level:
        raise ConfigError(f"model.neck.max_level: expected >= min_level ({min_level}), got {max_level}")


def build_efficientdet_backbone(model_config) -> keras.Model:
    """EfficientNet as the API taps it, or detkeeper's tiny CNN; from random weights (batch-norm
    momentum 0.9, detkeeper's rule for random init)."""
    name, levels = model_config.backbone.name, _levels(model_config)
    if name == TINY_NAME:
        return build_backbone(TINY_NAME, model_config.backbone.weights, model_config.image_size)
    return build_efficientnet(name, model_config.image_size, min(levels[1], 5), RANDOM_INIT_BN_MOMENTUM)


@register_model("ssd_efficientdet", check=check_ssd_efficientdet_config, resize=("pad", "tf1_bilinear"),
                reads_zoo_checkpoints=True, options=("neck.repeats",))
def ssd_efficientdet(model_config, num_classes: int, postprocess: Postprocess) -> SsdEfficientDet:
    """The zoo's ``ssd_efficientdet_d0_512x512`` .. ``d7``: EfficientNet-B0 .. B7 (``model.backbone.name``),
    a BiFPN of ``model.neck.channels`` (64) over levels ``min_level`` .. ``max_level`` (3..7) repeated
    ``model.neck.repeats`` (3) times, predictor towers of ``model.head.convs`` (3) convolutions of
    ``model.head.channels`` (the neck's); in parentheses D0's values, taken where unset."""
    check_ssd_efficientdet_config(model_config)
    neck, head = model_config.neck, model_config.head
    min_level, max_level = _levels(model_config)
    channels = neck.channels or DEFAULT_CHANNELS
    return SsdEfficientDet(
        build_efficientdet_backbone(model_config), num_classes, model_config.image_size, fpn_channels=channels,
        fpn_repeats=neck.repeats or DEFAULT_REPEATS, head_channels=head.channels or channels,
        head_convs=head.convs if head.convs is not None else DEFAULT_HEAD_CONVS, min_level=min_level,
        max_level=max_level, score_threshold=postprocess.score_threshold, iou_threshold=postprocess.iou_threshold,
        max_detections=postprocess.max_detections, custom_objects_module=model_config.custom_objects_module,
        name=model_config.name, **resize_settings(model_config))
