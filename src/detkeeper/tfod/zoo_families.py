"""The zoo SSDs detkeeper reproduces, as their pipeline configs describe them (``config import``).

For each family: what selects it (the feature extractor's ``type`` and the box predictor), which
config fields become its sizes (``model.backbone``, ``model.image_size``, ``model.neck``,
``model.head``), and every field it fixes, with the value it computes with and the API's default
where a config leaves the field out. The values are written out here because ``config import``
does not load TensorFlow (importing the models would); tests/tfod/test_zoo_import.py checks each
against the family's own constant in :mod:`detkeeper.models`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Expected = float | bool | str | tuple[float, ...] | dict
Field = tuple[str, Expected, "Expected | None"]  # dotted path under model.ssd, the family's value, the API's default

BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
MATCHED_THRESHOLD = UNMATCHED_THRESHOLD = 0.5
CLASS_PREDICTION_BIAS_INIT = -4.6

FPNLITE_FOCAL_ALPHA, FPNLITE_FOCAL_GAMMA, FPNLITE_SMOOTH_L1_DELTA = 0.25, 2.0, 1.0
FPNLITE_ANCHOR_SCALE, FPNLITE_ASPECT_RATIOS, FPNLITE_SCALES_PER_OCTAVE = 4.0, (1.0, 2.0, 0.5), 2
FPNLITE_BATCH_NORM_DECAY, FPNLITE_BATCH_NORM_EPSILON = 0.997, 0.001
FPNLITE_LEVELS = (3, 7)  # where model.neck leaves them unset

SSD_FOCAL_ALPHA, SSD_FOCAL_GAMMA, SSD_SMOOTH_L1_DELTA = 0.75, 2.0, 1.0
SSD_NUM_LAYERS, SSD_MIN_SCALE, SSD_MAX_SCALE = 6, 0.2, 0.95
SSD_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
SSD_INTERPOLATED_SCALE_ASPECT_RATIO = 1.0
SSD_KERNEL_SIZE = 1
SSD_BATCH_NORM_DECAY, SSD_BATCH_NORM_EPSILON = 0.97, 0.001


EFFICIENTDET_FOCAL_ALPHA, EFFICIENTDET_FOCAL_GAMMA, EFFICIENTDET_SMOOTH_L1_DELTA = 0.25, 1.5, 1.0
EFFICIENTDET_ANCHOR_SCALE, EFFICIENTDET_ASPECT_RATIOS, EFFICIENTDET_SCALES_PER_OCTAVE = 4.0, (1.0, 2.0, 0.5), 3
EFFICIENTDET_BATCH_NORM_DECAY, EFFICIENTDET_BATCH_NORM_EPSILON = 0.99, 0.001
EFFICIENTDET_LEVELS = (3, 7)

#: What every SSD family computes with.
_SSD_FIELDS: tuple[Field, ...] = (
    ("box_coder.faster_rcnn_box_coder.y_scale", BOX_CODER_SCALES[0], 10.0),
    ("box_coder.faster_rcnn_box_coder.x_scale", BOX_CODER_SCALES[1], 10.0),
    ("box_coder.faster_rcnn_box_coder.height_scale", BOX_CODER_SCALES[2], 5.0),
    ("box_coder.faster_rcnn_box_coder.width_scale", BOX_CODER_SCALES[3], 5.0),
    ("matcher.argmax_matcher.matched_threshold", MATCHED_THRESHOLD, 0.5),
    ("matcher.argmax_matcher.unmatched_threshold", UNMATCHED_THRESHOLD, 0.5),
    ("matcher.argmax_matcher.ignore_thresholds", False, False),
    ("matcher.argmax_matcher.negatives_lower_than_unmatched", True, True),
    ("matcher.argmax_matcher.force_match_for_each_row", True, False),
    ("similarity_calculator.iou_similarity", {}, None),
    ("encode_background_as_zeros", True, False),
    ("loss.classification_weight", 1.0, 1.0),
    ("loss.localization_weight", 1.0, 1.0),
    ("normalize_loss_by_num_matches", True, False),
    ("normalize_loc_loss_by_codesize", True, False),
    ("freeze_batchnorm", False, False),
)


def _loss(alpha: float, gamma: float, delta: float) -> tuple[Field, ...]:
    return (("loss.classification_loss.weighted_sigmoid_focal.alpha", alpha, None),
            ("loss.classification_loss.weighted_sigmoid_focal.gamma", gamma, 2.0),
            ("loss.localization_loss.weighted_smooth_l1.delta", delta, 1.0))


def _hyperparams(section: str, activation: str, decay: float, epsilon: float, bias: bool = False) -> tuple[Field, ...]:
    """A ``conv_hyperparams`` message as a family's layers are built (its initializer and L2
    regularizer are not carried: see ``zoo_ssd``)."""
    prefix = f"{section}.conv_hyperparams"
    return ((f"{prefix}.activation", activation, "RELU"), (f"{prefix}.batch_norm.decay", decay, 0.999),
            (f"{prefix}.batch_norm.epsilon", epsilon, 0.001), (f"{prefix}.batch_norm.scale", True, False),
            (f"{prefix}.batch_norm.center", True, True), (f"{prefix}.batch_norm.train", True, True),
            (f"{prefix}.force_use_bias", bias, False))


def _multiscale_anchors(scale: float, ratios: tuple[float, ...], per_octave: int) -> tuple[Field, ...]:
    prefix = "anchor_generator.multiscale_anchor_generator"
    return ((f"{prefix}.anchor_scale", scale, 4.0), (f"{prefix}.aspect_ratios", ratios, (1.0, 2.0, 0.5)),
            (f"{prefix}.scales_per_octave", float(per_octave), 2.0))


@dataclass(frozen=True)
class Option:
    """A field the family follows through a ``model`` key (``section.key``): the value it computes
    with when the key is unset (the zoo's), and the API's default where the config leaves it out."""

    path: str
    key: str
    family: float | bool
    default: float | bool


@dataclass(frozen=True)
class ZooSsdFamily:
    """A detkeeper family that reproduces a zoo SSD: what selects it, what sizes it, what it fixes.

    `extractor`: a regular expression for ``feature_extractor.type`` (a group ``backbone`` names the
    backbone, else `backbone`); `resizer`: the ``image_resizer`` it takes; `neck`: the extractor's
    message and ``{field: model.neck key}`` (None: a fixed layout); `head`: ``{predictor field:
    model.head key}``; `levels`: where the family's pyramid starts and ends when unset (the
    multiscale anchor generator's levels are compared with the pyramid's); `options`: fields carried
    into ``model`` keys only where they differ from the family's value."""

    name: str
    extractor: str
    predictor: str
    resizer: str
    fields: tuple[Field, ...]
    backbone: str = "mobilenetv2"
    neck: tuple[str, dict[str, str]] | None = None
    head: dict[str, str] | None = None
    levels: tuple[int, int] | None = None
    options: tuple[Option, ...] = ()

    def backbone_of(self, extractor_type: str) -> str | None:
        """The ``model.backbone.name`` for `extractor_type`, or None when it is not this family's."""
        match = re.fullmatch(self.extractor, extractor_type)
        if match is None:
            return None
        return match.groupdict().get("backbone") or self.backbone


