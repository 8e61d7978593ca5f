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
     would.
  2. The schedule is sized from this machine's speed, measured at the start of the run, inside
     the budget: the child first trains the same config for `CALIBRATION_STEPS` steps in a scratch
     run directory (timing the steps after the first `CALIBRATION_SKIP`, which trace and warm up)
     and one validation pass, then sets `train.steps` (the cosine schedule's length) to 90% of what
     fits in the time left (`SPEED_MARGIN`), validation every `evaluation.every_steps` steps and a
     new start-up included, rounded down to whole evaluation intervals. A slower machine gets a
     shorter schedule that still decays, not a schedule cut before its end (`--steps` fixes it
     instead).
  3. Training evaluates on the val split every `evaluation.every_steps` steps and saves a
     checkpoint each time; validation and saving count against the budget, as in any real run.
     All checkpoints are kept (`checkpoint.keep_last` raised), so any moment can be looked at
     afterwards; each ledger entry records when it was committed.
  4. After training has ended, for each mark, two checkpoints committed at or before the mark are
     evaluated on the test split with `detkeeper.evaluate` (the library behind
     `detkeeper evaluate`): the best so far by val mAP (what `train` hands back when
     stopped there) and the latest. Only the val split ever chooses a checkpoint.
  5. Training images/s: images trained / wall time of the whole budget up to the last
     checkpoint (start-up, calibration, validation and saving included), and the rate of the
     training steps alone (the progress reporter's per-interval rate, validation excluded).

`--model fpnlite_320` trains the TF OD API's SSD MobileNetV2 FPN-lite at 320 px (the zoo's
ssd_mobilenet_v2_fpnlite_320x320 architecture, here from random init) with the preset's other
settings, for comparison with the preset's own model.

Usage: .venv/bin/python benchmarks/bccd.py [--minutes 20] [--data ../shared/data/bccd/BCCD]
       [--model fpnlite_320] [--steps N] [--run-dir DIR] [--set KEY=VALUE ...]
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
# The calibration: steps trained, and how many of them (tracing, warm-up) are not timed.
CALIBRATION_STEPS, CALIBRATION_SKIP = 30, 8
# The share of the calibrated estimate that is planned. The real run's steps were measured 6-8%
# slower than the calibration's (checkpoint saves, the ledger, a longer-running process), and the
# first estimate, planned whole, ended the budget 13% before the schedule's end (RESULTS.md).
SPEED_MARGIN = 0.9
# Models to compare with the preset's own: config overrides.
MODELS = {
    "fpnlite_320": ["model.name=ssd_mobilenet_v2_fpnlite", "model.image_size=320", "model.backbone.weights=none"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock training budget")
    parser.add_argument("--steps", type=int, help="train.steps (default: sized from the speed measured at the start)")
    parser.add_argument("--preset", default="bccd")
    parser.add_argument("--model", choices=sorted(MODELS), help="train this model instead of the preset's")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BCCD root (Annotations/, JPEGImages/, ...)")
    parser.add_argument("--run-dir", help="keep the run here (default: a temporary folder, removed)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override (repeatable)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the training process (JSON spec)
    return parser.parse_args()


def progress_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".progress.jsonl")


def load_average() -> str:
    return "/".join(f"{value:.1f}" for value in os.getloadavg())


class Timings:
    """A detkeeper progress reporter (`detkeeper.training.progress.Reporter`'s methods) that keeps
    when each step ended and when validation passes began and ended, and appends each interval's
    training-only rate to the progress file."""

    def __init__(self, progress_file: Path | None = None) -> None:
        self.progress_file = progress_file
        self.step_times: dict[int, float] = {}
        self.evaluations: list[list[float]] = []
        self.rate, self.step_seen = 0.0, 0

    def write(self, **row) -> None:
        if self.progress_file is not None:
            with open(self.progress_file, "a") as out:
                out.write(json.dumps({"time": time.time(), **row}) + "\n")

    def start(self, total_steps, start_step):
        self.write(event="start", step=start_step, total_steps=total_steps)

    def step(self, step, logs, images_per_second):
        self.step_times[step] = time.perf_counter()
        self.rate, self.step_seen = images_per_second, step

    def evaluating(self, total_images):
        self.evaluations.append([time.perf_counter(), time.perf_counter()])
        self.write(event="interval", step=self.step_seen, images_per_second=self.rate)

    def evaluated_images(self, count):
        self.evaluations[-1][1] = time.perf_counter()

    def close(self):
        pass


def calibrate(preset: str, overrides: list[str], deadline: float) -> dict:
    """Train `CALIBRATION_STEPS` steps of the run's config in a scratch folder; returns the measured
    seconds per step, per validation pass and of start-up, and the steps that fit before `deadline`
    (at least the warm-up and one evaluation interval: a budget too short for them is cut short)."""
    from detkeeper.config import load_config

    import detkeeper

    config = load_config(preset, overrides)
    every = config.evaluation.every_steps
    timings = Timings()
    launched = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        detkeeper.train(preset, [*overrides, f"run_dir={Path(scratch) / 'run'}", f"train.steps={CALIBRATION_STEPS}",
                                 f"evaluation.every_steps={CALIBRATION_STEPS}", "train.schedule.warmup_steps=0",
                                 "early_stopping.enabled=false"], reporter=timings)
    times = timings.step_times
    per_step = (times[CALIBRATION_STEPS] - times[CALIBRATION_SKIP]) / (CALIBRATION_STEPS - CALIBRATION_SKIP)
    per_evaluation = max(end - begin for begin, end in timings.evaluations)
    start_up = times[1] - launched  # reading data, building, tracing: the real run pays it again
    left = deadline - time.time() - start_up - per_evaluation  # the last validation must fit too
    fitting = SPEED_MARGIN * left / (per_step + per_evaluation / every)
    # Whole evaluation intervals only, so the schedule's end is also a validated checkpoint.
    steps = max(every, config.train.schedule.warmup_steps, int(fitting // every) * every)
    return {"seconds_per_step": per_step, "seconds_per_evaluation": per_evaluation, "start_up_seconds": start_up,
            "steps": steps}


def child(spec: dict) -> None:
    """The training process: calibrate unless steps were given, then train."""
    import logging

    import detkeeper

    logging.basicConfig(format="  %(message)s")  # a no-op when TensorFlow configured logging already
    logging.getLogger("detkeeper").setLevel(logging.INFO)
    overrides, progress = spec["overrides"], Path(spec["progress"])
    steps = spec["steps"]
    if steps is None:
        measured = calibrate(spec["preset"], overrides, spec["deadline"])
        steps = measured["steps"]
        with open(progress, "a") as out:
            out.write(json.dumps({"time": time.time(), "event": "calibrated", **measured}) + "\n")
        print(f"calibrated: {measured['seconds_per_step']:.3f} s a step, {measured['seconds_per_evaluation']:.1f} s a "
              f"validation, {measured['start_up_seconds']:.0f} s of start-up: train.steps={steps}", flush=True)
    timings = Timings(progress)
    result = detkeeper.train(spec["preset"], [*overrides, f"train.steps={steps}"], reporter=timings)
    print(json.dumps({"status": result.status, "step": result.step}), flush=True)


def run_training(args, run_dir: Path) -> tuple[float, float, list[str]]:
    """Launch training, stop it at the deadline; returns (start time, budget seconds, load samples)."""
    budget = args.minutes * 60
    voc = {split: json.dumps({"format": "voc", "path": args.data, "split": split})
           for split in ("train", "val", "test")}
    overrides = [f"run_dir={run_dir}", "checkpoint.keep_last=100000",
                 *(f"data.{split}={value}" for split, value in voc.items()), *MODELS.get(args.model, []), *args.set]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"training {args.preset}{f' with {args.model}' if args.model else ''} for {args.minutes:g} min "
          f"(train.steps={args.steps or 'from the measured speed'}); overrides: {' '.join(args.set) or '-'}", flush=True)
    loads = [f"start {load_average()}"]
    started = time.time()
    spec = {"preset": args.preset, "overrides": overrides, "steps": args.steps, "deadline": started + budget,
            "progress": str(progress_path(run_dir))}
    child_process = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], env=env)
    deadline = started + budget
    while child_process.poll() is None and time.time() < deadline:
        time.sleep(min(30.0, max(0.1, deadline - time.time())))
        if time.time() < deadline:
            loads.append(f"{(time.time() - started) / 60:.1f} min {load_average()}")
    loads.append(f"end {load_average()}")
    if child_process.poll() is None:
        child_process.terminate()
        child_process.wait()
        print(f"deadline reached after {time.time() - started:.0f} s: training terminated")
    elif child_process.returncode != 0:
        raise SystemExit(f"training failed (exit {child_process.returncode})")
    else:
        print(f"training ended by itself after {time.time() - started:.0f} s")
    return started, budget, loads


def main() -> None:
    args = parse_args()
    if args.child:
        child(json.loads(args.child))
        return
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

    ledger_path = run_dir / "checkpoints" / "ledger.json"
    if not ledger_path.is_file():
        print("no checkpoint was committed within the budget: nothing to evaluate")
        return
    config = load_config(run_dir / "config.yaml")
    ledger = json.loads(ledger_path.read_text())
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
    rows = [json.loads(line) for line in progress_path(run_dir).read_text().splitlines()]
    calibrated = [row for row in rows if row["event"] == "calibrated"]
    if calibrated:
        measured = calibrated[0]
        print(f"\ncalibration (counted in the budget, {measured['time'] - started:.0f} s after launch): "
              f"{measured['seconds_per_step']:.3f} s a step, {measured['seconds_per_evaluation']:.1f} s a validation, "
              f"{measured['start_up_seconds']:.0f} s of start-up -> train.steps={measured['steps']}")
    print(f"steps reached: {last['step']} of train.steps={config.train.steps}"
          f"{'' if last['step'] >= config.train.steps else ' (the budget ran out first)'}")
    print(f"\ntraining images/s: {last['step'] * batch / wall:.1f} over the wall time to the last checkpoint "
          f"({last['step']} steps in {wall:.0f} s, start-up, validation and saving included)")
    intervals = [row for row in rows if row["event"] == "interval"]
    starts = [row for row in rows if row["event"] == "start"]
    steps_before, seconds = 0, 0.0
    for row in intervals:
        seconds += (row["step"] - steps_before) * batch / row["images_per_second"] if row["images_per_second"] else 0
        steps_before = row["step"]
    if seconds:
        print(f"training steps alone: {steps_before * batch / seconds:.1f} images/s "
              f"(validation excluded); training began {starts[-1]['time'] - started:.0f} s after launch")
    print(f"load average (1/5/15 min): {'; '.join(loads[:1] + loads[1:-1:max(1, len(loads) // 8)] + loads[-1:])}")


if __name__ == "__main__":
    main()
