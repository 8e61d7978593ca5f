"""How fast does each preset (and each small registry model) train, compiled vs eager?

For each entry, in one process, at batch 8 on one batch of synthetic random images (uniform
0..255, the entry's image size) with 1-10 random boxes each, padded to the entry's
``data.max_boxes`` as training pads them (100 by default, 10 in the demo preset; target
assignment works on every padded row), held in memory (the input pipeline is measured by
input_pipeline.py):
  1. Keras ``train_on_batch`` with ``run_eagerly=False`` (the step is a ``tf.function``, as in
     ``detkeeper train``): ``--warmup`` steps (the first traces), then ``--steps`` timed steps;
  2. the same model recompiled with ``run_eagerly=True``: one warm-up step, then
     ``--eager-steps`` timed steps.
Each step's wall time is taken around ``train_on_batch`` (which returns the losses as numbers, so
the step has finished); the table gives the median. Weights are random (``weights: none``) so
nothing is downloaded; the optimizer is the entry's own (``train.optimizer`` and schedule). Op
determinism is enabled as ``detkeeper train`` enables it.

Entries: a preset name (``detkeeper config presets``) uses the preset's model; a registry model
name uses that model with the tiny backbone at ``--model-size`` px and Adam 1e-3.

Usage: .venv/bin/python benchmarks/train_step.py [--presets demo,fcos_tiny] [--steps 10]
           [--eager-steps 3] [--batch 8] [--model-size 256] [--max-boxes 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from detkeeper.config import list_presets, load_config  # noqa: E402
from detkeeper.config.schema import BackboneConfig, ModelConfig, OptimizerConfig, RunConfig, TrainConfig  # noqa: E402
from detkeeper.models import build_model, list_models  # noqa: E402
from detkeeper.training.optimizers import build_optimizer  # noqa: E402

NUM_CLASSES = 4
MAX_REAL_BOXES = 10
SMALL_MODELS = ("retinanet_tiny", "fcos_tiny", "hub_retinanet")
DEFAULT_ENTRIES = ("demo", "mobilenetv2_fpn_320", "resnet50_fpn_640", *SMALL_MODELS)


@dataclasses.dataclass
class Row:
    entry: str
    model: str
    image_size: int
    max_boxes: int
    params: int
    graph_ms: float
    eager_ms: float
    batch: int

    @property
    def images_per_second(self) -> float:
        return 1000.0 * self.batch / self.graph_ms

    @property
    def speedup(self) -> float:
        return self.eager_ms / self.graph_ms


def entry_config(entry: str, model_size: int) -> RunConfig:
    """The run config an entry stands for, with random backbone weights."""
    if entry in list_presets():
        config = load_config(entry)
    elif entry in list_models():
        config = RunConfig(model=ModelConfig(name=entry, image_size=model_size),
                           train=TrainConfig(optimizer=OptimizerConfig(name="adam", learning_rate=1e-3)))
    else:
        raise SystemExit(f"unknown entry {entry!r}: expected a preset ({', '.join(list_presets())}) or a "
                         f"model ({', '.join(list_models())})")
    model = config.model
    backbone = dataclasses.replace(model.backbone, weights="none")
    if entry in list_models():
        backbone = BackboneConfig(name="tiny", weights="none")
    return dataclasses.replace(config, model=dataclasses.replace(model, backbone=backbone))


def synthetic_batch(batch: int, size: int, max_boxes: int, seed: int = 0):
    """Random images and, per image, 1..MAX_REAL_BOXES random boxes, padded with -1 to `max_boxes` rows."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, [batch, size, size, 3]).astype(np.float32)
    corners = rng.uniform(0, size, [batch, max_boxes, 2, 2])
    low, high = corners.min(axis=2), corners.max(axis=2)
    high = np.maximum(high, low + size * 0.05)
    boxes = np.concatenate([low, np.minimum(high, size)], axis=-1).astype(np.float32)  # yx min, yx max
    classes = rng.integers(0, NUM_CLASSES, [batch, max_boxes]).astype(np.int32)
    counts = rng.integers(1, min(MAX_REAL_BOXES, max_boxes) + 1, [batch])
    padding = np.arange(max_boxes)[None, :] >= counts[:, None]
    boxes[padding], classes[padding] = -1.0, -1
    return tf.constant(images), {"boxes": tf.constant(boxes), "classes": tf.constant(classes)}


def step_times(model, images, targets, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        model.train_on_batch(images, targets)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logs = model.train_on_batch(images, targets, return_dict=True)
        times.append(time.perf_counter() - start)
        if not np.isfinite(float(logs["loss"])):
            raise SystemExit(f"non-finite loss {logs['loss']}")
    return times


def measure(entry: str, args) -> Row:
    config = entry_config(entry, args.model_size)
    size = config.model.image_size
    keras.utils.set_random_seed(0)
    model = build_model(config.model, NUM_CLASSES)
    max_boxes = args.max_boxes or config.data.max_boxes
    images, targets = synthetic_batch(args.batch, size, max_boxes)
    model(images[:1], training=False)

    model.compile(optimizer=build_optimizer(config.train), run_eagerly=False)
    graph = step_times(model, images, targets, args.warmup, args.steps)
    model.compile(optimizer=build_optimizer(config.train), run_eagerly=True)
    eager = step_times(model, images, targets, 1, args.eager_steps)
    row = Row(entry, config.model.name, size, max_boxes, model.count_params(), 1000 * statistics.median(graph),
              1000 * statistics.median(eager), args.batch)
    print(f"  {entry}: tf.function {[round(1000 * t) for t in graph]} ms, eager {[round(1000 * t) for t in eager]} ms",
          flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default=",".join(DEFAULT_ENTRIES),
                        help="comma-separated presets and/or registry model names")
    parser.add_argument("--steps", type=int, default=10, help="timed tf.function steps per entry")
    parser.add_argument("--eager-steps", type=int, default=3, help="timed eager steps per entry")
    parser.add_argument("--warmup", type=int, default=2, help="untimed tf.function steps (the first traces)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model-size", type=int, default=256, help="image size for registry model entries")
    parser.add_argument("--max-boxes", type=int, default=None,
                        help="pad targets to this many rows instead of each entry's data.max_boxes")
    args = parser.parse_args()

    tf.config.experimental.enable_op_determinism()
    print(f"batch {args.batch}, {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, "
          f"tensorflow {tf.__version__}, keras {keras.__version__}; median of {args.steps} tf.function / "
          f"{args.eager_steps} eager steps after warm-up", flush=True)
    rows = [measure(entry.strip(), args) for entry in args.presets.split(",") if entry.strip()]
    print()
    print("| preset / model | model | image size | max boxes | params | ms/step tf.function | ms/step eager "
          "| images/s (tf.function) | eager / tf.function |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.entry} | {row.model} | {row.image_size} | {row.max_boxes} | {row.params / 1e6:.2f} M "
              f"| {row.graph_ms:.0f} "
              f"| {row.eager_ms:.0f} | {row.images_per_second:.1f} | {row.speedup:.1f}x |")


if __name__ == "__main__":
    main()
