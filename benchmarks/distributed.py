"""Training images/s with 1 and 2 replicas: the default strategy, and MirroredStrategy over 1 and 2 devices.

Each configuration trains the demo preset (retinanet_tiny, 256 px, global batch 8) through
`detkeeper.train` in its own fresh process (devices must be configured before any TensorFlow op),
with one evaluation at the very end (warmup shortened to a quarter of the steps), so the timed
window holds training steps only. Images/s is
measured from step `--warmup` (tracing excluded) to the last step, from the step times a reporter
records. Devices: the GPUs when there are at least as many as replicas, else logical CPU devices
splitting this machine's CPU (which gives no extra compute: on a CPU the number is for the record).

Usage: .venv/bin/python benchmarks/distributed.py [--steps 80] [--warmup 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIGURATIONS = (("default, 1 device (Keras fit)", "default", 1),
                  ("mirrored, 1 replica (distributed loop)", "mirrored", 1),
                  ("mirrored, 2 replicas", "mirrored", 2))


def child(args) -> None:
    """One training run; prints a JSON line with its timing."""
    import tensorflow as tf

    from detkeeper.training.distribution import use_logical_cpus

    gpus = tf.config.list_physical_devices("GPU")
    if args.strategy == "mirrored":
        if len(gpus) >= args.replicas:
            devices = [f"/gpu:{index}" for index in range(args.replicas)]
        else:
            use_logical_cpus(args.replicas)
            devices = [f"/cpu:{index}" for index in range(args.replicas)]
    from detkeeper.training.progress import Reporter
    from detkeeper.training.trainer import train

    class StepTimes(Reporter):
        def __init__(self) -> None:
            self.times: dict[int, float] = {}

        def step(self, step, logs, images_per_second) -> None:
            self.times[step] = time.perf_counter()

    overrides = [f"run_dir={args.run_dir}", f"train.steps={args.steps}", f"evaluation.every_steps={args.steps}",
                 f"data.train.path={args.shapes}", f"data.val.path={args.shapes}", f"data.test.path={args.shapes}",
                 f"distribute.strategy={args.strategy}", f"train.schedule.warmup_steps={min(100, args.steps // 4)}"]
    if args.strategy == "mirrored":
        overrides.append(f"distribute.devices=[{','.join(devices)}]")
    reporter = StepTimes()
    started = time.perf_counter()
    train("demo", overrides, reporter=reporter)
    wall = time.perf_counter() - started
    first, last = args.warmup, max(reporter.times)
    seconds = reporter.times[last] - reporter.times[first]
    print(json.dumps({"images_per_second": (last - first) * 8 / seconds, "timed_steps": last - first,
                      "seconds": seconds, "wall": wall, "device": "gpu" if gpus else "cpu"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--replicas", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="detkeeper-distributed-bench-") as scratch:
        from detkeeper.config import load_config
        from detkeeper.data.synthetic import generate_shapes_dataset

        demo = load_config("demo").data.synthetic
        shapes = generate_shapes_dataset(Path(scratch) / "shapes", num_train=demo.num_train, num_val=demo.num_val,
                                         num_test=demo.num_test, image_size=demo.image_size, seed=demo.seed)
        results: dict[str, list[dict]] = {name: [] for name, _, _ in CONFIGURATIONS}
        for repeat in range(args.repeats):
            for index, (name, strategy, replicas) in enumerate(CONFIGURATIONS):
                run_dir = Path(scratch) / f"run-{repeat}-{index}"
                completed = subprocess.run(
                    [sys.executable, __file__, "--child", "--strategy", strategy, "--replicas", str(replicas),
                     "--steps", str(args.steps), "--warmup", str(args.warmup), "--run-dir", str(run_dir),
                     "--shapes", str(shapes)], capture_output=True, text=True, check=False)
                if completed.returncode:
                    sys.exit(f"{name} failed:\n{completed.stderr[-3000:]}")
                results[name].append(json.loads(completed.stdout.strip().splitlines()[-1]))
                print(f"{name}: {results[name][-1]['images_per_second']:.1f} images/s", flush=True)
    print(f"\n| configuration | images/s ({args.steps - args.warmup} steps after step {args.warmup}) | wall s |")
    print("|---|---|---|")
    for name, runs in results.items():
        rates = ", ".join(f"{run['images_per_second']:.1f}" for run in runs)
        walls = ", ".join(f"{run['wall']:.0f}" for run in runs)
        print(f"| {name} | {rates} | {walls} |")
    print(f"\ndevice: {results[CONFIGURATIONS[0][0]][0]['device']}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
