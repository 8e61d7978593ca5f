"""What one fresh training process costs in CPU, this checkout against a baseline commit.

Every ``detkeeper train``, ``export`` or ``evaluate`` is a new process that traces its graphs from
scratch, and the test suite starts dozens of them; their fixed cost is measured here. Each run is a
new Python process that imports TensorFlow as the commands do, then detkeeper, trains the fault
suite's tiny run (retinanet_tiny at 128 px, batch 4, 50 steps, every random transform on, 5
evaluations and saves) on a generated shapes set, and reports its own CPU seconds (user + system)
for the import and for ``train`` and the number of detkeeper functions AutoGraph converted. The two
trees alternate, ``--repeats`` times each, and the medians are compared in this one run. The
baseline is checked out with ``git worktree add --detach`` into a temporary folder.

Usage:
    .venv/bin/python benchmarks/start_cpu.py [--baseline-rev df46e8c] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
from pathlib import Path

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

started = cpu()
from detkeeper.cli.console import import_tensorflow_quietly
import_tensorflow_quietly()  # as every detkeeper command imports it
import tensorflow as tf
from tensorflow.python.autograph.impl import api
converted = []
real = api._convert_actual
def _convert_actual(entity, program_ctx):
    if (getattr(entity, "__module__", None) or "").startswith("detkeeper"):
        converted.append(entity.__qualname__)
    return real(entity, program_ctx)
api._convert_actual = _convert_actual
sys.path.insert(0, sys.argv[3])
from training_runs import write_config
from detkeeper.training.trainer import train
imported = cpu()
config = write_config(Path(sys.argv[2]) / "config.yaml", Path(sys.argv[1]), Path(sys.argv[2]) / "run",
    model={"image_size": 128, "neck": {"channels": 16, "max_level": 5}, "head": {"channels": 16, "convs": 0}},
    train={"batch_size": 4, "steps": 50, "optimizer": {"learning_rate": 0.01},
           "schedule": {"name": "constant", "warmup_steps": 5}},
    evaluation={"every_steps": 10},
    data={"augment": {"horizontal_flip": True, "vertical_flip": True, "rotate_90": True,
                      "scale_jitter": [0.8, 1.2], "colour_jitter": 0.1}})
result = train(config)
print(json.dumps({"import": imported - started, "train": cpu() - imported, "status": result.status,
                  "converted": len(converted)}))
"""


def run_once(src: Path, shapes: Path, scratch: Path) -> dict:
    scratch.mkdir(parents=True)
    environment = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(shapes), str(scratch), str(REPO / "tests" / "training")],
                          capture_output=True, text=True, env=environment, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default="df46e8c", help="the baseline commit (default: before AutoGraph was off)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from detkeeper.data.synthetic import generate_shapes_dataset

    with tempfile.TemporaryDirectory(prefix="detkeeper-start-cpu-") as folder:
        root = Path(folder)
        shapes = generate_shapes_dataset(root / "shapes", num_train=24, num_val=8, num_test=8, image_size=128)
        baseline = root / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(baseline),
                        args.baseline_rev], check=True)
        try:
            runs = {"this checkout": [], f"baseline {args.baseline_rev}": []}
            for repeat in range(args.repeats):
                for (name, found), src in zip(runs.items(), (REPO / "src", baseline / "src")):
                    found.append(run_once(src, shapes, root / f"{len(found)}-{name.split()[0]}"))
                    print(f"repeat {repeat + 1}, {name}: {found[-1]}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline)], check=False)
    print("\n| tree | import CPU s | train CPU s | detkeeper functions converted |\n|---|---|---|---|")
    medians = {part: {} for part in ("import", "train")}
    for name, found in runs.items():
        for part, by_tree in medians.items():
            by_tree[name] = statistics.median(run[part] for run in found)
        print(f"| {name} | {medians['import'][name]:.2f} | {medians['train'][name]:.2f} | {found[0]['converted']} |")
    print()
    for part, by_tree in medians.items():
        this, base = by_tree.values()
        print(f"{part} CPU, this checkout / baseline: {this / base:.3f} ({this - base:+.2f} s per process)")


if __name__ == "__main__":
    main()
