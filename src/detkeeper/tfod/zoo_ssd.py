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
from typing import Any

from detkeeper.tfod.tracking import Node
from detkeeper.tfod.zoo_families import (FPN_DEFAULT_DEPTH, MOBILENET_MIN_DEPTH, ZOO_SSD_FAMILIES, Expected, Option,
                                         ZooSsdFamily)

#: Fields whose value does not change what the family computes, with why.
_NO_EFFECT = {
    "matcher.argmax_matcher.use_matmul_gather": "the same matches, gathered another way",
    "inplace_batchnorm_update": "Keras updates batch norm statistics in place either way",
    "post_processing.batch_non_max_suppression.use_static_shapes": "the same detections, padded for TPUs",
    "box_predictor.convolutional_box_predictor.dropout_keep_probability": "unused: use_dropout is false",
}

#: Not read by the family, with why (listed as not carried over whatever their value).
_NOT_USED = {
    "regularizer": "the API's L2 loss on the convolutions is not added; see train.optimizer.weight_decay",
    "initializer": "only matters from random initialisation; the family uses Keras' initialisers",
}


def zoo_family_for(ssd: Node) -> ZooSsdFamily | None:
    """The family reproducing this ``model.ssd`` (by its extractor type and predictor), if any."""
    extractor, predictor = ssd.child("feature_extractor"), ssd.child("box_predictor")
    kind = extractor.peek("type") if extractor else None
    for family in ZOO_SSD_FAMILIES:
        if isinstance(kind, str) and family.backbone_of(kind) and predictor is not None and predictor.has(family.predictor):
            return family
    return None


def map_zoo_ssd(ssd: Node, family: ZooSsdFamily) -> dict[str, Any]:
    """The ``model`` section for `family`, the sizes carried over as the pipeline gives them and
    every field the family fixes compared (see the module docstring)."""
    track = ssd.tracker
    extractor = ssd.child("feature_extractor")
    kind = extractor.text("type")
    track.map(ssd.path, "model.name", family.name,
              f"the TF OD API's {kind} SSD, variable for variable (zoo checkpoints load into it)")
    backbone = family.backbone_of(kind)
    model: dict[str, Any] = {"name": family.name, "backbone": {"name": backbone, "weights": "none"}}
    track.map(extractor.at("type"), "model.backbone.name", backbone, "the API's own")
    model["image_size"], model["resize"] = _input(ssd, family.resizer)
    fields = family.fields
    if family.neck is not None:
        message, keys = family.neck
        section = extractor.child(message)
        if section is not None:
            model["neck"] = _carried(section, {field: f"model.neck.{key}" for field, key in keys.items()})
    predictor = ssd.child("box_predictor").child(family.predictor)
    if family.head is not None:
        model["head"] = _carried(predictor, {field: f"model.head.{key}" for field, key in family.head.items()})
    for option in family.options:
        _option(ssd, option, model, family.name)
    _scale_fpn_depth(ssd, family, model)
    if family.predictor == "convolutional_box_predictor":
        _layers_before_predictor(predictor, model)
    model = {key: value for key, value in model.items() if value != {}}
    if family.levels is not None:  # the anchors sit on the pyramid's levels
        neck = model.get("neck", {})
        fields += tuple((f"anchor_generator.multiscale_anchor_generator.{name}", float(neck.get(name, default)),
                         float(default)) for name, default in zip(("min_level", "max_level"), family.levels))
    for path, expected, default in fields:
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


def _option(ssd: Node, option: Option, model: dict[str, Any], family: str) -> None:
    """Carry `option` into ``model`` where it differs from the family's value (absent: the API's default)."""
    *parents, name = option.path.split(".")
    node = ssd
    for parent in parents:
        node = node.child(parent) if node is not None else None
    present = node is not None and node.has(name)
    value = node.peek(name) if present else option.default
    if isinstance(option.family, bool):
        value = _same(value, True) if present else value
    section, key = option.key.split(".")
    if present and _same(value, option.family):
        node.use(name)
        ssd.tracker.map(node.at(name), "(model)", _shown(value), f"{family} computes with it")
        return
    if not present and _same(value, option.family):
        return
    model.setdefault(section, {})[key] = value
    if present:
        node.use(name)
        ssd.tracker.map(node.at(name), f"model.{option.key}", value)
    else:
        ssd.tracker.map(f"{ssd.path}.{option.path}", f"model.{option.key}", value, "absent: the API's default")


