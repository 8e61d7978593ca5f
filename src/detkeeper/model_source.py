"""Where a model comes from: a run directory, one of its checkpoints, or an export.

Evaluate, export, predict and fine-tuning all take a "model" path; this is the one place that
tells the kinds apart and restores a kept checkpoint into a detector. Only the model (and the
EMA averages when the run kept them, which training evaluated) is read from a checkpoint: TF
matches it through the checkpoint's object graph, so the optimizer's copy of the weights and the
early-stopping state are not needed, and every model variable must be found.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.rundir import RunDirectory

CONFIG_SPLITS = ("train", "val", "test")
SAVED_MODEL_FILE = "saved_model.pb"
EXPORT_SAVED_MODEL = "saved_model"  # the SavedModel's folder inside an export directory
_STEP_FOLDER = re.compile(r"step-(\d+)")


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
    """A run's detector with the weights of one of its kept checkpoints."""

    run: RunDirectory
    config: Any  # RunConfig
    label_map: LabelMap
    entry: Any  # LedgerEntry
    model: Any  # Detector

    @property
    def checkpoint_path(self) -> str:
        return str(self.run.checkpoints_path / self.entry.name / self.entry.prefix)


def find_saved_model(path: str | os.PathLike) -> Path | None:
    """The SavedModel folder `path` names (an export directory, its ``saved_model/`` folder or the
    ``saved_model.pb`` in it), or None when `path` is not a SavedModel."""
    source = Path(path)
    if source.name == SAVED_MODEL_FILE and source.is_file():
        return source.parent
    for folder in (source, source / EXPORT_SAVED_MODEL):
        if (folder / SAVED_MODEL_FILE).is_file():
            return folder
    return None


def resolve_model_source(path: str | os.PathLike, checkpoint: str | int | None = None) -> tuple[RunDirectory, str]:
    """The run directory `path` belongs to and which checkpoint (best/latest/step) it names.

    Exports are told apart first with :func:`find_saved_model`; here they are refused."""
    source = Path(path)
    if find_saved_model(source) is not None:
        raise DetkeeperError(f"{path}: an exported SavedModel, not a run directory or checkpoint; this "
                             "command needs the run it was exported from (its metadata.json names it)")
    folder = source if source.is_dir() else source.parent
    step = _STEP_FOLDER.fullmatch(folder.name)
    if step and folder.is_dir() and (folder.parent / "ledger.json").is_file():
        if checkpoint is not None and str(checkpoint) != str(int(step.group(1))):
            raise DetkeeperError(f"{path} is the checkpoint of step {int(step.group(1))}; --checkpoint "
                                 f"{checkpoint} contradicts it (give a run directory to choose by --checkpoint)")
        return RunDirectory(folder.parent.parent), str(int(step.group(1)))
    if source.is_dir() and (source / "ledger.json").is_file() and not (source / "config.yaml").is_file():
        source = source.parent  # RUN/checkpoints
    if source.is_dir() and (source / "config.yaml").is_file():
        return RunDirectory(source), str(checkpoint) if checkpoint is not None else "best"
    if not source.exists() and not Path(f"{source}.index").is_file():
        raise DetkeeperError(f"{path}: no such run directory, checkpoint or SavedModel")
    raise DetkeeperError(f"{path}: not a run directory (config.yaml inside), a checkpoint of one "
                         "(RUN/checkpoints/step-NNNNNNN/ckpt, listed in its ledger.json) or an exported "
                         f"SavedModel ({SAVED_MODEL_FILE} inside)")


def restore_run_checkpoint(run: RunDirectory, which: str = "best", *, keep_split: str | None = None
                           ) -> RestoredCheckpoint:
    """The run's detector with the weights of checkpoint `which` (sha256-verified first)."""
    config = run_config(run, keep_split)
    label_map = LabelMap.read(run.label_map_path)
    store, entry = checkpoint_entry(run, which)
    model = restore_model(config, label_map, store.path_of(entry), entry.ema)
    return RestoredCheckpoint(run=run, config=config, label_map=label_map, entry=entry, model=model)


