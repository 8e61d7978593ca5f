"""A zoo SSD pipeline onto the detkeeper family that reproduces it (``detkeeper config import``).

The TF OD API SSDs that detkeeper reproduces variable for variable (:mod:`detkeeper.models.ssd`)
are mapped exactly, not approximated by RetinaNet: the sizes a family takes from its config (input
side, pyramid levels and width, tower width and depth, classes) are carried over as they are, and
every field the family fixes (anchor generator, box coder, matcher, loss, predictor layout, batch
norm) is compared with the value the family computes with. An equal field is reported as carried;
a different one is listed as not carried over, with the family's value, so the YAML's header says
exactly where the model differs from the pipeline's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from detkeeper.tfod.tracking import Node

Expected = float | bool | str | tuple[float, ...]

# What the families compute with, as the zoo configs write it. Written out here because `config
# import` does not load TensorFlow (which importing the models would); tests/tfod/test_zoo_import.py
# checks each against the family's own constant in detkeeper.models.ssd.
BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
MATCHED_THRESHOLD = UNMATCHED_THRESHOLD = 0.5
FPNLITE_FOCAL_ALPHA, FPNLITE_FOCAL_GAMMA, FPNLITE_SMOOTH_L1_DELTA = 0.25, 2.0, 1.0
FPNLITE_ANCHOR_SCALE, FPNLITE_ASPECT_RATIOS, FPNLITE_SCALES_PER_OCTAVE = 4.0, (1.0, 2.0, 0.5), 2
FPNLITE_BATCH_NORM_DECAY, FPNLITE_BATCH_NORM_EPSILON = 0.997, 0.001
FPNLITE_CLASS_PREDICTION_BIAS_INIT = -4.6
FPNLITE_LEVELS = (3, 7)  # where model.neck leaves them unset

#: The fields every zoo SSD family fixes, relative to ``model.ssd``: (dotted path, the value the
#: family computes with, the API's default where the field is absent).
_SSD_FIELDS: tuple[tuple[str, Expected, Expected | None], ...] = (
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

#: ``ssd_mobilenet_v2_fpn_keras`` with the weight-shared separable predictor: the zoo's FPN-lite.
_FPNLITE_FIELDS: tuple[tuple[str, Expected, Expected | None], ...] = _SSD_FIELDS + (
    ("loss.classification_loss.weighted_sigmoid_focal.alpha", FPNLITE_FOCAL_ALPHA, None),
    ("loss.classification_loss.weighted_sigmoid_focal.gamma", FPNLITE_FOCAL_GAMMA, 2.0),
    ("loss.localization_loss.weighted_smooth_l1.delta", FPNLITE_SMOOTH_L1_DELTA, 1.0),
    ("anchor_generator.multiscale_anchor_generator.anchor_scale", FPNLITE_ANCHOR_SCALE, 4.0),
    ("anchor_generator.multiscale_anchor_generator.aspect_ratios", FPNLITE_ASPECT_RATIOS, (1.0, 2.0, 0.5)),
    ("anchor_generator.multiscale_anchor_generator.scales_per_octave", float(FPNLITE_SCALES_PER_OCTAVE), 2.0),
    ("feature_extractor.use_depthwise", True, False),
    ("feature_extractor.depth_multiplier", 1.0, 1.0),
    ("feature_extractor.override_base_feature_extractor_hyperparams", True, False),
    ("feature_extractor.conv_hyperparams.activation", "RELU_6", "RELU"),
    ("feature_extractor.conv_hyperparams.batch_norm.decay", FPNLITE_BATCH_NORM_DECAY, 0.999),
    ("feature_extractor.conv_hyperparams.batch_norm.epsilon", FPNLITE_BATCH_NORM_EPSILON, 0.001),
    ("feature_extractor.conv_hyperparams.batch_norm.scale", True, False),
    ("box_predictor.weight_shared_convolutional_box_predictor.use_depthwise", True, False),
    ("box_predictor.weight_shared_convolutional_box_predictor.share_prediction_tower", True, False),
    ("box_predictor.weight_shared_convolutional_box_predictor.kernel_size", 3.0, 3.0),
    ("box_predictor.weight_shared_convolutional_box_predictor.class_prediction_bias_init", FPNLITE_CLASS_PREDICTION_BIAS_INIT, 0.0),
    ("box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams.activation", "RELU_6", "RELU"),
    ("box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams.batch_norm.decay",
     FPNLITE_BATCH_NORM_DECAY, 0.999),
    ("box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams.batch_norm.epsilon",
     FPNLITE_BATCH_NORM_EPSILON, 0.001),
    ("box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams.batch_norm.scale", True, False),
)

#: Fields whose value does not change what the family computes, with why.
_NO_EFFECT = {
    "matcher.argmax_matcher.use_matmul_gather": "the same matches, gathered another way",
    "inplace_batchnorm_update": "Keras updates batch norm statistics in place either way",
    "feature_extractor.min_depth": "a floor on channels that applies only below depth multiplier 1.0",
    "post_processing.batch_non_max_suppression.use_static_shapes": "the same detections, padded for TPUs",
}

#: Not read by the family, with why (listed as not carried over whatever their value).
_NOT_USED = {
    "regularizer": "the API's L2 loss on the convolutions is not added; see train.optimizer.weight_decay",
    "initializer": "only matters from random initialisation; the family uses Keras' initialisers",
}


@dataclass(frozen=True)
class ZooSsdFamily:
    """A detkeeper family that reproduces one zoo SSD: what selects it and what it fixes."""

    name: str
    extractor_type: str
    predictor: str
    fields: tuple[tuple[str, Expected, Expected | None], ...]


ZOO_SSD_FAMILIES = (
    ZooSsdFamily("ssd_mobilenet_v2_fpnlite", "ssd_mobilenet_v2_fpn_keras",
                 "weight_shared_convolutional_box_predictor", _FPNLITE_FIELDS),
)

ZOO_SSD_FAMILY_NAMES = frozenset(family.name for family in ZOO_SSD_FAMILIES)


def zoo_family_for(ssd: Node) -> ZooSsdFamily | None:
    """The family reproducing this ``model.ssd`` (by its extractor type and predictor), if any."""
    extractor, predictor = ssd.child("feature_extractor"), ssd.child("box_predictor")
    kind = extractor.peek("type") if extractor else None
    for family in ZOO_SSD_FAMILIES:
        if kind == family.extractor_type and predictor is not None and predictor.has(family.predictor):
            return family
    return None


def map_zoo_ssd(ssd: Node, family: ZooSsdFamily) -> dict[str, Any]:
    """The ``model`` section for `family`, the sizes carried over as the pipeline gives them and
    every field the family fixes compared (see the module docstring)."""
    track = ssd.tracker
    extractor = ssd.child("feature_extractor")
    extractor.text("type")
    track.map(ssd.path, "model.name", family.name,
              f"the TF OD API's {family.extractor_type} SSD, variable for variable (zoo checkpoints load into it)")
    model: dict[str, Any] = {"name": family.name, "backbone": {"name": "mobilenetv2", "weights": "none"}}
    track.map(extractor.at("type"), "model.backbone.name", "mobilenetv2", "the API's MobileNetV2")
    model["image_size"], model["resize"] = _input(ssd)
    fpn = extractor.child("fpn")
    if fpn is not None:
        model["neck"] = _carried(fpn, {"min_level": "model.neck.min_level", "max_level": "model.neck.max_level",
                                       "additional_layer_depth": "model.neck.channels"})
    predictor = ssd.child("box_predictor").child(family.predictor)
    model["head"] = _carried(predictor, {"depth": "model.head.channels",
                                         "num_layers_before_predictor": "model.head.convs"})
    neck = model.get("neck", {})
    anchor_levels = tuple(  # the anchors sit on the pyramid's levels
        (f"anchor_generator.multiscale_anchor_generator.{name}", float(neck.get(name, default)), float(default))
        for name, default in (("min_level", FPNLITE_LEVELS[0]), ("max_level", FPNLITE_LEVELS[1])))
    for path, expected, default in family.fields + anchor_levels:
        _compare(ssd, path, expected, default, family.name)
    for path, why in _NO_EFFECT.items():
        *parents, name = path.split(".")
        node = ssd
        for parent in parents:
            node = node.child(parent) if node is not None else None
        if node is not None and node.has(name):
            node.use(name)
            track.map(node.at(name), "(model)", _shown(node.peek(name)), f"no effect on {family.name}: {why}")
    for section in (extractor, predictor):
        hyperparams = section.child("conv_hyperparams")
        if hyperparams is not None:
            for name, reason in _NOT_USED.items():
                hyperparams.note(name, reason)
    return model


def _input(ssd: Node) -> tuple[int, dict[str, str]]:
    """``image_resizer`` -> the input side and resize, not rounded: the family checks the side."""
    track = ssd.tracker
    resizer = ssd.child("image_resizer")
    if resizer is None:
        raise track.error(ssd.path, "no image_resizer; a zoo SSD's input size comes from it")
    kind, node = resizer.oneof("image resizer")
    if kind != "fixed_shape_resizer":
        raise track.error(resizer.at(kind), f"{kind}: the zoo's {ssd.child('feature_extractor').peek('type')} "
                                            "models stretch to a fixed_shape_resizer square")
    height, width = node.integer("height", 300), node.integer("width", 300)
    if height != width:
        raise track.error(node.path, f"a {height}x{width} input; detkeeper's input is square (model.image_size)")
    method = node.text("resize_method", "BILINEAR")
    if method != "BILINEAR":
        node.note("resize_method", f"{method}: detkeeper resizes bilinearly")
    resize = {"mode": "stretch", "method": "tf1_bilinear"}
    track.map(node.path, "model.image_size", height, f"fixed {height}x{width}")
    track.map(node.path, "model.resize", dict(resize), "each side stretched with TF1's resize_images, as the API")
    return height, resize


def _carried(node: Node, targets: dict[str, str]) -> dict[str, int]:
    """Integer fields carried as they are: ``{detkeeper key's last part: value}``."""
    carried = {}
    for name, target in targets.items():
        value = node.integer(name)
        if value is not None:
            carried[target.rsplit(".", 1)[1]] = value
            node.tracker.map(node.at(name), target, value)
    return carried


def _compare(ssd: Node, path: str, expected: Expected, default: Expected | None, family: str) -> None:
    """Mark the field at `path` carried when the pipeline's value is the family's, noted otherwise."""
    *parents, name = path.split(".")
    node, parent_node, parent_name = ssd, None, None
    for parent in parents:
        child = node.child(parent)
        if child is None:  # the whole message is absent: the API's defaults apply
            return _compare_default(ssd, path, expected, default, family)
        node, parent_node, parent_name = child, node, parent
    values = node.message.get(name, [])
    if not values:
        if _compare_default(ssd, path, expected, default, family) and not node.message and parent_node:
            parent_node.use(parent_name)  # an empty message (weighted_smooth_l1 {}): its defaults are the family's
        return None
    value = tuple(values) if isinstance(expected, tuple) else values[-1]
    if _same(value, expected):
        node.use(name)
        ssd.tracker.map(node.at(name), "(model)", _shown(value), f"{family} computes with it")
    else:
        node.note(name, f"{family} computes with {_shown(expected)}, the zoo's; detkeeper has no setting for it")


def _compare_default(ssd: Node, path: str, expected: Expected, default: Expected | None, family: str) -> bool:
    """Whether the API's default for an absent field is what the family computes with (noted if not)."""
    if default is not None and not _same(default, expected):
        ssd.tracker.notes[f"{ssd.path}.{path}"] = (f"absent, so the API's default {_shown(default)}; {family} "
                                                    f"computes with {_shown(expected)}, the zoo's")
        return False
    return True


def _same(value: Any, expected: Expected) -> bool:
    if isinstance(expected, bool):
        return value is expected or value == ("t" if expected else "f")
    if isinstance(expected, (str, dict)):
        return value == expected
    if isinstance(expected, tuple):
        return (isinstance(value, tuple) and len(value) == len(expected)
                and all(_same(item, want) for item, want in zip(value, expected)))
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-6))


def _shown(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
