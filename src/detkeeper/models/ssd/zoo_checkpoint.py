"""Reading a TF OD API (TF2 model zoo) checkpoint into one of the API's families reproduced here.

A zoo checkpoint (``.../checkpoint/ckpt-0``) is ``tf.train.Checkpoint(model=<the API's SSD>)``: its
keys follow the API's object graph (``model/_feature_extractor/classification_backbone/
layer_with_weights-N/kernel``, ``model/_box_predictor/_head_scope_conv_layers/PredictionTower/0/
depthwise_kernel``, ...) with ``/.ATTRIBUTES/VARIABLE_VALUE`` appended. It is read with
``tf.train.load_checkpoint``, without the API: :func:`zoo_variable_map` names, for each of the
model's variables, the key the API stores it under (each family lays its own out in
``zoo_checkpoint_slots()``), and :func:`restore_zoo_checkpoint` checks every key and shape before
assigning anything.

The parts are the detector's (:meth:`~detkeeper.models.detector.Detector.parts`): ``backbone``
(``classification_backbone`` for MobileNetV2), ``neck`` (the rest of ``_feature_extractor``: the FPN and the coarse
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

VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
PARTS = ("backbone", "neck", "head")
#: The checkpoint's key prefix of the neck and the head; the backbone's is the family's
#: (``ZOO_BACKBONE_PREFIX``, inside the feature extractor). A key under none of them is not the
#: model's (the object graph, ``save_counter``, an optimizer and its slots).
EXTRACTOR_PREFIX = "model/_feature_extractor/"
PREDICTOR_PREFIX = "model/_box_predictor/"
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


@dataclasses.dataclass(frozen=True)
class ZooSlot:
    """Where one model variable lives in a zoo checkpoint: its part, its key (without the value
    suffix), and whether it belongs to a class output (which another number of classes resizes)."""

    part: str
    key: str
    variable: keras.Variable
    class_output: bool = False


_BATCH_NORM = ("gamma", "beta", "moving_mean", "moving_variance")


def layer_slots(part: str, prefix: str, layer: keras.layers.Layer, class_output: bool = False) -> list[ZooSlot]:
    """The slots of a Keras layer whose variables the API's checkpoint stores under `prefix`."""
    return [ZooSlot(part, prefix + name, variable, class_output) for name, variable in layer_variables(layer).items()]


def layer_variables(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
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


def zoo_variable_map(model) -> dict[str, ZooSlot]:
    """Checkpoint key (without the value suffix) -> its :class:`ZooSlot`, one to one over the
    model's variables (the model is built first if it is not)."""
    if not model.built:
        model(tf.zeros([1, model.image_size, model.image_size, 3]))
    mapping = {slot.key: slot for slot in model.zoo_checkpoint_slots()}
    mapped = {id(slot.variable) for slot in mapping.values()}
    unmapped = [variable.path for variables in model.parts().values() for variable in variables
                if id(variable) not in mapped]
    if unmapped or len(mapped) != len(mapping):
        raise ValueError(f"the TF OD API key map does not cover the model one to one; unmapped: {unmapped[:5]}")
    return mapping


def _part_of_key(key: str, backbone_prefix: str) -> str | None:
    if key.startswith(backbone_prefix):
        return "backbone"
    if key.startswith(EXTRACTOR_PREFIX):
        return "neck"
    if key.startswith(PREDICTOR_PREFIX):
        return "head"
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
    return any(name.startswith(EXTRACTOR_PREFIX) for name, _ in names)


def reads_zoo_checkpoints(model) -> bool:
    """Whether `model` is a family whose variables map onto a zoo checkpoint's keys: it names its
    slots (``zoo_checkpoint_slots()``) and its backbone's key prefix (``ZOO_BACKBONE_PREFIX``)."""
    return hasattr(model, "zoo_checkpoint_slots") and hasattr(model, "ZOO_BACKBONE_PREFIX")


def read_checkpoint_shapes(prefix: str, backbone_prefix: str) -> tuple[tf.train.CheckpointReader,
                                                                        dict[str, tuple[int, ...]]]:
    """The reader and ``{key: shape}`` of the model's variables in a TF2 checkpoint (value suffix
    dropped; optimizer slots, ``save_counter`` and the object graph left out)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (ValueError, tf.errors.OpError) as error:
        raise DetkeeperError(f"cannot read a TF checkpoint at {prefix!r} (expected a prefix such as "
                             f".../checkpoint/ckpt-0): {error}") from error
    shapes = {}
    for key, shape in reader.get_variable_to_shape_map().items():
        if key.endswith(VALUE_SUFFIX) and ".OPTIMIZER_SLOT" not in key and _part_of_key(key, backbone_prefix):
            shapes[key[: -len(VALUE_SUFFIX)]] = tuple(shape)
    return reader, shapes


def restore_zoo_checkpoint(model, prefix: str, include: Iterable[str] = PARTS,
                           fresh_class_head: bool = False) -> list[ZooVariable]:
    """Assign the zoo checkpoint at `prefix` to `model`'s variables in the `include` parts.

    Every key of an included part must exist on both sides with the same shape, or nothing is
    assigned and a ``DetkeeperError`` names the first mismatching keys and shapes (a checkpoint of
    another architecture, another number of classes, other widths). Keys under the family's
    ``ZOO_UNUSED_PREFIXES`` (layers the API builds and never runs, such as EfficientNet's
    classifier) have no variable and are passed over. With `fresh_class_head`, the
    class output's variables that do not fit (another number of classes) keep their
    initialisation (the prior bias) instead. Returns every model variable's outcome.
    """
    include = tuple(include)
    unknown = [part for part in include if part not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; expected some of {PARTS}")
    reader, checkpoint_shapes = read_checkpoint_shapes(prefix, model.ZOO_BACKBONE_PREFIX)
    mapping = zoo_variable_map(model)

    mismatches, outcomes = [], []
    for key, slot in mapping.items():
        part, variable = slot.part, slot.variable
        shape, found = tuple(variable.shape), checkpoint_shapes.get(key)
        if part not in include:
            status = "not_included"
        elif found == shape:
            status = "restored"
        elif fresh_class_head and slot.class_output and found is not None:
            status = "skipped_for_shape"
        else:
            status = "mismatch"
            stored = "has no such key" if found is None else list(found)
            mismatches.append(f"{key}: checkpoint {stored}, model {list(shape)}")
        outcomes.append(ZooVariable(key, variable.path, part, status, shape, found))
    unused = getattr(model, "ZOO_UNUSED_PREFIXES", ())  # what the API stores but never computes with
    for key, found in checkpoint_shapes.items():
        part = _part_of_key(key, model.ZOO_BACKBONE_PREFIX)
        if key not in mapping and part in include and not key.startswith(unused):
            mismatches.append(f"{key}: checkpoint {list(found)}, not in the model")
    if mismatches:
        raise DetkeeperError(
            f"the checkpoint {prefix!r} does not fit model {model.name!r} ({type(model).__name__}, "
            f"{model.num_classes} classes, parts {', '.join(include)}): {len(mismatches)} keys differ; "
            f"first: {'; '.join(mismatches[:FIRST_MISMATCHES])}")

    for outcome in outcomes:
        if outcome.status == "restored":
            mapping[outcome.key].variable.assign(reader.get_tensor(outcome.key + VALUE_SUFFIX))
    return outcomes
