"""SSD MobileNetV2 FPN-lite: the TF OD API's SSD meta-architecture, variable for variable.

``meta_architectures/ssd_meta_arch.py`` as the zoo's ``ssd_mobilenet_v2_fpnlite_{320x320,640x640}``
configs build it: MobileNetV2 (:mod:`~detkeeper.models.ssd.mobilenet_v2`) -> FPN-lite
(:mod:`~detkeeper.models.ssd.fpn_lite`) -> weight-shared predictor
(:mod:`~detkeeper.models.ssd.predictor`) over the API's multiscale anchors
(:mod:`~detkeeper.models.ssd.anchors`). Outputs, decoding and loss are the SSD meta-architecture's
(:class:`~detkeeper.models.ssd.ssd_meta_arch.SsdMetaArch`), with these configs' focal loss (alpha
0.25, gamma 2). A zoo checkpoint loads into it with
:func:`detkeeper.models.ssd.zoo_checkpoint.restore_zoo_checkpoint`, by the keys
:meth:`SsdFpnLite.zoo_checkpoint_slots` names.
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError
from detkeeper.models.backbones import check_backbone
from detkeeper.models.registry import Postprocess, register_model, resize_settings
from detkeeper.models.ssd.anchors import multiscale_grid_anchors
from detkeeper.models.ssd.fpn_lite import BATCH_NORM_MOMENTUM, FpnLiteFeatureMaps
from detkeeper.models.ssd.mobilenet_v2 import (MIN_DEPTH, ZOO_BACKBONE_PREFIX, backbone_zoo_slots,
                                               build_ssd_backbone, check_backbone_name)
from detkeeper.models.ssd.predictor import WeightSharedBoxPredictor
from detkeeper.models.ssd.ssd_meta_arch import SsdMetaArch
from detkeeper.models.ssd.zoo_checkpoint import EXTRACTOR_PREFIX, ZooSlot, layer_slots

# The FPN-lite zoo configs' anchor generator.
ASPECT_RATIOS = (1.0, 2.0, 0.5)
SCALES_PER_OCTAVE = 2
ANCHOR_SCALE = 4.0


@keras.saving.register_keras_serializable(package="detkeeper")
class SsdFpnLite(SsdMetaArch):
    """SSD with an FPN-lite neck and the weight-shared depthwise predictor."""

    FOCAL_ALPHA, FOCAL_GAMMA, SMOOTH_L1_DELTA = 0.25, 2.0, 1.0
    pad_value = (127.5, 127.5, 127.5)  # MobileNet's x / 127.5 - 1 is 0 there, where the API pads
    ZOO_BACKBONE_PREFIX = ZOO_BACKBONE_PREFIX

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int, fpn_channels: int = 128,
                 head_channels: int = 128, head_convs: int = 4, min_level: int = 3, max_level: int = 7,
                 batch_norm_momentum: float = BATCH_NORM_MOMENTUM, share_tower: bool = True,
                 separable_head: bool = True, head_kernel_size: int = 3, separable_neck: bool = True,
                 **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.backbone = backbone
        self.fpn_channels, self.head_channels, self.head_convs = fpn_channels, head_channels, head_convs
        self.min_level, self.max_level = min_level, max_level
        self.batch_norm_momentum = batch_norm_momentum
        self.share_tower, self.separable_head, self.head_kernel_size = share_tower, separable_head, head_kernel_size
        self.separable_neck = separable_neck
        self.fpn = FpnLiteFeatureMaps(fpn_channels, min_level, max_level, batch_norm_momentum, separable_neck,
                                      name="fpn")
        self.head = WeightSharedBoxPredictor(
            num_classes, len(ASPECT_RATIOS) * SCALES_PER_OCTAVE, head_channels, head_convs,
            num_levels=max_level - min_level + 1, batch_norm_momentum=batch_norm_momentum, share_tower=share_tower,
            separable=separable_head, kernel_size=head_kernel_size, name="head")
        self.anchors = multiscale_grid_anchors(image_size, min_level, max_level, ANCHOR_SCALE,
                                               ASPECT_RATIOS, SCALES_PER_OCTAVE)

    def backbone_zoo_slots(self) -> list[ZooSlot]:
        """The backbone's variables by their zoo keys (the API's MobileNetV2 here)."""
        return backbone_zoo_slots(self.backbone)

    def zoo_checkpoint_slots(self) -> list[ZooSlot]:
        """Every variable with the key the API's ``SSDMobileNetV2FpnKerasFeatureExtractor`` and
        ``WeightSharedConvolutionalBoxPredictor`` store it under."""
        slots = self.backbone_zoo_slots()
        fpn, generator = self.fpn, f"{EXTRACTOR_PREFIX}_fpn_features_generator/"
        slots += layer_slots("neck", f"{generator}top_layers/0/", fpn.top)
        for index, (residual, conv, norm) in enumerate(zip(fpn.residual, fpn.smoothing, fpn.smoothing_norm)):
            slots += layer_slots("neck", f"{generator}residual_blocks/{index}/0/", residual)
            slots += layer_slots("neck", f"{generator}conv_layers/{index}/0/", conv)
            slots += layer_slots("neck", f"{generator}conv_layers/{index}/1/", norm)
        for index, (conv, norm) in enumerate(zip(fpn.coarse, fpn.coarse_norm)):
            slots += layer_slots("neck", f"{EXTRACTOR_PREFIX}_coarse_feature_layers/{index}/0/", conv)
            slots += layer_slots("neck", f"{EXTRACTOR_PREFIX}_coarse_feature_layers/{index}/1/", norm)
        return slots + self.head.zoo_checkpoint_slots()

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "fpn_channels": self.fpn_channels, "head_channels": self.head_channels,
                "head_convs": self.head_convs, "min_level": self.min_level, "max_level": self.max_level,
                "batch_norm_momentum": self.batch_norm_momentum, "share_tower": self.share_tower,
                "separable_head": self.separable_head, "head_kernel_size": self.head_kernel_size,
                "separable_neck": self.separable_neck}


#: The zoo's FPN-lite sizes, where ``model.neck`` / ``model.head`` leave a value unset.
DEFAULT_CHANNELS, DEFAULT_HEAD_CONVS, DEFAULT_MIN_LEVEL, DEFAULT_MAX_LEVEL = 128, 4, 3, 7
DEFAULT_KERNEL_SIZE = 3


def fpn_channels(model_config) -> int:
    """``model.neck.channels``, else the API's width for the zoo's ``additional_layer_depth`` (128)
    at the backbone's depth multiplier: ``max(int(128 * multiplier), min_depth)``."""
    if model_config.neck.channels is not None:
        return model_config.neck.channels
    return max(int(DEFAULT_CHANNELS * model_config.backbone.depth_multiplier), MIN_DEPTH)


