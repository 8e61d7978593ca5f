"""``train_config``, the input readers and ``eval_config`` of a pipeline.config as detkeeper keys.

Part of :mod:`detkeeper.tfod.importer`; the model section is in
:mod:`detkeeper.tfod.mapping`, the bookkeeping (`Node`, `Tracker`) in :mod:`detkeeper.tfod.tracking`.
"""

from __future__ import annotations

from typing import Any

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DataError
from detkeeper.run.sources import is_detkeeper_model
from detkeeper.tfod.mapping import EVALUATE_EVERY
from detkeeper.tfod.tracking import Node
from detkeeper.tfod.zoo_families import ZOO_SSD_FAMILY_NAMES
from detkeeper.tfod.augmentation import map_augmentation

DEFAULT_STEPS = 2000  # detkeeper's train.steps default, for a pipeline that trains forever
MAX_BOUNDARIES = 1000
_OPTIMIZERS = ("momentum_optimizer", "adam_optimizer", "rms_prop_optimizer")
# fine_tune_checkpoint_type -> model.init_from.include, as the API's SSDMetaArch.restore_from_objects
# restores: classification the backbone, detection the whole feature extractor (backbone and FPN),
# full everything (here: the head where its shapes fit).
_INCLUDE = {"classification": "backbone", "fine_tune": "backbone+neck", "detection": "backbone+neck", "full": "all"}
_ZOO_INCLUDE_WHY = {
    "classification": ("the backbone, read from a zoo detection checkpoint (the API's classification "
                       "checkpoints have another layout, which detkeeper does not read)"),
    "fine_tune": "the feature extractor: backbone and FPN, as the API restores it",
    "detection": "the feature extractor: backbone and FPN, as the API restores it",
    "full": "everything; a class output for another number of classes starts fresh from its prior bias",
}