def _scale_fpn_depth(ssd: Node, family: ZooSsdFamily, model: dict[str, Any]) -> None:
    """FPN-lite's width is ``max(int(additional_layer_depth * depth_multiplier), min_depth)``
    (the proto's default depth 256 where the config leaves it out); ``model.neck.channels`` holds
    the width itself."""
    if family.neck is None or "additional_layer_depth" not in family.neck[1]:
        return
    multiplier = model.get("backbone", {}).get("depth_multiplier", 1.0)
    neck = model.setdefault("neck", {})
    nominal = neck.get("channels", FPN_DEFAULT_DEPTH)
    width = max(int(nominal * multiplier), MOBILENET_MIN_DEPTH)
    if width == neck.get("channels"):
        return
    neck["channels"] = width
    source = f"{ssd.path}.feature_extractor.{family.neck[0]}.additional_layer_depth"
    ssd.tracker.mapped = [entry for entry in ssd.tracker.mapped if entry.source != source]  # the unscaled depth
    ssd.tracker.map(source, "model.neck.channels", width,
                    f"{nominal} x depth_multiplier {multiplier}, at least min_depth {MOBILENET_MIN_DEPTH}, as the API")


def _layers_before_predictor(predictor: Node, model: dict[str, Any]) -> None:
    """The convolutional predictor builds its layers only with both ``num_layers_before_predictor``
    and ``max_depth`` above 0: one without the other has no effect and is not carried."""
    head = model.get("head", {})
    if ("convs" in head) != ("channels" in head):
        for key in ("convs", "channels"):
            head.pop(key, None)
        predictor.tracker.map(predictor.path, "(model)", "no layers before the predictor",
                              "num_layers_before_predictor and max_depth: the API builds none unless both are above 0")


def _input(ssd: Node, resizer_kind: str) -> tuple[int, dict[str, str]]:
    """``image_resizer`` -> the input side and resize, not rounded: the family checks the side."""
    track = ssd.tracker
    resizer = ssd.child("image_resizer")
    if resizer is None:
        raise track.error(ssd.path, "no image_resizer; a zoo SSD's input size comes from it")
    kind, node = resizer.oneof("image resizer")
    if kind != resizer_kind:
        raise track.error(resizer.at(kind), f"{kind}: the zoo's {ssd.child('feature_extractor').peek('type')} "
                                            f"models take a {resizer_kind}")
    if kind == "fixed_shape_resizer":
        height, width = node.integer("height", 300), node.integer("width", 300)
        if height != width:
            raise track.error(node.path, f"a {height}x{width} input; detkeeper's input is square (model.image_size)")
        side, resize, how = height, {"mode": "stretch", "method": "tf1_bilinear"}, f"fixed {height}x{width}"
    else:
        low, side = node.integer("min_dimension", 600), node.integer("max_dimension", 1024)
        resize, how = {"mode": "pad", "method": "tf1_bilinear"}, f"longer side {side}, padded to a square"
        if low != side:
            node.note("min_dimension", f"{low}: detkeeper resizes the longer side to {side}, as the API does when "
                                       "the shorter side would pass it")
        if node.flag("pad_to_max_dimension", False):
            track.map(node.at("pad_to_max_dimension"), "model.resize.mode", "pad", "padded to the square input")
        else:
            node.note("pad_to_max_dimension", "false: detkeeper's input is square, so it pads to max_dimension")
    method = node.text("resize_method", "BILINEAR")
    if method != "BILINEAR":
        node.note("resize_method", f"{method}: detkeeper resizes bilinearly")
    track.map(node.path, "model.image_size", side, how)
    track.map(node.path, "model.resize", dict(resize), "TF1's resize_images, as the API resizes")
    return side, resize


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
