"""SSD MobileNetV2 without FPN: the zoo's ``ssd_mobilenet_v2_320x320_coco17_tpu-8``, variable for variable.

``meta_architectures/ssd_meta_arch.py`` as that config builds it: MobileNetV2 tapped at
``layer_15/expansion_output`` and ``layer_19`` (:mod:`~detkeeper.models.ssd.mobilenet_v2`) -> four
extra stride-2 layers (:mod:`~detkeeper.models.ssd.multi_resolution_feature_maps`) -> one 1x1 box
and one 1x1 class convolution per map (:mod:`~detkeeper.models.ssd.convolutional_box_predictor`) over
the ``ssd_anchor_generator``'s anchors (:mod:`~detkeeper.models.ssd.multiple_grid_anchors`).
Outputs, decoding and loss are the SSD meta-architecture's
(:class:`~detkeeper.models.ssd.ssd_meta_arch.SsdMetaArch`), with this config's focal loss (alpha
0.75, gamma 2). The config's input is 300 x 300, stretched (``fixed_shape_resizer``): maps of 19,
10, 5, 3, 2 and 1, 1917 anchors. Any side from 33 px (the extractor's own minimum) works, since
the anchors follow the maps' sizes. ``model.backbone.depth_multiplier`` and the predictor's
``kernel_size`` / ``num_layers_before_predictor`` / ``max_depth`` follow the config as the API builds them.
"""

from __future__ import annotations

import keras

from detkeeper.errors import ConfigError
from detkeeper.models.backbones import check_backbone
from detkeeper.models.registry import Postprocess, register_model, resize_settings
from detkeeper.models.ssd.anchors import feature_map_sizes
from detkeeper.models.ssd.convolutional_box_predictor import KERNEL_SIZE, ConvolutionalBoxPredictor
from detkeeper.models.ssd.mobilenet_v2 import (ZOO_BACKBONE_PREFIX, backbone_zoo_slots, build_ssd_backbone,
                                               check_backbone_name)
from detkeeper.models.ssd.multi_resolution_feature_maps import BATCH_NORM_MOMENTUM, MultiResolutionFeatureMaps
from detkeeper.models.ssd.multiple_grid_anchors import multiple_grid_anchors, ssd_box_specs
from detkeeper.models.ssd.ssd_meta_arch import SsdMetaArch
from detkeeper.models.ssd.zoo_checkpoint import EXTRACTOR_PREFIX, ZooSlot, layer_slots

#: ``shape_utils.check_min_image_dim(33, ...)`` in the extractor.
MIN_IMAGE_SIZE = 33
#: The first map is the stride-16 tap; each later one halves the previous, rounding up.
FIRST_LEVEL = 4
#: Where each of a map's layers sits in the checkpoint's ``convolutions/<map>/<position>``:
#: 1x1 conv, norm, (activation), 3x3 stride-2 conv, norm, (activation).
_CONVOLUTION_POSITIONS = (0, 1, 3, 4)


@keras.saving.register_keras_serializable(package="detkeeper")
class SsdMobileNetV2(SsdMetaArch):
    """SSD with the MobileNetV2 extractor's extra layers and per-map 1x1 heads."""

    FOCAL_ALPHA, FOCAL_GAMMA, SMOOTH_L1_DELTA = 0.75, 2.0, 1.0
    pad_value = (127.5, 127.5, 127.5)  # MobileNet's x / 127.5 - 1 is 0 there, where the API pads
    ZOO_BACKBONE_PREFIX = ZOO_BACKBONE_PREFIX

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int,
                 batch_norm_momentum: float = BATCH_NORM_MOMENTUM, depth_multiplier: float = 1.0,
                 head_kernel_size: int = KERNEL_SIZE, head_convs: int = 0, head_channels: int = 0, **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.backbone = backbone
        self.batch_norm_momentum, self.depth_multiplier = batch_norm_momentum, depth_multiplier
        self.head_kernel_size, self.head_convs, self.head_channels = head_kernel_size, head_convs, head_channels
        self.feature_map_generator = MultiResolutionFeatureMaps(batch_norm_momentum=batch_norm_momentum,
                                                                depth_multiplier=depth_multiplier,
                                                                name="feature_map_generator")
        box_specs = ssd_box_specs()
        self.head = ConvolutionalBoxPredictor(num_classes, [len(specs) for specs in box_specs], head_kernel_size,
                                              layers_before=head_convs, max_depth=head_channels,
                                              batch_norm_momentum=batch_norm_momentum, name="head")
        sizes = feature_map_sizes(image_size, FIRST_LEVEL, FIRST_LEVEL + len(box_specs) - 1)
        self.anchors = multiple_grid_anchors(sizes, box_specs, image_size)

    def feature_maps(self, images, training=False) -> list:
        """The two backbone taps and the four extra maps, finest first (the API's ``feature_maps``)."""
        return self.feature_map_generator(self.backbone(images, training=training), training=training)

    def parts(self) -> dict[str, list]:
        return {"backbone": list(self.backbone.weights), "neck": list(self.feature_map_generator.weights),
                "head": list(self.head.weights)}

    def zoo_checkpoint_slots(self) -> list[ZooSlot]:
        """Every variable with the key the API's ``SSDMobileNetV2KerasFeatureExtractor`` and
        ``ConvolutionalBoxPredictor`` store it under."""
        slots = backbone_zoo_slots(self.backbone)
        generator = self.feature_map_generator
        extra_layers = zip(generator.reduce, generator.reduce_norm, generator.downsample, generator.downsample_norm)
        for index, layers in enumerate(extra_layers, start=2):  # maps 0 and 1 are the backbone's taps
            for position, layer in zip(_CONVOLUTION_POSITIONS, layers):
                slots += layer_slots(
                    "neck", f"{EXTRACTOR_PREFIX}feature_map_generator/convolutions/{index}/{position}/", layer)
        return slots + self.head.zoo_checkpoint_slots()

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "batch_norm_momentum": self.batch_norm_momentum, "depth_multiplier": self.depth_multiplier,
                "head_kernel_size": self.head_kernel_size, "head_convs": self.head_convs,
                "head_channels": self.head_channels}


