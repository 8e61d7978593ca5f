"""The fused optimizer updates, BatchNormalization or GroupNormalization against Keras' own: first
step (trace) and step time, in one process.

For each entry (as in train_step.py: a preset, or a registry model with the tiny backbone at
``--model-size`` px), two models with the same initial weights train on the same synthetic batch:
one with the optimizer ``detkeeper train`` builds (``build_optimizer``: Keras' class with each
variable's update one TensorFlow kernel, detkeeper.training.fused_updates), one with Keras' own
class from the same config. With ``--versus batch-norm`` both have detkeeper's optimizer and the
second's BatchNormalization layers take Keras' own training step instead of TensorFlow's fused
kernel (detkeeper.models.batch_norm); with ``--versus group-norm`` its GroupNormalization layers (the
FCOS heads') do (detkeeper.models.group_norm). Measured: the wall time of the first ``train_on_batch`` (tracing,
Grappler and one step; the two models take turns being first, ``--rounds`` times each, fresh
models every round), and the median step time after it, the two models alternating in blocks of 5
steps so drift in the machine's speed falls on both. Ratios are fused / Keras.

Usage: .venv/bin/python benchmarks/fused_updates.py [--entries fcos_tiny,demo,bccd,mobilenetv2_fpn_320]
           [--model-size 128] [--steps 30] [--rounds 2] [--versus optimizer|batch-norm|group-norm]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from detkeeper.models import build_model  # noqa: E402
from detkeeper.models import batch_norm, group_norm  # noqa: E402
from detkeeper.training.optimizers import build_optimizer  # noqa: E402
from train_step import NUM_CLASSES, entry_config, synthetic_batch  # noqa: E402

KERAS_CLASSES = (keras.optimizers.AdamW, keras.optimizers.Adam, keras.optimizers.SGD)
FUSED_LAYERS = {"batch-norm": batch_norm.BatchNormalization, "group-norm": group_norm.GroupNormalization}
"""``--versus`` -> the detkeeper layer whose fused training step the baseline model does without."""


def keras_twin(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """Keras' own class with `optimizer`'s configuration (schedule, clipping, decay)."""
    base = next(cls for cls in KERAS_CLASSES if isinstance(optimizer, cls))
    return base.from_config(optimizer.get_config())


def compiled_pair(config, images, versus: str = "optimizer"):
    """(fused, Keras') models with the same weights, each compiled with its optimizer; `versus`
    says what the second takes from Keras: the optimizer's update, or a normalization layer's step."""
    models = []
    for fused in (True, False):
        keras.utils.set_random_seed(0)
        model = build_model(config.model, NUM_CLASSES)
        model(images[:1], training=False)
        optimizer = build_optimizer(config.train)
        if not fused and versus == "optimizer":
            optimizer = keras_twin(optimizer)
        if not fused and versus in FUSED_LAYERS:
            for layer in model._flatten_layers(include_self=False, recursive=True):
                if isinstance(layer, FUSED_LAYERS[versus]):
                    layer._fusable = lambda *args: False  # Keras' own training step, traced below
        model.compile(optimizer=optimizer)
        model.optimizer.build(model.trainable_variables)  # as the trainer does: one trace, not two
        models.append(model)
    return models


def timed_step(model, images, targets) -> float:
    started = time.perf_counter()
    model.train_on_batch(images, targets)
    return time.perf_counter() - started


def measure(entry: str, args) -> dict:
    config = entry_config(entry, args.model_size)
    images, targets = synthetic_batch(args.batch, config.model.image_size, config.data.max_boxes)
    first = {"fused": [], "keras": []}
    steps = {"fused": [], "keras": []}
    for round_number in range(args.rounds):
        fused, plain = compiled_pair(config, images, args.versus)
        order = [("fused", fused), ("keras", plain)]
        if round_number % 2:
            order.reverse()
        for name, model in order:
            first[name].append(timed_step(model, images, targets))
        for _ in range(args.steps // 5):
            for name, model in order:
                steps[name].extend(timed_step(model, images, targets) for _ in range(5))
    row = {"entry": entry, "optimizer": type(fused.optimizer).__name__,
           **{f"first_{name}": statistics.mean(times) for name, times in first.items()},
           **{f"step_{name}": statistics.median(times) for name, times in steps.items()}}
    print(f"  {entry}: first step {[round(t, 2) for t in first['fused']]} s fused, "
          f"{[round(t, 2) for t in first['keras']]} s Keras", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="fcos_tiny,demo,bccd,mobilenetv2_fpn_320")
    parser.add_argument("--model-size", type=int, default=128, help="image size for registry model entries")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=2, help="fresh model pairs per entry")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--versus", choices=("optimizer", *FUSED_LAYERS), default="optimizer",
                        help="what the baseline model takes from Keras")
    args = parser.parse_args()
    tf.config.experimental.enable_op_determinism()
    print(f"fused against Keras' {args.versus}; batch {args.batch}, {os.cpu_count()} CPU cores, "
          f"tensorflow {tf.__version__}, keras {keras.__version__}", flush=True)
    images, targets = synthetic_batch(2, 64, 10)  # the process's first trace pays one-off costs: in no row
    timed_step(compiled_pair(entry_config("fcos_tiny", 64), images)[0], images, targets)
    rows = [measure(entry.strip(), args) for entry in args.entries.split(",") if entry.strip()]
    print("\n| entry | optimizer | first step fused / Keras (s) | ratio | step fused / Keras (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['entry']} | {row['optimizer']} | {row['first_fused']:.2f} / {row['first_keras']:.2f} "
              f"| {row['first_fused'] / row['first_keras']:.2f} | {1000 * row['step_fused']:.0f} / "
              f"{1000 * row['step_keras']:.0f} | {row['step_fused'] / row['step_keras']:.2f} |")


if __name__ == "__main__":
    main()
