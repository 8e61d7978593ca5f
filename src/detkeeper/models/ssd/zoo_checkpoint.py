"""Reading a TF OD API (TF2 model zoo) checkpoint into an :class:`~detkeeper.models.ssd.SsdFpnLite`.

A zoo checkpoint (``.../checkpoint/ckpt-0``) is ``tf.train.Checkpoint(model=<the API's SSD>)``: its
keys follow the API's object graph (``model/_feature_extractor/classification_backbone/
layer_with_weights-N/kernel``, ``model/_box_predictor/_head_scope_conv_layers/PredictionTower/0/
depthwise_kernel``, ...) with ``/.ATTRIBUTES/VARIABLE_VALUE`` appended. It is read with
``tf.train.load_checkpoint``, without the API: :func:`zoo_variable_map` names, for each of the
model's variables, the key the API stores it under, and :func:`restore_zoo_checkpoint` checks
every key and shape before assigning anything.

The parts are the detector's (:meth:`~detkeeper.models.detector.Detector.parts`): ``backbone``
(``classification_backbone``), ``neck`` (the rest of ``_feature_extractor``: the FPN and the coarse
layers) and ``head`` (``_box_predictor``). The API's ``fine_tune_checkpoint_type`` maps onto them:
classification restores the backbone (from a detection checkpoint here: the API's classification
checkpoints have another layout), detection the backbone and the neck, full all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import keras
import tensorflow as tf

from detkeeper.errors import DetkeeperError
from detkeeper.models.ssd.mobilenet_v2 import application_layers_with_weights
from detkeeper.models.ssd.ssd import SsdFpnLite

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
PARTS = ("backbone", "neck", "head")
#: The checkpoint's key prefix of each part; a key under none of them is not the model's (the
#: object graph, ``save_counter``, an optimizer and its slots).
PART_PREFIXES = {"backbone": "model/_feature_extractor/classification_backbone/",
                 "neck": "model/_feature_extractor/", "head": "model/_box_predictor/"}
FIRST_MISMATCHES = 5  # named in the error


@dataclasses.dataclass(frozen=True)
class ZooVariable:
    """One variable's outcome: ``restored``, ``not_included`` (its part was not asked for) or
    ``skipped_for_shape`` (a class output for another number of classes, which keeps its fresh
    initialisation). `shape` is the model's, `checkpoint_shape` the checkpoint's (None: absent)."""

    key: str
    path: str
    part: str
    status: str
    shape: tuple[int, ...]
    checkpoint_shape: tuple[int, ...] | None


_BATCH_NORM = ("gamma", "beta", "moving_mean", "moving_variance")


def _layer_variables(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
    """A layer's variables by the attribute name TF Keras 2 gives them in a checkpoint."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return {name: getattr(layer, name) for name in _BATCH_NORM}
    if isinstance(layer, keras.layers.SeparableConv2D):
        named = {"depthwise_kernel": layer.depthwise_kernel, "pointwise_kernel": layer.pointwise_kernel}
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
        named = {"depthwise_kernel": layer.kernel}
    elif isinstance(layer, keras.layers.Conv2D):
        named = {"kernel": layer.kernel}
    else:
        raise TypeError(f"no TF OD API checkpoint layout for layer {layer.name!r} ({type(layer).__name__})")
    if getattr(layer, "bias", None) is not None:
        named["bias"] = layer.bias
    return named


def _layers_by_key(model) -> Iterable[tuple[str, str, keras.layers.Layer]]:
    """``(part, key prefix, layer)`` for every layer with variables, in the checkpoint's naming."""
    backbone = PART_PREFIXES["backbone"]
    for index, layer in enumerate(application_layers_with_weights(model.backbone)):
        yield "backbone", f"{backbone}layer_with_weights-{index}/", layer
    fpn, extractor = model.fpn, "model/_feature_extractor/"
    generator = f"{extractor}_fpn_features_generator/"
    yield "neck", f"{generator}top_layers/0/", fpn.top
    for index, (residual, conv, norm) in enumerate(zip(fpn.residual, fpn.smoothing, fpn.smoothing_norm)):
        yield "neck", f"{generator}residual_blocks/{index}/0/", residual
        yield "neck", f"{generator}conv_layers/{index}/0/", conv
        yield "neck", f"{generator}conv_layers/{index}/1/", norm
    for index, (conv, norm) in enumerate(zip(fpn.coarse, fpn.coarse_norm)):
        yield "neck", f"{extractor}_coarse_feature_layers/{index}/0/", conv
        yield "neck", f"{extractor}_coarse_feature_layers/{index}/1/", norm
    head, predictor = model.head, PART_PREFIXES["head"]
    for index, conv in enumerate(head.tower):
        yield "head", f"{predictor}_head_scope_conv_layers/PredictionTower/{index}/", conv
    for level, norms in enumerate(head.tower_norms):
        for index, norm in enumerate(norms):
            # The tower of a level is [conv, norm, activation] * convs: norm i sits at 3 i + 1.
            yield "head", f"{predictor}_base_tower_layers_for_heads/box_encodings/{level}/{3 * index + 1}/", norm
    yield "head", f"{predictor}_box_prediction_head/_box_encoder_layers/0/", head.box_output
    yield "head", (f"{predictor}_prediction_heads/class_predictions_with_background/"
                   "_class_predictor_layers/0/"), head.class_output