def check_ssd_mobilenet_v2_config(model_config) -> None:
    """What building would refuse: another backbone, an input below 33 px, and the neck and head
    settings the API's fixed layout has no counterpart for."""
    backbone = model_config.backbone
    check_backbone_name(backbone.name, backbone.depth_multiplier, backbone.weights)
    if model_config.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"model.image_size: the SSD MobileNetV2 extractor needs at least {MIN_IMAGE_SIZE} px, "
                          f"got {model_config.image_size}")
    check_backbone(model_config.backbone.name, model_config.backbone.weights, model_config.image_size,
                   size_multiple=1)
    for key in ("channels", "min_level", "max_level"):
        value = getattr(model_config.neck, key)
        if value is not None:
            raise ConfigError(f"model.neck.{key}: ssd_mobilenet_v2's feature maps are the TF OD API's fixed layout "
                              f"(two MobileNetV2 taps, then 512, 256, 256 and 128 deep stride-2 layers); expected "
                              f"null, got {value!r}")
    head = model_config.head
    for key, value in (("block", head.block), ("share_tower", head.share_tower)):
        if value is not None:
            raise ConfigError(f"model.head.{key}: ssd_mobilenet_v2's predictor has its own layers per map, none "
                              f"shared; expected null, got {value!r}")
    if head.separable:
        raise ConfigError("model.head.separable: ssd_mobilenet_v2's depthwise predictor (the API's use_depthwise: "
                          "true) is not reproduced; expected null or false, got True")
    if (head.convs or 0) > 0 and head.channels is None:
        raise ConfigError(f"model.head.convs: the layers before each map's outputs are model.head.channels wide at "
                          f"most (the API's max_depth; with max_depth 0 it builds none); set model.head.channels, "
                          f"got convs {head.convs} and channels null")


@register_model("ssd_mobilenet_v2", check=check_ssd_mobilenet_v2_config, resize=("stretch", "tf1_bilinear"),
                reads_zoo_checkpoints=True, options=("backbone.depth_multiplier", "head.kernel_size",
                                                     "head.share_tower", "head.separable"))
def ssd_mobilenet_v2(model_config, num_classes: int, postprocess: Postprocess) -> SsdMobileNetV2:
    """The zoo's ``ssd_mobilenet_v2_320x320`` (``model.image_size: 300``, as its config; any side
    from 33 px). Images are stretched to the input with TF1's bilinear resize unless
    ``model.resize`` says otherwise. ``model.backbone.name``: ``mobilenetv2`` (the API's, which zoo
    checkpoints fit) or ``tiny``; ``model.backbone.depth_multiplier`` narrows MobileNetV2 and the extra
    maps as the API does. ``model.head.kernel_size`` is the outputs' kernel (1), ``convs`` the 1x1
    layers before them (0), each ``min(map depth, model.head.channels)`` wide (the API's
    ``num_layers_before_predictor`` and ``max_depth``)."""
    check_ssd_mobilenet_v2_config(model_config)
    head = model_config.head
    backbone = build_ssd_backbone(model_config.backbone.name, model_config.backbone.weights,
                                  model_config.image_size, variant="ssd", size_multiple=1,
                                  depth_multiplier=model_config.backbone.depth_multiplier)
    return SsdMobileNetV2(
        backbone, num_classes, model_config.image_size, depth_multiplier=model_config.backbone.depth_multiplier,
        head_kernel_size=head.kernel_size or KERNEL_SIZE, head_convs=head.convs or 0,
        head_channels=head.channels or 0, score_threshold=postprocess.score_threshold,
        iou_threshold=postprocess.iou_threshold, max_detections=postprocess.max_detections,
        custom_objects_module=model_config.custom_objects_module, name=model_config.name,
        **resize_settings(model_config))