def run_config(run: RunDirectory, keep_split: str | None = None):
    """The run's resolved config, without what restoring never reads: the splits other than
    `keep_split` (so a moved training set does not block evaluating the test set) and the backbone's
    initial weights (the checkpoint replaces every weight; no ImageNet download)."""
    from detkeeper.config import load_config

    for needed in (run.config_path, run.label_map_path):
        if not needed.is_file():
            raise DetkeeperError(f"{run.path}: no {needed.name}; is this a run directory that training has "
                                 "started?")
    if keep_split is not None:
        from detkeeper.config.yamlio import parse_yaml

        raw = parse_yaml(run.config_path.read_text(encoding="utf-8"), str(run.config_path))
        data = raw.get("data") if isinstance(raw, dict) else None
        configured = [name for name in CONFIG_SPLITS if isinstance(data, dict) and data.get(name)]
        if keep_split not in configured:
            raise DataError(f"{run.config_path}: the run's config sets no data.{keep_split} (it sets "
                            f"{', '.join(f'data.{name}' for name in configured) or 'no split'}); give --data "
                            "a dataset path to evaluate other data")
    overrides = ["model.backbone.weights=none", "model.init_from=null", "data.label_map=null"]
    overrides += [f"data.{name}=null" for name in CONFIG_SPLITS if name != keep_split]
    return load_config(run.config_path, overrides)


def checkpoint_entry(run: RunDirectory, which: str):
    """The run's checkpoint store and the verified ledger entry `which` names."""
    from detkeeper.training.checkpoints import LEDGER_NAME, CheckpointStore
    from detkeeper.training.ledger import Ledger

    ledger_path = run.checkpoints_path / LEDGER_NAME
    if not ledger_path.is_file():
        raise DetkeeperError(f"{run.path}: no checkpoint ledger at {ledger_path}; has this run trained past "
                             "its first evaluation?")
    store = CheckpointStore(run.checkpoints_path, Ledger.read(ledger_path).policy)
    return store, store.resolve(which)


def build_run_model(config, num_classes: int):
    """The detector `config` describes, built (variables created) as training built it."""
    import keras
    import tensorflow as tf

    from detkeeper.models import build_model
    from detkeeper.models.registry import Postprocess

    evaluation = config.evaluation
    previous = keras.mixed_precision.global_policy()
    if config.train.mixed_precision:  # layers take the policy when built: build as training did
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(config.model, num_classes, Postprocess(
            evaluation.score_threshold, evaluation.iou_threshold, evaluation.max_detections))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    size = config.model.image_size
    model(tf.zeros([1, size, size, 3]), training=False)  # create the variables a checkpoint fills
    return model


def restore_model(config, label_map: LabelMap, checkpoint_path: str, ema: bool):
    """The run's detector with the checkpoint's weights (its EMA averages when it kept them)."""
    import tensorflow as tf

    model = build_run_model(config, label_map.num_classes)
    objects = {"model": model}
    if ema:
        from detkeeper.models.ema import WeightAverage
        objects["ema"] = WeightAverage(model, config.train.ema_decay or 0.5)  # decay unused: only read
    try:
        status = tf.train.Checkpoint(**objects).read(checkpoint_path).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError) as error:  # a variable missing, or one of another shape
        raise DetkeeperError(f"{checkpoint_path}: the checkpoint does not fit the model the run's config "
                             f"describes ({str(error).splitlines()[0][:300]})") from None
    except tf.errors.OpError as error:  # e.g. pruned by a training run since it was verified
        raise DetkeeperError(f"{checkpoint_path}: cannot be read ({error.message})") from None
    except IndexError as error:  # TF's reader on a truncated data file: "Read less bytes than requested"
        raise DetkeeperError(f"{checkpoint_path}: cannot be read, is it truncated? ({error})") from None
    saved = model_variables_in_checkpoint(checkpoint_path)
    if saved != len(model.weights):  # every variable of ours was filled; none of the checkpoint's may be left
        raise DetkeeperError(f"{checkpoint_path}: the checkpoint holds {saved} model variables, the model the "
                             f"run's config describes has {len(model.weights)}: the config or the code of a "
                             "custom layer changed since training")
    if ema:
        objects["ema"].copy_to(model)
    return model


def model_variables_in_checkpoint(path: str, root_name: str = "model") -> int:
    """Variables a checkpoint holds for its ``model``: those reachable from it in the checkpoint's
    object graph, not through the optimizer Keras tracks on a compiled model.

    ``assert_existing_objects_matched`` only proves that each of our variables found a value; a
    model with fewer layers than the one saved (Keras keys layers by position) passes it silently."""
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    root = next((ref.node_id for ref in graph.nodes[0].children if ref.local_name == root_name), None)
    if root is None:
        raise DetkeeperError(f"{path}: the checkpoint holds no {root_name!r} object; is it a detkeeper checkpoint?")
    seen, stack = set(), [root]
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(ref.node_id for ref in graph.nodes[node].children
                         if not (node == root and ref.local_name == "optimizer"))
    return sum(any(attribute.name == "VARIABLE_VALUE" for attribute in graph.nodes[node].attributes)
               for node in seen)
