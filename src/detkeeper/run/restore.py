"""Restoring a kept checkpoint of a run into the detector its config describes.

Only the model (and the EMA averages when the run kept them, which training evaluated) is read
from a checkpoint: TF matches it through the checkpoint's object graph, so the optimizer's copy of
the weights and the early-stopping state are not needed, and every model variable must be found.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DetkeeperError
from detkeeper.models.ema import WeightAverage
from detkeeper.models.precision import mixed_precision
from detkeeper.models.registry import Postprocess, build_model
from detkeeper.run.checkpoints import checkpoint_entry
from detkeeper.run.layout import RunDirectory
from detkeeper.run.sources import run_config


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


def restore_run_checkpoint(run: RunDirectory, which: str = "best", *, keep_split: str | None = None
                           ) -> RestoredCheckpoint:
    """The run's detector with the weights of checkpoint `which` (sha256-verified first)."""
    config = run_config(run, keep_split)
    label_map = LabelMap.read(run.label_map_path)
    store, entry = checkpoint_entry(run, which)
    model = restore_model(config, label_map, store.path_of(entry), entry.ema)
    return RestoredCheckpoint(run=run, config=config, label_map=label_map, entry=entry, model=model)


def build_run_model(config, num_classes: int):
    """The detector `config` describes, built (variables created) as training built it."""
    with mixed_precision(config.train.mixed_precision):  # layers take the policy when built: as training did
        model = build_model(config.model, num_classes, Postprocess.from_config(config.evaluation))
    size = config.model.image_size
    model(tf.zeros([1, size, size, 3]), training=False)  # create the variables a checkpoint fills
    return model


def restore_model(config, label_map: LabelMap, checkpoint_path: str, ema: bool):
    """The run's detector with the checkpoint's weights (its EMA averages when it kept them)."""
    model = build_run_model(config, label_map.num_classes)
    objects = {"model": model}
    if ema:
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
