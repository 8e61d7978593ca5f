"""The ``model`` section of a parsed TF OD API pipeline.config as detkeeper config data.

A zoo SSD that a detkeeper family reproduces is mapped exactly (:mod:`detkeeper.tfod.zoo_ssd`);
other SSDs, CenterNet and Faster R-CNN onto the closest detkeeper family, approximations said so.
Field names and defaults are those of the API's ``object_detection/protos/*.proto`` (model, ssd,
center_net, faster_rcnn, image_resizer, post_processing); the bookkeeping is
:mod:`detkeeper.tfod.tracking`.
"""

from __future__ import annotations

import math
from typing import Any

from detkeeper.tfod.tracking import Node, Tracker
from detkeeper.tfod.zoo_ssd import map_zoo_ssd, zoo_family_for

FOCAL_PRIOR_BIAS = -math.log(0.99 / 0.01)  # detkeeper's heads start at foreground probability 0.01
EVALUATE_EVERY = 1000  # model_main_tf2's --checkpoint_every_n default: its evaluator sees each 1000th step


# --- model ------------------------------------------------------------------------------------

def map_model(model: Node) -> tuple[dict[str, Any], int | None, dict[str, Any]]:
    """``model { ssd | center_net | faster_rcnn { ... } }`` -> the ``model`` section, num_classes
    and the ``evaluation`` keys its post-processing sets."""
    kind, node = model.oneof("model kind (ssd, center_net, faster_rcnn)")
    track = model.tracker
    zoo_family = zoo_family_for(node) if kind == "ssd" else None
    if zoo_family is not None:
        num_classes = node.integer("num_classes")
        track.num_classes_path = node.at("num_classes")
        evaluation: dict[str, Any] = {}
        _post_processing(node.child("post_processing"), evaluation)
        return map_zoo_ssd(node, zoo_family), num_classes, evaluation
    family = {"ssd": "retinanet", "center_net": "fcos", "faster_rcnn": "retinanet"}.get(kind)
    if family is None:
        raise track.error(model.at(kind), "detkeeper maps ssd (to retinanet), center_net (to fcos) and "
                                          f"faster_rcnn (to retinanet); {kind!r} has no detkeeper counterpart")
    why = {"ssd": "single-stage anchor-based detector with a shared head over an FPN",
           "center_net": "FCOS, detkeeper's anchor-free family",
           "faster_rcnn": "detkeeper has no two-stage detector; RetinaNet is its closest one-stage counterpart"}
    track.map(model.at(kind), "model.name", family, why[kind])
    result: dict[str, Any] = {"name": family}
    num_classes = node.integer("num_classes")
    track.num_classes_path = node.at("num_classes")
    extractor = node.child("feature_extractor")
    if extractor is None:
        raise track.error(node.path, "no feature_extractor { type: ... }; cannot choose a backbone")
    result["backbone"] = _backbone(extractor)
    result["image_size"], resize = _model_input(node.child("image_resizer"), node.at("image_resizer"), track)
    if resize:
        result["resize"] = resize
    neck = _neck(extractor)
    if neck:
        result["neck"] = neck
    if kind == "ssd":
        head = _shared_head(node.child("box_predictor"))
        if head:
            result["head"] = head
    evaluation: dict[str, Any] = {}
    if kind == "center_net":
        centre = node.child("object_center_params")
        most = centre.integer("max_box_predictions") if centre else None
        if most is not None:
            evaluation["max_detections"] = most
            track.map(centre.at("max_box_predictions"), "evaluation.max_detections", most,
                      "FCOS keeps its best boxes after NMS (CenterNet has none)")
    else:
        _post_processing(node.child("post_processing" if kind == "ssd" else "second_stage_post_processing"),
                         evaluation)
    return result, num_classes, evaluation