_WEIGHT_SHARED = "box_predictor.weight_shared_convolutional_box_predictor"
_CONVOLUTIONAL = "box_predictor.convolutional_box_predictor"
_SSD_ANCHORS = "anchor_generator.ssd_anchor_generator"
#: The backbone floor both MobileNetV2 extractors build with (``mobilenet_v2.MIN_DEPTH``; proto default 16).
MOBILENET_MIN_DEPTH = 16
#: FPN-lite's ``additional_layer_depth`` where the config leaves it out (the proto's default).
FPN_DEFAULT_DEPTH = 256
_DEPTH_MULTIPLIER = Option("feature_extractor.depth_multiplier", "backbone.depth_multiplier", 1.0, 1.0)

def _fpn_family(name: str, extractor: str, *, separable: bool) -> ZooSsdFamily:
    """FPN-lite's layout (the weight-shared predictor over P3-P7): SSD MobileNetV2 FPN-lite with
    depthwise convolutions and one shared tower, SSD ResNet V1 FPN (RetinaNet) with regular
    convolutions and separate towers; `separable` is each one's default for those three fields."""
    return ZooSsdFamily(
        name, extractor, "weight_shared_convolutional_box_predictor", "fixed_shape_resizer",
        _SSD_FIELDS + _loss(FPNLITE_FOCAL_ALPHA, FPNLITE_FOCAL_GAMMA, FPNLITE_SMOOTH_L1_DELTA)
        + _multiscale_anchors(FPNLITE_ANCHOR_SCALE, FPNLITE_ASPECT_RATIOS, FPNLITE_SCALES_PER_OCTAVE) + (
            ("feature_extractor.min_depth", float(MOBILENET_MIN_DEPTH), 16.0),
            ("feature_extractor.override_base_feature_extractor_hyperparams", True, False),
            (f"{_WEIGHT_SHARED}.class_prediction_bias_init", CLASS_PREDICTION_BIAS_INIT, 0.0),
        ) + _hyperparams("feature_extractor", "RELU_6", FPNLITE_BATCH_NORM_DECAY, FPNLITE_BATCH_NORM_EPSILON)
        + _hyperparams(_WEIGHT_SHARED, "RELU_6", FPNLITE_BATCH_NORM_DECAY, FPNLITE_BATCH_NORM_EPSILON),
        neck=("fpn", {"min_level": "min_level", "max_level": "max_level", "additional_layer_depth": "channels"}),
        head={"depth": "channels", "num_layers_before_predictor": "convs"}, levels=FPNLITE_LEVELS,
        options=(_DEPTH_MULTIPLIER, Option("feature_extractor.use_depthwise", "neck.separable", separable, False),
                 Option(f"{_WEIGHT_SHARED}.share_prediction_tower", "head.share_tower", separable, False),
                 Option(f"{_WEIGHT_SHARED}.use_depthwise", "head.separable", separable, False),
                 Option(f"{_WEIGHT_SHARED}.kernel_size", "head.kernel_size", 3, 3)))


