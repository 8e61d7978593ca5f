"""What does an export cost, and how fast does it answer? Export, load and inference, in one run.

  1. Train a small run (the demo preset, constant learning rate, at `--image-size` px for `--steps`
     steps on a generated shapes dataset), unless `--run RUN_DIR` names one;
  2. `export_model(run, tflite=True)`: wall time of the whole export, split into SavedModel save,
     .keras save, verification (a fresh Python process reloads the SavedModel and answers on
     `--verify-images` images) and TFLite (conversion + verification of both models);
  3. `tf.saved_model.load` time, in the verification's fresh process and in this one;
  4. latency per call of the in-memory Keras model (`model.detect` through `tf.function`, on the
     float32 canvases the model takes), of the loaded SavedModel (called on the same canvases as
     uint8 [B, S, S, 3]; its graph also resizes each image and maps boxes back) at batch 1 and 8,
     and of the TFLite models at batch 1 (their only batch) on the same canvases. Each call's
     outputs are read back to NumPy inside the timing. `--warmup` calls first (not timed; the
     first traces), then the median of `--repeats` calls; the models of one batch size take
     turns within each repeat, so load from other processes falls on all alike. Ratios are
     against the Keras model at the same batch size, measured in this run.

Images: the run's validation images through detkeeper's evaluation transform (real content,
so NMS sees real candidates), repeated to fill a batch of 8.

Usage: .venv/bin/python benchmarks/export.py [--run RUN_DIR] [--image-size 256] [--steps 100]
           [--repeats 30] [--warmup 3] [--tflite-threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402

from detkeeper.data.pipeline import evaluation_dataset  # noqa: E402
from detkeeper.data.synthetic import generate_shapes_dataset  # noqa: E402
from detkeeper.evaluation.runner import compiled_detect  # noqa: E402
from detkeeper.export.exporter import _verification_records, _verification_split, export_model  # noqa: E402
from detkeeper.export.tflite import load_interpreter  # noqa: E402
from detkeeper.run.restore import restore_run_checkpoint  # noqa: E402
from detkeeper.run.layout import RunDirectory  # noqa: E402
from detkeeper.training.trainer import train  # noqa: E402


def train_small_run(root: Path, image_size: int, steps: int) -> Path:
    """The demo preset, shortened, on a generated shapes dataset; returns the run directory."""
    shapes = generate_shapes_dataset(root / "shapes", num_train=64, num_val=16, num_test=8, image_size=image_size)
    config = {
        "preset": "demo",
        "run_dir": str(root / "run"),
        "data": {"train": {"format": "voc", "path": str(shapes), "split": "train"},
                 "val": {"format": "voc", "path": str(shapes), "split": "val"}},
        "model": {"image_size": image_size},
        "train": {"batch_size": 8, "steps": steps, "schedule": {"name": "constant", "warmup_steps": 20}},
        "evaluation": {"every_steps": steps},
        "early_stopping": {"enabled": False},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = train(path)
    if result.status != "finished":
        raise SystemExit(f"training did not finish: {result.status}")
    return result.run_dir


def median_ms(calls: list, warmup: int, repeats: int) -> list[float]:
    """Median milliseconds of each call; the calls take turns within every repeat, so a change in
    the machine's load falls on all of them alike."""
    for call in calls:
        for _ in range(warmup):
            call()
    times = [[] for _ in calls]
    for _ in range(repeats):
        for position, call in enumerate(calls):
            started = time.perf_counter()
            call()
            times[position].append(time.perf_counter() - started)
    return [1000.0 * statistics.median(values) for values in times]


def numpy_outputs(outputs) -> dict:
    return {key: np.asarray(value) for key, value in outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", help="an existing run directory (default: train a small one)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--verify-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tflite-threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, load average "
          f"{'/'.join(f'{value:.1f}' for value in os.getloadavg())} at start; tensorflow {tf.__version__}")
    with tempfile.TemporaryDirectory(prefix="detkeeper-export-bench-") as folder:
        root = Path(folder)
        if args.run:
            run_dir = Path(args.run)
        else:
            started = time.perf_counter()
            run_dir = train_small_run(root, args.image_size, args.steps)
            print(f"trained {args.steps} steps at {args.image_size} px in {time.perf_counter() - started:.0f} s")

        started = time.perf_counter()
        result = export_model(run_dir, out=root / "export", verify_images=args.verify_images, tflite=True)
        export_seconds = time.perf_counter() - started
        verification = result.verification
        parts = ", ".join(f"{name} {value:.1f} s" for name, value in result.seconds.items())
        print(f"\nexport + verification: {export_seconds:.1f} s wall ({parts}; the rest: restoring the checkpoint, "
              f"reading images, publishing)")
        print(verification.summary())
        print("\n".join(result.tflite.summary_lines()))

        started = time.perf_counter()
        loaded = tf.saved_model.load(str(result.saved_model_dir))
        load_here = time.perf_counter() - started
        print(f"\nSavedModel load: {verification.load_seconds:.2f} s in the verification's fresh process, "
              f"{load_here:.2f} s in this one (TensorFlow already imported)")

        run = RunDirectory(run_dir)
        split = _verification_split(run)
        restored = restore_run_checkpoint(run, "best", keep_split=split)
        model, label_map = restored.model, restored.label_map
        size = model.image_size
        records = _verification_records(restored.config, run, split, 8)
        canvases = np.concatenate([batch["images"].numpy() for batch in evaluation_dataset(
            records, label_map, image_size=size, batch_size=8, max_boxes=restored.config.data.max_boxes)])
        canvases = np.resize(canvases, (8, size, size, 3)).astype(np.float32)  # repeats images if fewer than 8
        detect = compiled_detect(model)
        rows = []
        for batch in (1, 8):
            floats = tf.constant(canvases[:batch])
            uint8 = tf.constant(np.clip(np.round(canvases[:batch]), 0, 255).astype(np.uint8))
            names = ["Keras model.detect (tf.function)", "SavedModel (loaded object, uint8)"]
            calls = [lambda: numpy_outputs(detect(floats)), lambda: numpy_outputs(loaded(uint8))]
            if batch == 1:  # TFLite models take one image
                for model_result in result.tflite.models:
                    if not model_result.ok:
                        print(f"TFLite {model_result.variant}: {model_result.status}, not timed")
                        continue
                    _, runner = load_interpreter(result.out_dir / "tflite" / model_result.file,
                                                 num_threads=args.tflite_threads)
                    names.append(f"TFLite {model_result.variant} ({args.tflite_threads} threads)")
                    calls.append(lambda runner=runner: runner(images=canvases[:1]))
            timings = median_ms(calls, args.warmup, args.repeats)
            rows += [(name, batch, milliseconds, timings[0]) for name, milliseconds in zip(names, timings)]

        print(f"\nlatency per call, {size} px, median of {args.repeats} after {args.warmup} warm-up calls (the "
              "models of one batch size take turns):")
        print("| model | batch | ms/call | ms/image | vs Keras (same batch) |")
        print("|---|---|---|---|---|")
        for name, batch, milliseconds, baseline in rows:
            print(f"| {name} | {batch} | {milliseconds:.1f} | {milliseconds / batch:.1f} | "
                  f"{milliseconds / baseline:.2f}x |")
        print(f"\nload average at end: {'/'.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
