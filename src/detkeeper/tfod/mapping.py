"""The field-by-field mapping of a parsed TF OD API pipeline.config onto detkeeper config data.

:class:`Tracker` records every field the mapping read (`mapped`) and every field it decided not
to carry, with the reason; :func:`unmapped_notes` then walks the whole parsed file and reports
each field that was not read, so nothing in the file goes unmentioned. Field names and defaults
are those of the API's ``object_detection/protos/*.proto`` (pipeline, model, ssd, center_net,
faster_rcnn, image_resizer, post_processing, train, optimizer, preprocessor, input_reader, eval).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkeeper.errors import ConfigError
from detkeeper.files import is_url
from detkeeper.tfod.pbtxt import Message, Value
from detkeeper.tfod.reasons import reason_for

FOCAL_PRIOR_BIAS = -math.log(0.99 / 0.01)  # detkeeper's heads start at foreground probability 0.01
EVALUATE_EVERY = 1000  # model_main_tf2's --checkpoint_every_n default: its evaluator sees each 1000th step


@dataclass(frozen=True)
class Mapped:
    """One pipeline field (or a model_main_tf2 flag) and the detkeeper key it became."""

    source: str
    target: str
    value: Any
    comment: str = ""

    def describe(self) -> str:
        return f"{self.source} -> {self.target}: {self.value!r}" + (f" ({self.comment})" if self.comment else "")


@dataclass(frozen=True)
class Note:
    """A pipeline field that was not carried over, and why."""

    path: str
    reason: str
    value: str | None = None  # the value as written, for scalar fields

    def describe(self) -> str:
        shown = f" = {self.value}" if self.value is not None else ""
        return f"{self.path}{shown}: {self.reason}"


@dataclass
class Tracker:
    label: str
    base_dir: Path
    out_dir: Path
    used: set[str] = field(default_factory=set)
    notes: dict[str, str] = field(default_factory=dict)
    mapped: list[Mapped] = field(default_factory=list)
    num_classes_path: str = "model.num_classes"

    def root(self, message: Message) -> "Node":
        return Node(message, "", self)

    def map(self, source: str, target: str, value: Any, comment: str = "") -> None:
        self.mapped.append(Mapped(source, target, value, comment))

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(f"{self.label}: {path}: {message}")

    def path_for_yaml(self, path: str) -> str:
        """A pipeline path resolved from base_dir, written relative to the YAML's folder (absolute paths
        and URLs such as ``gs://bucket/train.record``, which tf.io.gfile reads, stay as they are)."""
        if is_url(path):
            return path
        expanded = os.path.expanduser(path)
        if os.path.isabs(expanded):
            return os.path.normpath(expanded)
        absolute = os.path.normpath(os.path.join(self.base_dir, expanded))
        return os.path.relpath(absolute, self.out_dir)

    def absolute(self, path: str) -> Path:
        return Path(os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(path))))


class Node:
    """A message of the parsed file at a dotted path; reading a field marks it as used."""

    def __init__(self, message: Message, path: str, tracker: Tracker) -> None:
        self.message, self.path, self.tracker = message, path, tracker

    def at(self, name: str, index: int | None = None) -> str:
        return child_path(self.path, name, index, len(self.message.get(name, [])))

    def has(self, name: str) -> bool:
        return bool(self.message.get(name))

    def names(self) -> list[str]:
        return list(self.message)

    def use(self, name: str) -> None:
        for index in range(len(self.message.get(name, []))):
            self.tracker.used.add(self.at(name, index))

    def note(self, name: str, reason: str) -> None:
        for index in range(len(self.message.get(name, []))):
            self.tracker.notes[self.at(name, index)] = reason

    def peek(self, name: str) -> Value | None:
        """The field's single value without marking it used (for mappings that decide first)."""
        return self._single(name)

    def _single(self, name: str) -> Value | None:
        values = self.message.get(name, [])
        if len(values) > 1:
            raise self.tracker.error(self.at(name), f"given {len(values)} times; expected one value")
        return values[0] if values else None

    def number(self, name: str, default: float | None = None) -> float | None:
        value = self._single(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self.tracker.error(self.at(name), f"expected a finite number, got {value!r}")
        self.use(name)
        return value

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.number(name)
        if value is None:
            return default
        if not isinstance(value, int):
            raise self.tracker.error(self.at(name), f"expected an integer, got {value!r}")
        return value

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self._single(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.tracker.error(self.at(name), f"expected a string or enum name, got {value!r}")
        self.use(name)
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._single(name)
        if value is None:
            return default
        known = {True: True, False: False, "t": True, "f": False}
        if isinstance(value, dict) or value not in known or (isinstance(value, int) and value not in (0, 1)):
            raise self.tracker.error(self.at(name), f"expected true or false, got {value!r}")
        self.use(name)
        return known[value]

    def strings(self, name: str) -> list[str]:
        values = self.message.get(name, [])
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.tracker.error(self.at(name, index), f"expected a string, got {value!r}")
        self.use(name)
        return list(values)

    def child(self, name: str) -> "Node | None":
        value = self._single(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.tracker.error(self.at(name), f"expected a message {{ ... }}, got {value!r}")
        return Node(value, self.at(name), self.tracker)

    def children(self, name: str) -> list["Node"]:
        nodes = []
        for index, value in enumerate(self.message.get(name, [])):
            if not isinstance(value, dict):
                raise self.tracker.error(self.at(name, index), f"expected a message {{ ... }}, got {value!r}")
            nodes.append(Node(value, self.at(name, index), self.tracker))
        return nodes

    def oneof(self, what: str) -> tuple[str, "Node"]:
        """The single field set in a `oneof` message (model kind, optimizer, learning rate...)."""
        names = self.names()
        if len(names) != 1:
            found = ", ".join(names) or "none"
            raise self.tracker.error(self.path, f"expected exactly one {what}, found {found}")
        child = self.child(names[0])
        if child is None:
            raise self.tracker.error(self.at(names[0]), f"expected a message {{ ... }} naming the {what}")
        return names[0], child


def child_path(path: str, name: str, index: int | None, count: int) -> str:
    """``parent.name``, with ``[index]`` when the field occurs more than once."""
    suffix = f"[{index}]" if index is not None and count > 1 else ""
    return f"{path}.{name}{suffix}" if path else f"{name}{suffix}"


def unmapped_notes(root: Message, tracker: Tracker) -> list[Note]:
    """Every field of the file that the mapping did not use, in file order, with its reason."""
    touched = tracker.used | set(tracker.notes)
    notes: list[Note] = []

    def walk(message: Message, path: str) -> None:
        for name, values in message.items():
            for index, value in enumerate(values):
                here = child_path(path, name, index, len(values))
                if here in tracker.notes:  # an explicit note wins over a read that found no use
                    notes.append(Note(here, tracker.notes[here], _shown(value)))
                elif here in tracker.used:
                    continue
                elif isinstance(value, dict) and any(key.startswith(here + ".") for key in touched):
                    walk(value, here)
                else:
                    notes.append(Note(here, reason_for(here, name), _shown(value)))

    walk(root, "")
    return notes


def _shown(value: Value) -> str | None:
    if isinstance(value, dict):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


# --- model ------------------------------------------------------------------------------------

def map_model(model: Node) -> tuple[dict[str, Any], int | None, dict[str, Any]]:
    """``model { ssd | center_net | faster_rcnn { ... } }`` -> the ``model`` section, num_classes
    and the ``evaluation`` keys its post-processing sets."""
    kind, node = model.oneof("model kind (ssd, center_net, faster_rcnn)")
    track = model.tracker
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
