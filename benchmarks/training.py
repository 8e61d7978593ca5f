"""What does keeping the best model cost? `detkeeper train` against a bare training loop.

In one run, on the same model, data and steps:
  1. a bare loop: one `tf.function` step (GradientTape over the model's own loss) fed by
     detkeeper's tf.data pipeline, no evaluation, no checkpoints;
  2. `detkeeper train` with COCO evaluation and best-k checkpointing every `--every` steps.
Prints training images/s of both, their ratio, the ratio with evaluation time left out (the
cost of the machinery itself: callbacks, logging, saving), and the share of wall time training
was blocked saving checkpoints. `train`'s time includes tracing its training step (`fit` traces
on the first step); the bare loop is timed without and with its own first, tracing step.

Usage: .venv/bin/python benchmarks/training.py [--preset demo] [--steps 300] [--every 100]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from detkeeper.config import load_config  # noqa: E402
from detkeeper.data.pipeline import Augmentation, training_dataset  # noqa: E402
from detkeeper.data.sources import DataSources  # noqa: E402
from detkeeper.models import build_model  # noqa: E402
from detkeeper.models.detector import fit_inputs  # noqa: E402
from detkeeper.training.optimizers import build_optimizer  # noqa: E402
from detkeeper.training.trainer import train  # noqa: E402


def bare_loop(config, steps: int) -> tuple[float, float]:
    """Seconds for the first (tracing) step of a plain tf.function loop, and for `steps` more."""
    sources = DataSources(config.data)
    split = sources.prepare("train")
    keras.utils.set_random_seed(config.train.seed)
    model = build_model(config.model, sources.label_map.num_classes)
    optimizer = build_optimizer(config.train)
    data = training_dataset(split.records, sources.label_map, image_size=config.model.image_size,
                            batch_size=config.train.batch_size, max_boxes=config.data.max_boxes,
                            augmentation=Augmentation.from_config(config.data.augment), seed=0).map(fit_inputs)

    @tf.function
    def step(images, targets):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(images, targets, model(images, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    batches = iter(data)
    started = time.perf_counter()
    float(step(*next(batches)))  # traces
    tracing = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        loss = step(*next(batches))
    float(loss)
    return tracing, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [f"run_dir={scratch}/run", f"train.steps={args.steps}", f"evaluation.every_steps={args.every}",
                     "early_stopping.enabled=false", f"train.schedule.warmup_steps={min(50, args.steps)}"]
        config = load_config(args.preset, overrides)
        batch = config.train.batch_size
        tracing, bare = bare_loop(config, args.steps)
        result = train(config)

    images = args.steps * batch
    evaluation, saving = sum(result.evaluation_seconds), sum(result.save_seconds)
    without_evaluation = result.fit_seconds - evaluation
    print(f"preset {args.preset}: {config.model.name} at {config.model.image_size} px, batch {batch}, "
          f"{args.steps} steps, evaluation + checkpoint every {args.every} "
          f"({len(result.evaluation_seconds)} evaluations of {len(DataSources(config.data).prepare('val').records)} "
          f"images, {len(result.save_seconds)} saves)")
    print(f"{'':34s}{'seconds':>9s}{'images/s':>10s}")
    print(f"{'bare tf.function loop':34s}{bare:9.1f}{images / bare:10.1f}")
    traced = bare + tracing
    traced_rate = (images + batch) / traced
    print(f"{'bare loop + its tracing step':34s}{traced:9.1f}{traced_rate:10.1f}")
    print(f"{'detkeeper train (all included)':34s}{result.fit_seconds:9.1f}{images / result.fit_seconds:10.1f}")
    print(f"{'detkeeper train minus evaluation':34s}{without_evaluation:9.1f}{images / without_evaluation:10.1f}")
    print(f"train/bare throughput ratio: {bare / result.fit_seconds:.2f} all included, "
          f"{bare / without_evaluation:.2f} without evaluation (1.00 = no overhead); `train` includes "
          f"tracing its step, so against the bare loop with its tracing step ({tracing:.1f} s): "
          f"{images / result.fit_seconds / traced_rate:.2f} and {images / without_evaluation / traced_rate:.2f}")
    print(f"evaluation: {evaluation:.1f} s ({100 * evaluation / result.fit_seconds:.1f}% of wall time)")
    print(f"blocked saving checkpoints: {saving:.2f} s in {len(result.save_seconds)} saves, "
          f"{saving / max(len(result.save_seconds), 1):.2f} s each ({100 * saving / result.fit_seconds:.1f}% of wall time)")


if __name__ == "__main__":
    main()
