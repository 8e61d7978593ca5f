"""How good a detector does `detkeeper train` make in a fixed wall-clock budget on a real dataset?

The `bccd` preset (fcos_tiny at 448 px, random init) is trained on the BCCD train split (205
blood-cell photos, 3 classes) through `detkeeper.train` with evaluation on the
val split (87 images) and checkpoints on, for `--minutes` of wall time (default 20), then
evaluated on the test split (72 images) at four marks: 1/4, 2/4, 3/4 and 4/4 of the budget (5, 10,
15 and 20 minutes by default). Prints test mAP and mAP50 at each mark and the training images/s.

Method (no test-split work counts against the budget, and no test result picks a model):
  1. The clock starts when the training process is launched (imports, reading the data and
     building the model count). `train` runs in a child process so that the budget can be
     enforced: at the deadline the child is terminated wherever it is, as a user's time limit
     would. `train.steps` (the cosine schedule's length) is set from this machine's measured
     speed so that training normally ends just inside the budget (`--steps` to change it).
  2. Training evaluates on the val split every `evaluation.every_steps` steps and saves a
     checkpoint each time; validation and saving count against the budget, as in any real run.
     All checkpoints are kept (`checkpoint.keep_last` raised), so any moment can be looked at
     afterwards; each ledger entry records when it was committed.
  3. After training has ended, for each mark, two checkpoints committed at or before the mark are
     evaluated on the test split with `detkeeper.evaluate` (the library behind
     `detkeeper evaluate`): the best so far by val mAP (what `train` hands back when
     stopped there) and the latest. Only the val split ever chooses a checkpoint.
  4. Training images/s: images trained / wall time of the whole budget up to the last
     checkpoint (start-up, validation and saving included), and the rate of the training steps
     alone (the progress reporter's per-interval rate, validation excluded).

Usage: .venv/bin/python benchmarks/bccd.py [--minutes 20] [--data ../shared/data/bccd/BCCD]
       [--run-dir DIR] [--set KEY=VALUE ...]
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
# Steps of the `bccd` preset per minute of budget on this machine (2 cores, evaluation every 200
# steps included): 96 measured on a quiet machine, rounded down for start-up and other load. Sizes
# the cosine schedule so that it ends inside the budget.
STEPS_PER_MINUTE = 90

# The child: `train` with a reporter that writes each interval's training-only rate to a file.
CHILD = r"""
import json, logging, sys, time
import detkeeper
from detkeeper.training.progress import Reporter

preset, overrides, progress_path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

class Record(Reporter):
    def __init__(self):
        self.rate, self.step_seen = 0.0, 0
    def _write(self, **row):
        with open(progress_path, "a") as out:
            out.write(json.dumps({"time": time.time(), **row}) + "\n")
    def start(self, total_steps, start_step):
        self._write(event="start", step=start_step)
    def step(self, step, logs, images_per_second):
        self.rate, self.step_seen = images_per_second, step
    def evaluating(self, total_images):
        self._write(event="interval", step=self.step_seen, images_per_second=self.rate)

logging.basicConfig(format="  %(message)s")  # a no-op when TensorFlow configured logging already
logging.getLogger("detkeeper").setLevel(logging.INFO)
result = detkeeper.train(preset, overrides, reporter=Record())
print(json.dumps({"status": result.status, "step": result.step}), flush=True)
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, help=f"train.steps (default: {STEPS_PER_MINUTE} per minute)")
    parser.add_argument("--preset", default="bccd")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BCCD root (Annotations/, JPEGImages/, ...)")
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary folder, removed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override (repeatable)")
    return parser.parse_args()


def progress_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".progress.jsonl")


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


def run_training(args, run_dir: Path) -> tuple[float, float, list[str]]:
    """Launch training, stop it at the deadline; returns (start time, budget seconds, load samples)."""
    budget = args.minutes * 60
    steps = args.steps or max(1, round(args.minutes * STEPS_PER_MINUTE))
    voc = {split: json.dumps({"format": "voc", "path": args.data, "split": split})
           for split in ("train", "val", "test")}
    overrides = [f"run_dir={run_dir}", f"train.steps={steps}", "checkpoint.keep_last=100000",
                 *(f"data.{split}={value}" for split, value in voc.items()), *args.set]
    progress = progress_path(run_dir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"training {args.preset} for {args.minutes:g} min (train.steps={steps}); "
          f"overrides: {' '.join(args.set) or '-'}")
    loads = [f"start {load_average()}"]
    started = time.time()
    child = subprocess.Popen([sys.executable, "-c", CHILD, args.preset, json.dumps(overrides), str(progress)],
                             env=env, stdout=subprocess.PIPE, text=True)
    deadline = started + budget
    while child.poll() is None and time.time() < deadline:
        time.sleep(min(30.0, max(0.1, deadline - time.time())))
        if time.time() < deadline:
            loads.append(f"{(time.time() - started) / 60:.1f} min {load_average()}")
    loads.append(f"end {load_average()}")
    if child.poll() is None:
        child.terminate()
        child.wait()
        print(f"deadline reached after {time.time() - started:.0f} s: training terminated")
    else:
        out = child.stdout.read()
        if child.returncode != 0:
            raise SystemExit(f"training failed (exit {child.returncode})")
        print(f"training ended by itself after {time.time() - started:.0f} s: {out.strip()}")
    return started, budget, loads