def _post_processing(node: Node | None, evaluation: dict[str, Any]) -> None:
    """``batch_non_max_suppression`` -> evaluation thresholds (exports inherit them)."""
    if node is None:
        return
    track = node.tracker
    nms = node.child("batch_non_max_suppression")
    if nms is not None:
        keys = (("score_threshold", "score_threshold", 0.0), ("iou_threshold", "iou_threshold", 0.6),
                ("max_total_detections", "max_detections", 100))
        for name, key, default in keys:
            value = nms.integer(name, default) if key == "max_detections" else nms.number(name, default)
            evaluation[key] = value
            track.map(nms.at(name), f"evaluation.{key}", value, "exports inherit it (export.* null)")
        per_class = nms.peek("max_detections_per_class")
        if per_class is not None and per_class == evaluation["max_detections"]:
            nms.use("max_detections_per_class")
            track.map(nms.at("max_detections_per_class"), "(model)", per_class,
                      "detkeeper's per-class cap is max_detections too")
        else:
            nms.note("max_detections_per_class", "detkeeper caps each class at evaluation.max_detections")
    converter = node.peek("score_converter")
    if converter == "SIGMOID":
        node.use("score_converter")
        track.map(node.at("score_converter"), "(model)", converter, "detkeeper's class scores are sigmoids too")
    else:
        node.note("score_converter", "detkeeper's class scores are sigmoids")


def _backbone(extractor: Node) -> dict[str, Any]:
    track = extractor.tracker
    kind = extractor.text("type")
    if kind is None:
        raise track.error(extractor.path, "no type; cannot choose a backbone")
    lowered = kind.lower()
    multiplier = extractor.peek("depth_multiplier")
    multiplier = 1.0 if multiplier is None else multiplier
    width = multiplier if isinstance(multiplier, (int, float)) and not isinstance(multiplier, bool) else None
    if "mobilenet" in lowered:
        name, comment = "mobilenetv2", "MobileNetV2 at width 1.0"
        if "mobilenet_v2" not in lowered:
            comment = "MobileNetV2, the MobileNet detkeeper has"
        if width is not None and abs(width - 0.35) < 1e-6:
            name, comment = "mobilenetv2_035", "MobileNetV2 at width 0.35"
        if width is not None and (abs(width - 0.35) < 1e-6 or abs(width - 1.0) < 1e-6):
            extractor.use("depth_multiplier")
        else:
            extractor.note("depth_multiplier", "detkeeper's MobileNetV2 comes at widths 1.0 and 0.35 only")
    elif "efficientnet" in lowered:
        name, comment = "efficientnetv2b0", ("EfficientNetV2-B0, the EfficientNet detkeeper has "
                                             "(the pipeline's is EfficientNet-" + _variant(lowered) + ")")
    elif "resnet" in lowered:
        name, comment = "resnet50", "ResNet-50" + ("" if "50" in lowered else ", the ResNet detkeeper has")
    else:
        name, comment = "resnet50", f"detkeeper has no {kind!r}; ResNet-50 is its largest backbone"
    track.map(extractor.at("type"), "model.backbone.name", name, comment)
    return {"name": name, "weights": "none"}


def _variant(lowered: str) -> str:
    start = lowered.find("efficientnet-")
    return lowered[start + len("efficientnet-"):].split("_")[0].upper() if start >= 0 else "?"