def pyramid_levels(model_config) -> tuple[int, int]:
    neck = model_config.neck
    return neck.min_level or DEFAULT_MIN_LEVEL, neck.max_level or DEFAULT_MAX_LEVEL


def check_ssd_fpnlite_config(model_config) -> None:
    """What building would refuse: another backbone, levels FPN-lite cannot make."""
    backbone = model_config.backbone
    check_backbone_name(backbone.name, backbone.depth_multiplier, backbone.weights)
    check_backbone(backbone.name, backbone.weights, model_config.image_size)
    if model_config.head.kernel_size == 1 and model_config.head.separable is not False:
        raise ConfigError("model.head.kernel_size: the TF OD API refuses a 1x1 kernel with depthwise convolutions "
                          "(model.head.separable); expected 3 or more, or model.head.separable: false")
    if model_config.head.block is not None:
        raise ConfigError(f"model.head.block: the SSD predictor's tower is the TF OD API's convolutions "
                          f"(model.head.separable); expected null, got {model_config.head.block!r}")
    min_level, max_level = pyramid_levels(model_config)
    if not 3 <= min_level <= 5:
        raise ConfigError(f"model.neck.min_level: FPN-lite starts at a backbone level, 3, 4 or 5; got {min_level}")
    if max_level < 5:
        raise ConfigError(f"model.neck.max_level: FPN-lite ends at level 5 or above; got {max_level}")
    if min_level > max_level:
        raise ConfigError(f"model.neck.max_level: expected >= min_level ({min_level}), got {max_level}")


@register_model("ssd_mobilenet_v2_fpnlite", check=check_ssd_fpnlite_config, resize=("stretch", "tf1_bilinear"),
                reads_zoo_checkpoints=True, options=("backbone.depth_multiplier", "neck.separable", "head.kernel_size",
                                                     "head.share_tower", "head.separable"))
def ssd_mobilenet_v2_fpnlite(model_config, num_classes: int, postprocess: Postprocess) -> SsdFpnLite:
    """The zoo's ``ssd_mobilenet_v2_fpnlite_320x320`` / ``640x640`` (``model.image_size`` 320 or
    640): 128-channel FPN-lite P3-P7, four-conv shared tower of 3x3 separable convolutions;
    ``model.neck.channels``, ``min_level``, ``max_level``, ``separable``, ``model.head.channels``, ``convs``,
    ``kernel_size``, ``share_tower`` and ``separable`` override them, ``model.backbone.depth_multiplier``
    narrows MobileNetV2 and (unless ``model.neck.channels`` is set) the FPN as the API does. Images are
    stretched to the input with TF1's bilinear resize unless ``model.resize`` says otherwise.
    ``model.backbone.name``: ``mobilenetv2`` (the API's, which zoo checkpoints fit) or ``tiny``."""
    check_ssd_fpnlite_config(model_config)
    head = model_config.head
    min_level, max_level = pyramid_levels(model_config)
    backbone = build_ssd_backbone(model_config.backbone.name, model_config.backbone.weights,
                                  model_config.image_size, depth_multiplier=model_config.backbone.depth_multiplier)
    return SsdFpnLite(
        backbone, num_classes, model_config.image_size, fpn_channels=fpn_channels(model_config),
        head_channels=head.channels or DEFAULT_CHANNELS,
        head_convs=head.convs if head.convs is not None else DEFAULT_HEAD_CONVS,
        min_level=min_level, max_level=max_level, share_tower=head.share_tower is not False,
        separable_head=head.separable is not False, head_kernel_size=head.kernel_size or DEFAULT_KERNEL_SIZE,
        separable_neck=model_config.neck.separable is not False, score_threshold=postprocess.score_threshold,
        iou_threshold=postprocess.iou_threshold, max_detections=postprocess.max_detections,
        custom_objects_module=model_config.custom_objects_module, name=model_config.name,
        **resize_settings(model_config))