def main() -> None:
    args = parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: no BCCD dataset there (see --data)")
    with tempfile.TemporaryDirectory() as scratch:
        run_dir = Path(args.run_dir).resolve() if args.run_dir else Path(scratch) / "run"
        if run_dir.exists():
            raise SystemExit(f"{run_dir} exists: the budget is for a fresh run; choose a new --run-dir")
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        started, budget, loads = run_training(args, run_dir)
        report(args, run_dir, started, budget, loads)


def report(args, run_dir: Path, started: float, budget: float, loads: list[str]) -> None:
    import detkeeper
    from detkeeper.config import load_config

    config = load_config(run_dir / "config.yaml")
    ledger = json.loads((run_dir / "checkpoints" / "ledger.json").read_text())
    entries = sorted(ledger["checkpoints"], key=lambda entry: entry["step"])
    batch = config.train.batch_size
    tested: dict[int, tuple[float, float]] = {}

    def test(step: int) -> tuple[float, float]:
        if step not in tested:
            report = detkeeper.evaluate(run_dir, "test", checkpoint=step, out_dir=run_dir / "eval" / f"test-{step}")
            tested[step] = (report.result.stats["mAP"], report.result.stats["mAP50"])
        return tested[step]

    print(f"\n{config.model.name} at {config.model.image_size} px, batch {batch}, "
          f"{config.train.optimizer.name} {config.train.optimizer.learning_rate:g} {config.train.schedule.name} "
          f"over {config.train.steps} steps, evaluation every {config.evaluation.every_steps} steps")
    header = (f"{'minutes':>7s} | {'best-by-val step':>16s} {'val mAP':>8s} {'test mAP':>9s} {'test mAP50':>10s} | "
              f"{'latest step':>11s} {'test mAP':>9s} {'test mAP50':>10s}")
    print(header)
    print("-" * len(header))
    for quarter in (1, 2, 3, 4):
        mark = budget * quarter / 4
        done = [entry for entry in entries if entry["created"] - started <= mark]
        if not done:
            print(f"{mark / 60:7.2f} | no checkpoint yet")
            continue
        valued = [entry for entry in done if entry["monitor_value"] is not None]
        best = max(valued, key=lambda entry: (entry["monitor_value"], -entry["step"])) if valued else done[-1]
        latest = done[-1]
        best_test, latest_test = test(best["step"]), test(latest["step"])
        print(f"{mark / 60:7.2f} | {best['step']:16d} {best['metrics']['val_mAP']:8.3f} {best_test[0]:9.3f} "
              f"{best_test[1]:10.3f} | {latest['step']:11d} {latest_test[0]:9.3f} {latest_test[1]:10.3f}")

    last = entries[-1]
    wall = last["created"] - started
    print(f"\ntraining images/s: {last['step'] * batch / wall:.1f} over the wall time to the last checkpoint "
          f"({last['step']} steps in {wall:.0f} s, start-up, validation and saving included)")
    rows = [json.loads(line) for line in progress_path(run_dir).read_text().splitlines()]
    intervals = [row for row in rows if row["event"] == "interval"]
    steps_before, seconds = 0, 0.0
    for row in intervals:
        seconds += (row["step"] - steps_before) * batch / row["images_per_second"] if row["images_per_second"] else 0
        steps_before = row["step"]
    if seconds:
        print(f"training steps alone: {steps_before * batch / seconds:.1f} images/s "
              f"(validation excluded); training began {rows[0]['time'] - started:.0f} s after launch")
    print(f"load average (1/5/15 min): {'; '.join(loads[:1] + loads[1:-1:max(1, len(loads) // 8)] + loads[-1:])}")


if __name__ == "__main__":
    main()