def _model_input(resizer: Node | None, path: str, track: Tracker) -> tuple[int, dict[str, str]]:
    """``image_resizer`` -> (``model.image_size``, ``model.resize``; empty where detkeeper's default)."""
    if resizer is None:
        track.map(path, "model.image_size", 320, "no image_resizer in the pipeline; detkeeper's default")
        return 320, {}
    kind, node = resizer.oneof("image resizer")
    resize = {"mode": "pad", "method": "tf1_bilinear"}
    if kind == "fixed_shape_resizer":
        height, width = node.integer("height", 300), node.integer("width", 300)
        side, how = max(height, width), f"fixed {height}x{width}"
        if height == width:
            resize["mode"] = "stretch"
        else:
            how += ("; detkeeper's input is square: it keeps the aspect ratio and pads, so the longer side "
                    "is the input size")
    elif kind == "keep_aspect_ratio_resizer":
        low, side = node.integer("min_dimension", 600), node.integer("max_dimension", 1024)
        how = f"longer side at most {side}"
        if low != side:
            how += f"; detkeeper resizes the longer side to the input size (min_dimension {low} is not used)"
        if node.flag("pad_to_max_dimension", False):
            how += ", padded to a square as detkeeper does"
    else:
        track.map(resizer.at(kind), "model.image_size", 320, f"{kind} has no detkeeper counterpart; default 320")
        resizer.note(kind, "detkeeper resizes keeping the aspect ratio and pads to a square (model.image_size)")
        return 320, {}
    if side < 32:
        raise track.error(node.path, f"an input side of {side} px is smaller than detkeeper's 32")
    size = -(-side // 32) * 32
    if size != side:
        how += f"; rounded up from {side} to a multiple of 32, as detkeeper's pyramid needs"
    track.map(node.path, "model.image_size", size, how)
    method = node.text("resize_method", "BILINEAR")
    if method != "BILINEAR":
        node.note("resize_method", f"{method}: detkeeper resizes bilinearly")
    track.map(node.path, "model.resize", dict(resize),
              ("each side stretched" if resize["mode"] == "stretch" else "aspect ratio kept, padded")
              + "; bilinear as TF1's resize_images, as the API resizes")
    return size, resize


def _neck(extractor: Node) -> dict[str, Any]:
    track = extractor.tracker
    for kind in ("fpn", "bifpn"):
        node = extractor.child(kind)
        if node is None:
            continue
        low, high = node.integer("min_level", 3), node.integer("max_level", 7)
        neck = {"min_level": min(max(low, 3), 7), "max_level": min(max(high, 3), 7)}
        if neck["min_level"] > neck["max_level"]:
            raise track.error(node.path, f"min_level {low} > max_level {high}")
        comment = "levels clamped to detkeeper's 3..7" if (low, high) != tuple(neck.values()) else ""
        if kind == "bifpn":
            comment = "detkeeper's FPN is one top-down pass; " + (comment or "same levels")
        track.map(node.path, "model.neck.min_level/max_level", [neck["min_level"], neck["max_level"]], comment)
        channels = node.integer("num_filters") if kind == "bifpn" else extractor.integer("additional_layer_depth")
        if channels is not None:
            neck["channels"] = channels
            track.map(node.at("num_filters") if kind == "bifpn" else extractor.at("additional_layer_depth"),
                      "model.neck.channels", channels)
        return neck
    track.map(extractor.path, "model.neck", "the family's default pyramid",
              "the pipeline names no FPN; detkeeper's heads always read a feature pyramid")
    return {}


def _shared_head(predictor: Node | None) -> dict[str, Any]:
    if predictor is None:
        return {}
    shared = predictor.child("weight_shared_convolutional_box_predictor")
    if shared is None:
        for name in predictor.names():
            predictor.note(name, "SSD's separate predictor per feature map; detkeeper's head is shared across "
                                 "pyramid levels, with the family's default width and depth (model.head)")
        return {}
    head = {}
    depth, convs = shared.integer("depth"), shared.integer("num_layers_before_predictor")
    if depth is not None:
        head["channels"] = depth
        shared.tracker.map(shared.at("depth"), "model.head.channels", depth)
    if convs is not None:
        head["convs"] = min(convs, 8)
        shared.tracker.map(shared.at("num_layers_before_predictor"), "model.head.convs", head["convs"],
                           "" if convs <= 8 else f"{convs} capped at detkeeper's 8")
    bias = shared.peek("class_prediction_bias_init")
    if isinstance(bias, (int, float)) and abs(bias - FOCAL_PRIOR_BIAS) > 0.01:
        shared.note("class_prediction_bias_init", f"detkeeper's class outputs start at probability 0.01 "
                                                  f"(bias {FOCAL_PRIOR_BIAS:.2f})")
    elif bias is not None:
        shared.number("class_prediction_bias_init")
        shared.tracker.map(shared.at("class_prediction_bias_init"), "(model)", bias,
                           "detkeeper's heads start at the same prior, probability 0.01")
    if shared.peek("kernel_size") == 3:
        shared.tracker.map(shared.at("kernel_size"), "(model)", 3, "detkeeper's head convolutions are 3x3 too")
        shared.use("kernel_size")
    else:
        shared.note("kernel_size", "detkeeper's head convolutions are 3x3")
    return head