def class_output_keys(model) -> set[str]:
    """The keys of the class output layer, the one a model for other classes cannot take."""
    prefix = (f"{PART_PREFIXES['head']}_prediction_heads/class_predictions_with_background/"
              "_class_predictor_layers/0/")
    return {prefix + name for name in _layer_variables(model.head.class_output)}


def zoo_variable_map(model) -> dict[str, tuple[str, keras.Variable]]:
    """Checkpoint key (without the value suffix) -> ``(part, variable)``, one to one over the
    model's variables (the model is built first if it is not)."""
    if not model.built:
        model(tf.zeros([1, model.image_size, model.image_size, 3]))
    mapping = {}
    for part, prefix, layer in _layers_by_key(model):
        for name, variable in _layer_variables(layer).items():
            mapping[prefix + name] = (part, variable)
    mapped = {id(variable) for _, variable in mapping.values()}
    unmapped = [variable.path for variables in model.parts().values() for variable in variables
                if id(variable) not in mapped]
    if unmapped or len(mapped) != len(mapping):
        raise ValueError(f"the TF OD API key map does not cover the model one to one; unmapped: {unmapped[:5]}")
    return mapping


def _part_of_key(key: str) -> str | None:
    if key.startswith(PART_PREFIXES["backbone"]):
        return "backbone"
    for part in ("neck", "head"):
        if key.startswith(PART_PREFIXES[part]):
            return part
    return None


def is_zoo_checkpoint(prefix: str) -> bool:
    """Whether `prefix` is a TF2 checkpoint laid out as the TF OD API saves its models (a
    ``model/_feature_extractor/...`` key), read from its index alone."""
    if not Path(f"{prefix}.index").is_file():
        return False
    try:
        names = tf.train.list_variables(prefix)
    except (ValueError, tf.errors.OpError):
        return False
    return any(name.startswith(PART_PREFIXES["neck"]) for name, _ in names)


def reads_zoo_checkpoints(model) -> bool:
    """Whether `model` is a family whose variables map onto a zoo checkpoint's keys."""
    return isinstance(model, SsdFpnLite)


def read_checkpoint_shapes(prefix: str) -> tuple[tf.train.CheckpointReader, dict[str, tuple[int, ...]]]:
    """The reader and ``{key: shape}`` of the model's variables in a TF2 checkpoint (value suffix
    dropped; optimizer slots, ``save_counter`` and the object graph left out)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (ValueError, tf.errors.OpError) as error:
        raise DetkeeperError(f"cannot read a TF checkpoint at {prefix!r} (expected a prefix such as "
                             f".../checkpoint/ckpt-0): {error}") from error
    shapes = {}
    for key, shape in reader.get_variable_to_shape_map().items():
        if key.endswith(VALUE_SUFFIX) and ".OPTIMIZER_SLOT" not in key and _part_of_key(key):
            shapes[key[: -len(VALUE_SUFFIX)]] = tuple(shape)
    return reader, shapes


def restore_zoo_checkpoint(model, prefix: str, include: Iterable[str] = PARTS,
                           fresh_class_head: bool = False) -> list[ZooVariable]:
    """Assign the zoo checkpoint at `prefix` to `model`'s variables in the `include` parts.

    Every key of an included part must exist on both sides with the same shape, or nothing is
    assigned and a ``DetkeeperError`` names the first mismatching keys and shapes (a checkpoint of
    another architecture, another number of classes, other widths). With `fresh_class_head`, the
    class output's variables that do not fit (another number of classes) keep their
    initialisation (the prior bias) instead. Returns every model variable's outcome.
    """
    include = tuple(include)
    unknown = [part for part in include if part not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected some of {PARTS}")
    reader, checkpoint_shapes = read_checkpoint_shapes(prefix)
    mapping = zoo_variable_map(model)
    class_keys = class_output_keys(model) if fresh_class_head else set()

    mismatches, outcomes = [], []
    for key, (part, variable) in mapping.items():
        shape, found = tuple(variable.shape), checkpoint_shapes.get(key)
        if part not in include:
            status = "not_included"
        elif found == shape:
            status = "restored"
        elif key in class_keys and found is not None:
            status = "skipped_for_shape"
        else:
            status = "mismatch"
            stored = "has no such key" if found is None else list(found)
            mismatches.append(f"{key}: checkpoint {stored}, model {list(shape)}")
        outcomes.append(ZooVariable(key, variable.path, part, status, shape, found))
    for key, found in checkpoint_shapes.items():
        part = _part_of_key(key)
        if key not in mapping and part in include:
            mismatches.append(f"{key}: checkpoint {list(found)}, not in the model")
    if mismatches:
        raise DetkeeperError(
            f"the checkpoint {prefix!r} does not fit model {model.name!r} ({type(model).__name__}, "
            f"{model.num_classes} classes, parts {', '.join(include)}): {len(mismatches)} keys differ; "
            f"first: {'; '.join(mismatches[:FIRST_MISMATCHES])}")

    for outcome in outcomes:
        if outcome.status == "restored":
            mapping[outcome.key][1].assign(reader.get_tensor(outcome.key + VALUE_SUFFIX))
    return outcomes