def map_train(config: Node, model: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """``train_config`` -> (the ``train`` section, ``data.augment``, ``data.max_boxes``); sets the
    backbone weights or ``model.init_from`` from the fine-tune checkpoint."""
    track = config.tracker
    batch = config.integer("batch_size", 32)
    track.map(config.at("batch_size"), "train.batch_size", batch,
              "" if config.has("batch_size") else "the TF OD API's default")
    optimizer = config.child("optimizer")
    if optimizer is None:
        raise track.error(config.path, "no optimizer { ... }")
    steps = config.integer("num_steps", 0)
    if steps:
        track.map(config.at("num_steps"), "train.steps", steps)
    else:
        steps = _cosine_total(optimizer) or DEFAULT_STEPS
        track.map(config.at("num_steps"), "train.steps", steps,
                  "the pipeline trains until stopped (num_steps 0); detkeeper needs an end: "
                  + ("the cosine schedule's total_steps" if _cosine_total(optimizer) else "its default"))
    train: dict[str, Any] = {"batch_size": batch, "steps": steps}
    train["optimizer"], train["schedule"], train["ema_decay"] = _optimizer(optimizer, steps)
    clip = config.number("gradient_clipping_by_norm", 0.0)
    train["optimizer"]["clipnorm"] = clip if clip > 0 else None
    track.map(config.at("gradient_clipping_by_norm"), "train.optimizer.clipnorm", train["optimizer"]["clipnorm"],
              "global norm, as model_lib_v2 clips" if clip > 0 else "no clipping, as the pipeline")
    _fine_tune(config, model)
    augment = map_augmentation(config.children("data_augmentation_options"), config, model["image_size"])
    max_boxes = config.integer("max_number_of_boxes")
    if max_boxes is not None:
        track.map(config.at("max_number_of_boxes"), "data.max_boxes", max_boxes)
    return train, augment, max_boxes


def _cosine_total(optimizer: Node) -> int | None:
    for kind in _OPTIMIZERS:
        for value in optimizer.message.get(kind, []):
            rates = value.get("learning_rate", []) if isinstance(value, dict) else []
            for rate in rates:
                for cosine in rate.get("cosine_decay_learning_rate", []) if isinstance(rate, dict) else []:
                    total = cosine.get("total_steps", [4000000]) if isinstance(cosine, dict) else []
                    if len(total) == 1 and isinstance(total[0], int) and total[0] > 0:
                        return total[0]
    return None


def _optimizer(node: Node, steps: int) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    track = node.tracker
    kinds = [kind for kind in _OPTIMIZERS if node.has(kind)]
    if len(kinds) != 1:
        raise track.error(node.path, f"expected one of {', '.join(_OPTIMIZERS)}, found {', '.join(kinds) or 'none'}")
    kind = kinds[0]
    inner = node.child(kind)
    if kind == "momentum_optimizer":
        settings = {"name": "sgd", "momentum": inner.number("momentum_optimizer_value", 0.9)}
        track.map(node.at(kind), "train.optimizer.name", "sgd", "SGD with momentum, no Nesterov, as the API's")
        track.map(inner.at("momentum_optimizer_value"), "train.optimizer.momentum", settings["momentum"])
    elif kind == "adam_optimizer":
        settings = {"name": "adam"}
        track.map(node.at(kind), "train.optimizer.name", "adam")
        epsilon = inner.peek("epsilon")
        if isinstance(epsilon, float) and abs(epsilon - 1e-7) < 1e-12:
            inner.use("epsilon")
            track.map(inner.at("epsilon"), "(optimizer)", epsilon, "Keras' default, which detkeeper's Adam uses")
        else:
            inner.note("epsilon", "detkeeper's Adam uses Keras' epsilon 1e-7")
    else:
        settings = {"name": "adam"}
        track.map(node.at(kind), "train.optimizer.name", "adam",
                  "approximation: detkeeper has no RMSProp; Adam is RMSProp's scaling plus momentum")
        for name in ("momentum_optimizer_value", "decay", "epsilon"):
            inner.note(name, "an RMSProp setting; detkeeper has no RMSProp (the optimizer became adam)")
    rate_node = inner.child("learning_rate")
    if rate_node is None:
        raise track.error(inner.path, "no learning_rate { ... }")
    settings["learning_rate"], schedule = _learning_rate(rate_node, steps)
    use_average = node.flag("use_moving_average", True)
    decay = node.number("moving_average_decay", 0.9999) if use_average else None
    if not use_average:
        node.note("moving_average_decay", "unused: use_moving_average is false")
    track.map(node.at("use_moving_average"), "train.ema_decay", decay,
              ("" if node.has("use_moving_average") else "the API's default is use_moving_average: true; ")
              + ("evaluation and export use the averaged weights" if decay else "no weight averaging"))
    return settings, schedule, decay


def _learning_rate(node: Node, steps: int) -> tuple[float, dict[str, Any]]:
    track = node.tracker
    kind, rate = node.oneof("learning rate schedule")
    if kind == "constant_learning_rate":
        value = rate.number("learning_rate", 0.002)
        track.map(rate.at("learning_rate"), "train.optimizer.learning_rate", value, "schedule constant, no warmup")
        return value, {"name": "constant", "warmup_steps": 0}
    if kind == "cosine_decay_learning_rate":
        return _cosine(rate, steps)
    if kind == "exponential_decay_learning_rate":
        return _exponential(rate, steps)
    if kind == "manual_step_learning_rate":
        return _manual(rate)
    raise track.error(node.at(kind), "detkeeper maps constant, cosine_decay, exponential_decay and "
                                     f"manual_step learning rates, not {kind}")


def _cosine(rate: Node, steps: int) -> tuple[float, dict[str, Any]]:
    track = rate.tracker
    base = rate.number("learning_rate_base", 0.002)
    warmup = rate.integer("warmup_steps", 10000)
    used = min(warmup, steps)
    track.map(rate.at("learning_rate_base"), "train.optimizer.learning_rate", base, "schedule cosine")
    track.map(rate.at("warmup_steps"), "train.schedule.warmup_steps", used,
              "linear from 0" + (f"; cut from {warmup} to the {steps} training steps" if used != warmup else ""))
    total = rate.peek("total_steps")
    total = 4000000 if total is None else total
    if total == steps:
        rate.use("total_steps")
        track.map(rate.at("total_steps"), "train.steps", total, "detkeeper's cosine reaches 0 at train.steps")
    else:
        rate.note("total_steps", f"detkeeper's cosine reaches 0 at train.steps ({steps}), not at step {total}")
    if rate.peek("warmup_learning_rate") == 0:
        rate.use("warmup_learning_rate")
    else:
        rate.note("warmup_learning_rate", "detkeeper's warmup starts from 0")
    if rate.peek("hold_base_rate_steps") in (0, None):
        rate.use("hold_base_rate_steps")
    else:
        rate.note("hold_base_rate_steps", "detkeeper's cosine starts right after the warmup")
    return base, {"name": "cosine", "warmup_steps": used}


def _exponential(rate: Node, steps: int) -> tuple[float, dict[str, Any]]:
    track = rate.tracker
    initial = rate.number("initial_learning_rate", 0.002)
    every = rate.integer("decay_steps", 4000000)
    factor = rate.number("decay_factor", 0.95)
    if every < 1:
        raise track.error(rate.at("decay_steps"), f"expected a positive number of steps, got {every}")
    if rate.flag("staircase", True):
        comment = "staircase, as the pipeline"
    else:
        comment = "approximation: detkeeper decays at each multiple of decay_steps (staircase)"
    boundaries = list(range(every, steps, every))
    if len(boundaries) > MAX_BOUNDARIES:
        raise track.error(rate.path, f"decaying every {every} of {steps} steps needs {len(boundaries)} boundaries; "
                                     "detkeeper's step schedule takes at most 1000: use a cosine schedule instead")
    for name in ("burnin_learning_rate", "burnin_steps", "min_learning_rate"):
        if rate.peek(name) in (0, 0.0):
            rate.use(name)
        else:
            rate.note(name, "detkeeper's step schedule has no burn-in or floor")
    track.map(rate.at("initial_learning_rate"), "train.optimizer.learning_rate", initial)
    if not boundaries:
        track.map(rate.at("decay_steps"), "train.schedule.name", "constant",
                  f"the first decay (step {every}) comes after training ends")
        return initial, {"name": "constant", "warmup_steps": 0}
    track.map(rate.at("decay_steps"), "train.schedule.decay_steps", boundaries, comment)
    track.map(rate.at("decay_factor"), "train.schedule.decay_rate", factor)
    return initial, {"name": "step", "warmup_steps": 0, "decay_rate": factor, "decay_steps": boundaries}


def _manual(rate: Node) -> tuple[float, dict[str, Any]]:
    track = rate.tracker
    initial = rate.number("initial_learning_rate", 0.002)
    points = [(entry.integer("step", 0), entry.number("learning_rate", 0.002), entry)
              for entry in rate.children("schedule")]
    warmup = rate.flag("warmup", False)
    if warmup and points:
        (warmup_steps, peak, _), rest = points[0], points[1:]
        rate.note("initial_learning_rate", "detkeeper's warmup starts from 0")
        track.map(rate.at("schedule", 0), "train.schedule.warmup_steps", warmup_steps,
                  f"warmup to {peak}, linear from 0")
    else:
        warmup_steps, peak, rest = 0, initial, points
        track.map(rate.at("initial_learning_rate"), "train.optimizer.learning_rate", initial)
    if not rest:
        return peak, {"name": "constant", "warmup_steps": warmup_steps}
    factor = rest[0][1] / peak if peak else 0.0
    previous = peak
    for step, value, entry in rest:
        ratio = value / previous if previous else 0.0
        previous = value
        if abs(ratio - factor) > 1e-3 * abs(factor):
            entry.tracker.notes[entry.path] = (f"detkeeper multiplies the rate by one decay_rate ({factor:g}) "
                                               f"at each step; this entry's {value:g} is not reproduced")
    track.map(rate.at("schedule"), "train.schedule.decay_steps", [step for step, _, _ in rest],
              f"decay_rate {factor:g} at each")
    return peak, {"name": "step", "warmup_steps": warmup_steps, "decay_rate": round(factor, 9),
                  "decay_steps": [step for step, _, _ in rest]}


def _fine_tune(config: Node, model: dict[str, Any]) -> None:
    track = config.tracker
    checkpoint = config.text("fine_tune_checkpoint", "")
    kind = config.text("fine_tune_checkpoint_type", "")
    if not kind:
        kind = "detection" if config.flag("from_detection_checkpoint", False) else "classification"
    if not checkpoint:
        track.map(config.at("fine_tune_checkpoint"), "model.backbone.weights", "none",
                  "no fine_tune_checkpoint: random initialisation, as the pipeline")
        config.note("fine_tune_checkpoint_type", "there is no fine_tune_checkpoint to apply it to")
        return
    if kind not in _INCLUDE:
        raise track.error(config.at("fine_tune_checkpoint_type"),
                          f"expected one of {', '.join(_INCLUDE)}, got {kind!r}")
    zoo_family = model["name"] in ZOO_SSD_FAMILY_NAMES
    if zoo_family or is_detkeeper_model(track.absolute(checkpoint)):
        include = _INCLUDE[kind]
        model["init_from"] = {"path": track.path_for_yaml(checkpoint), "include": include}
        track.map(config.at("fine_tune_checkpoint"), "model.init_from.path", model["init_from"]["path"],
                  f"a TF OD API checkpoint, read by the API's own variable names into {model['name']}"
                  if zoo_family else "a detkeeper run, checkpoint or export")
        track.map(config.at("fine_tune_checkpoint_type"), "model.init_from.include", include,
                  _ZOO_INCLUDE_WHY[kind] if zoo_family else "")
        if zoo_family and config.peek("fine_tune_checkpoint_version") in (None, "V2"):
            config.text("fine_tune_checkpoint_version")
            track.map(config.at("fine_tune_checkpoint_version"), "(model.init_from)", "V2",
                      "a TF2 checkpoint (tf.train.Checkpoint), the layout model.init_from reads")
        return
    backbone = model["backbone"]["name"]
    model["backbone"]["weights"] = "imagenet"
    why = (f"a TF OD API checkpoint: its variables are named after the API's Keras models "
           f"(e.g. 'model/_feature_extractor/...'), which detkeeper's do not match, so it is not read; "
           f"the backbone starts from Keras' ImageNet weights for {backbone} instead (model.backbone.weights)")
    if kind == "classification":
        config.note("fine_tune_checkpoint", why)
        track.map(config.at("fine_tune_checkpoint_type"), "model.backbone.weights", "imagenet",
                  "a classification checkpoint is an ImageNet backbone; Keras' ImageNet weights stand in for it")
    else:
        config.note("fine_tune_checkpoint", why + "; the detector's trained neck and heads are not carried. "
                                                  "To fine-tune from a detkeeper run set model.init_from.path")
        config.note("fine_tune_checkpoint_type", "goes with fine_tune_checkpoint, which is not read")


def map_inputs(top: Node, num_classes: int | None) -> dict[str, Any]:
    """The input readers -> ``data.train``, ``data.val`` and ``data.label_map``."""
    track = top.tracker
    data: dict[str, Any] = {}
    label_maps: list[tuple[Node, str]] = []
    readers = [(reader, "train") for reader in top.children("train_input_reader")[:1]]
    readers += [(reader, "val") for reader in top.children("eval_input_reader")[:1]]
    for extra in top.children("eval_input_reader")[1:]:
        track.notes[extra.path] = ("detkeeper evaluates one split while training (data.val); score others "
                                   "with `detkeeper evaluate RUN --data PATH`")
    for reader, split in readers:
        source = _reader(reader, split)
        if source is not None:
            data[split] = source
        if reader.peek("label_map_path") is not None:
            label_maps.append((reader, reader.text("label_map_path")))
    if label_maps:
        first_reader, first = label_maps[0]
        data["label_map"] = track.path_for_yaml(first)
        track.map(first_reader.at("label_map_path"), "data.label_map", data["label_map"],
                  "label_map.pbtxt is read as the API reads it")
        for reader, other in label_maps[1:]:
            if track.absolute(other) != track.absolute(first):
                reader.note("label_map_path", "detkeeper uses one label map for every split (data.label_map)")
        _check_classes(track, data["label_map"], num_classes)
    return data


def _reader(reader: Node, split: str) -> dict[str, Any] | None:
    track = reader.tracker
    records = reader.child("tf_record_input_reader")
    if records is None:
        for name in reader.names():
            if name.endswith("input_reader"):
                reader.note(name, f"detkeeper reads TFRecords, VOC and COCO JSON; set data.{split} yourself")
        return None
    paths = records.strings("input_path")
    if not paths:
        raise track.error(records.path, "no input_path")
    for index, path in enumerate(paths):
        if "," in path:
            raise track.error(records.at("input_path", index), f"{path!r} holds a comma, which detkeeper "
                                                               "reads as a separator of patterns")
    written = ",".join(track.path_for_yaml(path) for path in paths)
    track.map(records.at("input_path"), f"data.{split}.path", written,
              "format tfrecord: the API's tf.train.Example keys; globs and sharded names as the API's")
    if split == "val":
        for name, same in (("shuffle", False), ("num_epochs", 1)):
            if reader.peek(name) == same:
                reader.use(name)
                track.map(reader.at(name), "(evaluation)", same, "detkeeper evaluates each image once, in order")
    elif reader.peek("shuffle") in (True, None):
        reader.use("shuffle")
    return {"format": "tfrecord", "path": written}


def _check_classes(track, label_map: str, num_classes: int | None) -> None:
    """num_classes against the label map (when it can be read yet)."""

    path = track.out_dir / label_map
    where = track.num_classes_path
    if not path.is_file():
        track.map(where, "(classes)", num_classes, "taken from data.label_map, which does not exist yet: not checked")
        return
    try:
        classes = LabelMap.read(path)
    except DataError as error:
        track.map(where, "(classes)", num_classes, f"taken from data.label_map, which cannot be read: {error}")
        return
    count, top_id = classes.num_classes, max(classes.ids)
    if num_classes in (count, top_id):
        track.map(where, "(classes)", num_classes, f"the label map has {count} classes (ids up to {top_id}); "
                                                   "the model is built for them")
    else:
        track.notes[where] = (f"detkeeper builds the model for the label map's {count} classes (ids up to "
                              f"{top_id}), not for {num_classes}")


def map_evaluation(top: Node, model_evaluation: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """``eval_config`` and the model's post-processing -> the ``evaluation`` section."""
    track = top.tracker
    evaluation = {"every_steps": min(EVALUATE_EVERY, train["steps"]), **model_evaluation}
    track.map("model_main_tf2 --checkpoint_every_n", "evaluation.every_steps", evaluation["every_steps"],
              "its evaluator scores each checkpoint written, every 1000 steps by default; detkeeper evaluates "
              "while training and keeps the best checkpoints by val_mAP")
    config = top.child("eval_config")
    if config is None:
        return evaluation
    metrics = config.message.get("metrics_set", [])
    if metrics and all(value == "coco_detection_metrics" for value in metrics):
        config.use("metrics_set")
        track.map(config.at("metrics_set"), "evaluation.monitor", "val_mAP", "COCO detection metrics, as the API's")
    else:
        config.note("metrics_set", "detkeeper computes the COCO detection metrics (val_mAP, val_mAP50, ...)")
    averages = config.peek("use_moving_averages")
    if averages is not None and bool(averages) == (train["ema_decay"] is not None):
        config.use("use_moving_averages")
        track.map(config.at("use_moving_averages"), "train.ema_decay", train["ema_decay"],
                  "detkeeper evaluates the averaged weights whenever it keeps them")
    else:
        config.note("use_moving_averages", "detkeeper evaluates the averaged weights exactly when "
                                           "train.ema_decay is set")
    return evaluation