ZOO_SSD_FAMILIES = (
    _fpn_family("ssd_mobilenet_v2_fpnlite", r"ssd_mobilenet_v2_fpn_keras", separable=True),
    ZooSsdFamily(
        "ssd_mobilenet_v2", r"ssd_mobilenet_v2_keras", "convolutional_box_predictor", "fixed_shape_resizer",
        _SSD_FIELDS + _loss(SSD_FOCAL_ALPHA, SSD_FOCAL_GAMMA, SSD_SMOOTH_L1_DELTA) + (
            (f"{_SSD_ANCHORS}.num_layers", float(SSD_NUM_LAYERS), 6.0),
            (f"{_SSD_ANCHORS}.min_scale", SSD_MIN_SCALE, 0.2),
            (f"{_SSD_ANCHORS}.max_scale", SSD_MAX_SCALE, 0.95),
            (f"{_SSD_ANCHORS}.aspect_ratios", SSD_ASPECT_RATIOS, None),
            (f"{_SSD_ANCHORS}.interpolated_scale_aspect_ratio", SSD_INTERPOLATED_SCALE_ASPECT_RATIO, 1.0),
            (f"{_SSD_ANCHORS}.reduce_boxes_in_lowest_layer", True, True),
            (f"{_SSD_ANCHORS}.base_anchor_height", 1.0, 1.0),
            (f"{_SSD_ANCHORS}.base_anchor_width", 1.0, 1.0),
            ("feature_extractor.use_depthwise", False, False),
            ("feature_extractor.min_depth", float(MOBILENET_MIN_DEPTH), 16.0),
            ("feature_extractor.override_base_feature_extractor_hyperparams", True, False),
            (f"{_CONVOLUTIONAL}.min_depth", 0.0, 0.0),
            (f"{_CONVOLUTIONAL}.use_dropout", False, True),
            (f"{_CONVOLUTIONAL}.box_code_size", 4.0, 4.0),
            (f"{_CONVOLUTIONAL}.apply_sigmoid_to_scores", False, False),
            (f"{_CONVOLUTIONAL}.use_depthwise", False, False),
            (f"{_CONVOLUTIONAL}.class_prediction_bias_init", CLASS_PREDICTION_BIAS_INIT, 0.0),
        ) + _hyperparams("feature_extractor", "RELU_6", SSD_BATCH_NORM_DECAY, SSD_BATCH_NORM_EPSILON)
        + _hyperparams(_CONVOLUTIONAL, "RELU_6", SSD_BATCH_NORM_DECAY, SSD_BATCH_NORM_EPSILON),
        options=(_DEPTH_MULTIPLIER, Option(f"{_CONVOLUTIONAL}.kernel_size", "head.kernel_size", SSD_KERNEL_SIZE, 1),
                 Option(f"{_CONVOLUTIONAL}.num_layers_before_predictor", "head.convs", 0, 0),
                 Option(f"{_CONVOLUTIONAL}.max_depth", "head.channels", 0, 0))),
    # RetinaNet: FPN-lite's layout with the API's ResNet and regular convolutions
    _fpn_family("ssd_resnet_v1_fpn", r"ssd_(?P<backbone>resnet(?:50|101|152)_v1)_fpn_keras", separable=False),
    ZooSsdFamily(
        "ssd_efficientdet", r"ssd_(?P<backbone>efficientnet-b[0-7])_bifpn_keras",
        "weight_shared_convolutional_box_predictor", "keep_aspect_ratio_resizer",
        _SSD_FIELDS + _loss(EFFICIENTDET_FOCAL_ALPHA, EFFICIENTDET_FOCAL_GAMMA, EFFICIENTDET_SMOOTH_L1_DELTA)
        + _multiscale_anchors(EFFICIENTDET_ANCHOR_SCALE, EFFICIENTDET_ASPECT_RATIOS, EFFICIENTDET_SCALES_PER_OCTAVE)
        + (("add_background_class", False, True),
           (f"{_WEIGHT_SHARED}.use_depthwise", True, False),
           (f"{_WEIGHT_SHARED}.share_prediction_tower", False, False),
           (f"{_WEIGHT_SHARED}.kernel_size", 3.0, 3.0),
           (f"{_WEIGHT_SHARED}.class_prediction_bias_init", CLASS_PREDICTION_BIAS_INIT, 0.0),
           ) + _hyperparams("feature_extractor", "SWISH", EFFICIENTDET_BATCH_NORM_DECAY, EFFICIENTDET_BATCH_NORM_EPSILON,
                            bias=True)
        + _hyperparams(_WEIGHT_SHARED, "SWISH", EFFICIENTDET_BATCH_NORM_DECAY, EFFICIENTDET_BATCH_NORM_EPSILON,
                       bias=True),
        neck=("bifpn", {"min_level": "min_level", "max_level": "max_level", "num_iterations": "repeats",
                        "num_filters": "channels"}),
        head={"depth": "channels", "num_layers_before_predictor": "convs"}, levels=EFFICIENTDET_LEVELS),
)
ZOO_SSD_FAMILY_NAMES = frozenset(family.name for family in ZOO_SSD_FAMILIES)
