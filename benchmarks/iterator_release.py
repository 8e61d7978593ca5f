"""What dropping a tf.data iterator costs, with tf.data's autotuning on and off.

With autotuning on, each iterator has a thread that re-optimises the pipeline at a period doubling
from 10 ms up to 60 s, and the iterator's destructor waits for that thread to end. In TensorFlow
2.21 the destructor sometimes fails to wake it and waits for its next round: up to as long as the
iterator lived, 60 s at most. The test suite caught its workers there for 20-60 s at a time;
detkeeper's datasets now run with autotuning off (detkeeper/data/dataset_options.py). In one
process per setting, this script times:

  1. detkeeper's training pipeline on the BCCD train split: iterators each used for a short while
     and dropped, the images/s they made (after each one's first batch) and how long each drop
     blocked;
  2. evaluation passes over the val split: a pass's time and each drop;
  3. a minimal pipeline (``range`` -> ``map(numpy_function)`` -> ``batch`` -> ``prefetch``) used
     the same way as (1), where the missed wake shows up often enough to count on one machine.

Usage: .venv/bin/python benchmarks/iterator_release.py [--bccd ../shared/data/bccd/BCCD]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

IMAGE_SIZE = 448
BATCH = 8
#: Iterators made of each kind, each used this long (after its first batch) and then dropped:
#: the missed wake happens to some iterators, not all, so many are made.
ITERATORS, LIFETIME = 40, 0.7
#: Evaluation passes over the val split, each iterator dropped at the end of its pass.
PASSES = 20
#: A drop that blocks longer than this waited for the autotuning thread.
STALL = 0.5


def measure(bccd: str, autotune: bool) -> dict:
    """Runs in a process of its own, so each setting starts from a fresh TensorFlow runtime."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    from detkeeper.config.schema import DataConfig, SourceConfig
    from detkeeper.data.pipeline import Augmentation, evaluation_dataset, training_dataset
    from detkeeper.data.sources import DataSources

    def tuned(dataset):
        options = tf.data.Options()
        options.autotune.enabled = autotune
        return dataset.with_options(options)

    sources = DataSources(DataConfig(train=SourceConfig(format="voc", path=bccd, split="train"),
                                     val=SourceConfig(format="voc", path=bccd, split="val")))
    train, val = sources.prepare("train"), sources.prepare("val")

    def training():
        return training_dataset(train.records, train.label_map, image_size=IMAGE_SIZE, batch_size=BATCH,
                                max_boxes=100, augmentation=Augmentation(), seed=0)

    def minimal():
        return (tf.data.Dataset.range(1 << 62)
                .map(lambda index: tf.numpy_function(np.negative, [index], tf.int64),
                     num_parallel_calls=tf.data.AUTOTUNE)
                .batch(4)
                .prefetch(tf.data.AUTOTUNE))

    results = {}
    for name, make in (("training", training), ("minimal", minimal)):
        drops, batches, busy = [], 0, 0.0
        for _ in range(ITERATORS):
            iterator = iter(tuned(make()))
            next(iterator)
            start = time.perf_counter()
            while time.perf_counter() - start < LIFETIME:
                next(iterator)
                batches += 1
            busy += time.perf_counter() - start
            holder = [iterator]
            del iterator
            drops.append(_drop(holder))
        results[name] = {"drops": drops, "rate": batches * BATCH / busy}

    drops, passes = [], []
    for _ in range(PASSES):
        start = time.perf_counter()
        iterator = iter(tuned(evaluation_dataset(val.records, val.label_map, image_size=IMAGE_SIZE,
                                                 batch_size=BATCH, max_boxes=100)))
        for _batch in iterator:
            pass
        passes.append(time.perf_counter() - start)
        holder = [iterator]
        del iterator
        drops.append(_drop(holder))
    results["evaluation"] = {"drops": drops, "pass": sum(passes) / len(passes)}
    return results


def _drop(holder: list) -> float:
    """Seconds taken to drop the iterator `holder` holds, its last reference."""
    start = time.perf_counter()
    holder.clear()
    gc.collect()
    return time.perf_counter() - start


def _row(setting: str, kind: str, drops: list[float], speed: str) -> str:
    drops = sorted(drops)
    return (f"| {setting} | {kind} | {speed} | {len(drops)} | {drops[len(drops) // 2]:.2f} s | {drops[-1]:.2f} s "
            f"| {sum(seconds > STALL for seconds in drops)} | {sum(drops):.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_bccd = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "BCCD"
    parser.add_argument("--bccd", default=str(default_bccd))
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.bccd, args.child == "on")))
        return
    results = {}
    for setting in ("on", "off"):
        output = subprocess.run([sys.executable, __file__, "--bccd", args.bccd, "--child", setting],
                                check=True, capture_output=True, text=True).stdout
        results[setting] = json.loads(output.splitlines()[-1])
    print(f"BCCD at {IMAGE_SIZE} px, batch {BATCH}; {ITERATORS} iterators of each pipeline used {LIFETIME} s each, "
          f"{PASSES} evaluation passes over val; {os.cpu_count()} CPU cores\n")
    print(f"| tf.data autotune | pipeline | speed | iterators dropped | drop: median | longest "
          f"| drops over {STALL} s | seconds blocked in all |\n|---|---|---|---|---|---|---|---|")
    for setting, result in results.items():
        print(_row(setting, "training", result["training"]["drops"], f"{result['training']['rate']:.1f} images/s"))
        print(_row(setting, "evaluation", result["evaluation"]["drops"], f"{result['evaluation']['pass']:.2f} s a pass"))
        print(_row(setting, "minimal", result["minimal"]["drops"], ""))
    on, off = results["on"], results["off"]
    print(f"\ntraining images/s off / on: {off['training']['rate'] / on['training']['rate']:.2f}")


if __name__ == "__main__":
    main()
