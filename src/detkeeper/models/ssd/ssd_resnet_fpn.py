"""SSD ResNet V1 FPN ("RetinaNet" in the TF2 zoo): the TF OD API's SSD, variable for variable.

``meta_architectures/ssd_meta_arch.py`` as the zoo's ``ssd_resnet{50,101,152}_v1_fpn_{640x640,1024x1024}``
configs build it: the API's ResNet V1 (:mod:`~detkeeper.models.ssd.resnet_v1`, ``model.backbone.name``
``resnet50_v1``, ``resnet101_v1`` or ``resnet152_v1``, as ``ssd_efficientdet`` takes its
EfficientNet) -> the same FPN
top-down maps and coarse layers as FPN-lite but with regular 3x3 convolutions (the extractor's
``use_depthwise`` is false) -> the weight-shared predictor with separate box and class towers of
regular convolutions (``share_prediction_tower`` and ``use_depthwise`` false), 256 channels, over
the same multiscale anchors, box coder, focal loss (alpha 0.25, gamma 2) and post-processing.
So it is :class:`~detkeeper.models.ssd.ssd.SsdFpnLite` with another backbone and other defaults;
the FPN's and the predictor's keys are the same. Not reproduced: ImageNet weights (the API's
classification checkpoints have their own layout; Keras' ResNets have biases and other padding).
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError
from detkeeper.models.backbones import build_backbone, check_backbone
from detkeeper.models.registry import Postprocess, register_model, resize_settings
from detkeeper.models.ssd.resnet_v1 import (BACKBONE_NAMES, CHANNEL_MEANS, MIN_DEPTH, MIN_IMAGE_SIZE,
                                            ZOO_BACKBONE_PREFIX, build_resnet_v1, resnet_zoo_slots)
from detkeeper.models.ssd.mobilenet_v2 import TINY_NAME, check_backbone_name
from detkeeper.models.ssd.ssd import DEFAULT_HEAD_CONVS, DEFAULT_KERNEL_SIZE, SsdFpnLite, pyramid_levels
from detkeeper.models.ssd.zoo_checkpoint import ZooSlot

#: The zoo configs' FPN ``additional_layer_depth`` and predictor ``depth``.
DEFAULT_CHANNELS = 256


@keras.saving.register_keras_serializable(package="detkeeper")
class SsdResNetFpn(SsdFpnLite):
    """SSD with the API's ResNet V1, an FPN and the weight-shared predictor."""

    pad_value = CHANNEL_MEANS  # the mean-subtracted input is 0 there, where the API pads
    ZOO_BACKBONE_PREFIX = ZOO_BACKBONE_PREFIX

    def backbone_zoo_slots(self) -> list[ZooSlot]:
        return resnet_zoo_slots(self.backbone)


def check_ssd_resnet_fpn_config(model_config) -> None:
    """What building would refuse: another backbone or weights, a side the extractor or the FPN cannot take."""
    backbone, size = model_config.backbone, model_config.image_size
    if backbone.name not in (*BACKBONE_NAMES, TINY_NAME):
        raise ConfigError(f"model.backbone.name: ssd_resnet_v1_fpn is built on the TF OD API's ResNet V1 "
                          f"({', '.join(BACKBONE_NAMES)}), or detkeeper's {TINY_NAME!r} backbone for tests and CPU "
                          f"demos; got {backbone.name!r}")
    if backbone.name == TINY_NAME:
        check_backbone_name(TINY_NAME, backbone.depth_multiplier, backbone.weights)
        check_backbone(TINY_NAME, backbone.weights, size)
    elif backbone.weights != "none":
        raise ConfigError(f"model.backbone.weights: the API's ResNet V1 (no conv biases, its own padding) has no "
                          f"Keras weights that fit it; expected \"none\" (a zoo checkpoint loads through "
                          f"model.init_from), got {backbone.weights!r}")
    elif size < MIN_IMAGE_SIZE or size % 32:
        raise ConfigError(f"model.image_size: the SSD ResNet FPN extractor needs at least {MIN_IMAGE_SIZE} px and "
                          f"the FPN a multiple of 32; got {size}")
    head = model_config.head
    if head.block is not None:
        raise ConfigError(f"model.head.block: the SSD predictor's tower is the TF OD API's convolutions "
                          f"(model.head.separable); expected null, got {head.block!r}")
    if head.kernel_size == 1 and head.separable:
        raise ConfigError("model.head.kernel_size: the TF OD API refuses a 1x1 kernel with depthwise convolutions "
                          "(model.head.separable); expected 3 or more, or model.head.separable: false")
    min_level, max_level = pyramid_levels(model_config)
    if not 3 <= min_level <= 5 or max_level < 5:
        raise ConfigError(f"model.neck.min_level: the FPN starts at a backbone level (3, 4 or 5) and ends at 5 or "
                          f"above; got {min_level}..{max_level}")


@register_model("ssd_resnet_v1_fpn", check=check_ssd_resnet_fpn_config, resize=("stretch", "tf1_bilinear"),
                reads_zoo_checkpoints=True, options=("backbone.depth_multiplier", "neck.separable", "head.kernel_size",
                                                     "head.share_tower", "head.separable"))
def ssd_resnet_v1_fpn(model_config, num_classes: int, postprocess: Postprocess) -> SsdResNetFpn:
    """The zoo's ``ssd_resnet{50,101,152}_v1_fpn_640x640`` / ``1024x1024`` (``model.image_size`` 640 or 1024):
    256-channel FPN P3-P7 of regular convolutions, separate four-conv box and class towers of regular
    convolutions; ``model.neck`` / ``model.head`` override them as for ``ssd_mobilenet_v2_fpnlite``
    (separable, share_tower and kernel_size included); ``model.backbone.depth_multiplier`` narrows the
    ResNet and (unless ``model.neck.channels`` is set) the FPN as the API does. ``model.backbone.name``:
    ``resnet50_v1``, ``resnet101_v1``, ``resnet152_v1`` (the API's, which zoo checkpoints fit) or ``tiny``."""
    check_ssd_resnet_fpn_config(model_config)
    neck, head, multiplier = model_config.neck, model_config.head, model_config.backbone.depth_multiplier
    min_level, max_level = pyramid_levels(model_config)
    if model_config.backbone.name == TINY_NAME:
        backbone = build_backbone(TINY_NAME, model_config.backbone.weights, model_config.image_size)
    else:
        backbone = build_resnet_v1(model_config.backbone.name, model_config.image_size, multiplier)
    return SsdResNetFpn(
        backbone, num_classes, model_config.image_size,
        fpn_channels=neck.channels or max(int(DEFAULT_CHANNELS * multiplier), MIN_DEPTH),
        head_channels=head.channels or DEFAULT_CHANNELS,
        head_convs=head.convs if head.convs is not None else DEFAULT_HEAD_CONVS,
        min_level=min_level, max_level=max_level, share_tower=bool(head.share_tower),
        separable_head=bool(head.separable), head_kernel_size=head.kernel_size or DEFAULT_KERNEL_SIZE,
        separable_neck=bool(neck.separable), score_threshold=postprocess.score_threshold,
        iou_threshold=postprocess.iou_threshold, max_detections=postprocess.max_detections,
        custom_objects_module=model_config.custom_objects_module, name=model_config.name,
        **resize_settings(model_config))
