"""Data at scale (issue 18): memory, start and resume times, and throughput of `detkeeper train` on
sharded TFRecord sets of 1k, 10k and 100k records, this checkout against a baseline commit.

Data, made once per run with detkeeper's own writer (``write_tfrecords``): the clean records of the
BCCD train split (../shared/data/bccd/BCCD; records with problems dropped, as ``data.bad_records:
skip`` would) replicated with unique integer ids into 16 shards per size (real 640x480 JPEG photos,
~21 KB each: 100k records are ~2.1 GB, so no recompression), 50 records of BCCD's val split as the
val split (one shard), and the label map. Everything lives in ``--out`` (default: a temporary
folder, removed at the end, also on failure, unless ``--keep``).

The model is small so the data's cost shows: ``retinanet_tiny`` (demo preset) at 128 px, batch 8,
the demo's augmentation, ``data.max_boxes`` 32 (the bccd preset's), a constant learning rate,
evaluation (50 val images) only at the end, early stopping off. The baseline is ``--baseline-rev``
(default 4b3eab8: main before issue 18, the in-memory pipeline), checked out with
``git worktree add --detach`` into a temporary folder and run with PYTHONPATH at its src; this
checkout runs with PYTHONPATH at its own src.

Each measurement is one fresh process of ``detkeeper train CONFIG`` (benchmarks/scale_driver.py
runs the CLI's main and writes a timestamp when each phase of the start ends; nothing else prints
when a training step ends). Per size and per code, in this order, the two codes taking turns:
  cold     a new run dir, ``--steps`` steps; the first start on the data in this run (the data
           was just written, so the files are in the page cache: a cold start, not a cold disk);
           DETKEEPER_CACHE points at an empty folder per code, for caches that live there;
  warm     another new run dir, same steps, same data (the dataset index the cold start wrote in
           $DETKEEPER_CACHE/index, since 93f3005, is read here);
  resume   the cold run's dir with twice the steps: it restores the checkpoint of --steps and trains
           on (what a rerun after a stop or a kill does);
  finished the same command again on that finished run dir: the whole process's wall time.
Time to first step: from starting the process to the end of the first training step it runs
(tracing the step included). Peak RSS: ``ru_maxrss`` from ``os.wait4`` of that one process (its
own high-water mark; the processes run one at a time). At the smallest size, ``--rate-steps`` steps
are then trained ``--rate-repeats`` times per code, taking turns: training images/s (and images per
CPU second of the process, less sensitive to other load) over the steps after the first
``--rate-skip`` (median of the repeats); and the training input pipeline alone
(no model, the train split read and checked first) iterated for ``--pipeline-batches`` batches.

Printed: every measurement with where a cold start spends its time (reading the train split, i.e.
``read_source``: since the index, the index pass that also opens every image; ``check_records`` on
it; reading + checking val; building the model; building the pipeline; from ``fit`` to the end of
the first step), then the issue's ratios, largest vs smallest size and this
checkout vs the baseline, all measured in this run. Reading and checking are timed in CPU seconds
too (``time.process_time`` of the process: all its threads), so "records/s per core" is records per
CPU second.

Usage: .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,100000] [--keep] [--out DIR]
           [--baseline-rev 4b3eab8] [--baseline-sizes SIZES] [--steps 4] [--rate-steps 60]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("scale_driver.py")
BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
SHARDS, VAL_RECORDS, BATCH, IMAGE_SIZE = 16, 50, 8, 128
MAX_BOXES = 32  # the bccd preset's: BCCD photos hold up to ~30 cells (the demo preset's 10 is for shapes)
LIMIT_SECONDS = 3600  # one process; far above what any measurement here should take


# -- data -------------------------------------------------------------------------------------
def generate_data(out: Path, sizes: list[int]) -> dict:
    """Write the label map, the val split and one 16-shard train set per size; returns their paths."""
    import dataclasses as dc

    from detkeeper.cli.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    from detkeeper.data.check import check_records, drop_bad
    from detkeeper.data.tfrecord_writer import write_tfrecords
    from detkeeper.data.voc import read_voc

    def clean(split: str, label_map=None):
        readout = read_voc(BCCD, split=split, label_map=label_map)
        return list(drop_bad(readout.records, check_records(readout.records))), readout.label_map  # records, not columns

    train, label_map = clean("train")
    val, _ = clean("val", label_map)
    images = {record.image_id: record.read_encoded() for record in train + val}

    def copies(base, count: int, first_id: int):
        for number in range(count):
            record = base[number % len(base)]
            image_id = first_id + number
            yield dc.replace(record, image_id=str(image_id), original_id=image_id, image_path=None,
                             encoded_image=images[record.image_id], source=f"BCCD {record.image_id} copy {number}")

    paths = {"label_map": str(label_map.write(out / "label_map.pbtxt"))}
    write_tfrecords(list(copies(val, VAL_RECORDS, 10_000_000)), label_map, out / "val" / "val", 1)
    paths["val"] = str(out / "val" / "val-*")
    kilobytes = sum(len(images[record.image_id]) for record in train) / len(train) / 1e3
    print(f"data: {len(train)} clean BCCD train photos ({kilobytes:.1f} KB JPEG each) replicated; "
          f"val: {VAL_RECORDS} records of BCCD val", flush=True)
    for size in sizes:
        started = time.perf_counter()
        shards = write_tfrecords(list(copies(train, size, 1)), label_map, out / f"train{size}" / "train", SHARDS)
        paths[size] = str(out / f"train{size}" / "train-*")
        megabytes = sum(path.stat().st_size for path in shards) / 1e6
        print(f"data: {size} records in {SHARDS} shards, {megabytes:.0f} MB, written in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return paths


def write_config(path: Path, data: dict, size: int, run_dir: Path, steps: int, every: int) -> Path:
    config = {
        "preset": "demo",
        "run_dir": str(run_dir),
        "data": {"train": {"format": "tfrecord", "path": data[size], "split": None},
                 "val": {"format": "tfrecord", "path": data["val"], "split": None},
                 "test": None, "label_map": data["label_map"], "max_boxes": MAX_BOXES},
        "model": {"image_size": IMAGE_SIZE},
        "train": {"batch_size": BATCH, "steps": steps, "schedule": {"name": "constant", "warmup_steps": 0}},
        "evaluation": {"every_steps": every},
        "checkpoint": {"keep_best": 1, "keep_last": 1},
        "early_stopping": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


# -- one process ------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """One measured process: its marks (see scale_driver.py), wall time and peak RSS."""

    spawned: float
    seconds: float
    peak_rss_mb: float
    marks: list[dict]

    def first(self, event: str, phase: str | None = None) -> dict:
        for mark in self.marks:
            if mark["event"] == event and phase in (None, mark.get("phase")):
                return mark
        raise LookupError(f"no {event} {phase or ''} mark")

    def steps(self, event: str = "step") -> list[dict]:
        return [mark for mark in self.marks if mark["event"] == event]

    @property
    def first_step_seconds(self) -> float:
        return self.steps()[0]["wall"] - self.spawned

    def phase(self, event: str, index: int = 0) -> tuple[float, float]:
        """(wall s, CPU s) of the `index`-th begin/end pair of `event`."""
        begins = [m for m in self.marks if m["event"] == event and m.get("phase") == "begin"]
        ends = [m for m in self.marks if m["event"] == event and m.get("phase") == "end"]
        return ends[index]["wall"] - begins[index]["wall"], ends[index]["cpu"] - begins[index]["cpu"]

    @property
    def data_seconds(self) -> float:
        """Wall seconds of the start's data phases: reading and checking both splits, building the pipeline."""
        phases = [("read", 0), ("check", 0), ("read", 1), ("check", 1), ("pipeline", 0)]
        return sum(self.phase(event, index)[0] for event, index in phases)

    def rate(self, skip: int, event: str = "step") -> tuple[float, float]:
        """Images per second and per CPU second (all the process's threads) over the steps (or
        batches) after the first `skip`."""
        marks = self.steps(event)[skip:]
        images = sum(mark.get("images", BATCH) for mark in marks[1:])
        return images / (marks[-1]["wall"] - marks[0]["wall"]), images / (marks[-1]["cpu"] - marks[0]["cpu"])


class Code:
    """A detkeeper source tree to run: this checkout or the baseline worktree."""

    def __init__(self, name: str, src: Path, scratch: Path) -> None:
        self.name, self.src = name, src
        self.cache = scratch / f"cache-{name}"  # DETKEEPER_CACHE: empty before the first start
        self.logs = scratch / f"logs-{name}"
        self.logs.mkdir(parents=True)
        self.count = 0

    def run(self, *args: str) -> Run:
        self.count += 1
        stem = self.logs / f"{self.count:02d}-{args[0].lstrip('-')}"
        marks = stem.with_suffix(".marks")
        env = {**os.environ, "PYTHONPATH": str(self.src), "TF_CPP_MIN_LOG_LEVEL": "3",
               "DETKEEPER_CACHE": str(self.cache)}
        with open(stem.with_suffix(".log"), "w") as log:
            spawned = time.time()
            process = subprocess.Popen([sys.executable, str(DRIVER), str(marks), *args], env=env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                status, usage = _wait(process)
            except BaseException:
                process.kill()
                process.wait()
                raise
            seconds = time.time() - spawned
        if status != 0:
            tail = stem.with_suffix(".log").read_text()[-3000:]
            raise SystemExit(f"{self.name}: {' '.join(args)} exited with {status}:\n{tail}")
        lines = [json.loads(line) for line in marks.read_text().splitlines()]
        imported = next(line["detkeeper"] for line in lines if line["event"] == "armed")
        if not Path(imported).is_relative_to(self.src):
            raise SystemExit(f"{self.name}: the process imported {imported}, not the code under {self.src}")
        return Run(spawned, seconds, usage.ru_maxrss / 1024, lines)


def _wait(process: subprocess.Popen):
    """Exit status and rusage of exactly this child (os.wait4), with a time limit."""
    deadline = time.time() + LIMIT_SECONDS
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        if time.time() > deadline:
            raise SystemExit(f"{process.args} still running after {LIMIT_SECONDS} s")
        time.sleep(0.02)


# -- measurements -----------------------------------------------------------------------------
@dataclasses.dataclass
class Starts:
    """The four starts of one code at one size."""

    cold: Run
    warm: Run
    resume: Run
    finished: Run

    @property
    def peak_rss_mb(self) -> float:
        return max(self.cold.peak_rss_mb, self.warm.peak_rss_mb, self.resume.peak_rss_mb)


def measure_starts(codes: list[Code], data: dict, size: int, scratch: Path, steps: int) -> dict[str, Starts]:
    folder = scratch / f"runs{size}"
    folder.mkdir()
    runs: dict[str, dict[str, Run]] = {code.name: {} for code in codes}
    configs = {}
    for code in codes:
        configs[code.name] = (
            write_config(folder / f"{code.name}-a.yaml", data, size, folder / f"{code.name}-a", steps, steps),
            write_config(folder / f"{code.name}-b.yaml", data, size, folder / f"{code.name}-b", steps, steps),
            write_config(folder / f"{code.name}-a2.yaml", data, size, folder / f"{code.name}-a", 2 * steps, steps))
    for kind in ("cold", "warm", "resume", "finished"):
        for code in codes:
            first, second, longer = configs[code.name]
            config = {"cold": first, "warm": second, "resume": longer, "finished": longer}[kind]
            run = code.run("train", str(config), "--quiet")
            runs[code.name][kind] = run
            shown = (f"first step at {run.first_step_seconds:6.1f} s" if kind != "finished"
                     else f"{'':23s}")
            print(f"  {size:>7} {code.name:>8} {kind:>8}: {shown}  process {run.seconds:6.1f} s  "
                  f"peak RSS {run.peak_rss_mb:7.0f} MB", flush=True)
    return {name: Starts(**kinds) for name, kinds in runs.items()}


def describe_cold(run: Run) -> str:
    read, read_cpu = run.phase("read", 0)
    check, check_cpu = run.phase("check", 0)
    val_read, _ = run.phase("read", 1)
    val_check, _ = run.phase("check", 1)
    model, _ = run.phase("model")
    pipeline, _ = run.phase("pipeline")
    records = run.first("read", "end")["records"]
    fit = run.first("fit")["wall"]
    imports = run.first("prepare", "begin")["wall"] - run.spawned
    return (f"start to reading {imports:.1f} s; read train {read:.1f} s ({read_cpu:.1f} CPU s, "
            f"{records / read:.0f} records/s); check train {check:.1f} s ({check_cpu:.1f} CPU s); "
            f"val {val_read + val_check:.1f} s; model {model:.1f} s; pipeline {pipeline:.1f} s; "
            f"fit to first step {run.steps()[0]['wall'] - fit:.1f} s")


def measure_rates(codes: list[Code], data: dict, size: int, scratch: Path, args) -> dict[str, dict]:
    folder = scratch / "rate"
    folder.mkdir()
    rates: dict[str, dict] = {code.name: {"train": [], "pipeline": []} for code in codes}
    pipeline_config = write_config(folder / "pipeline.yaml", data, size, folder / "pipeline", 1, 1)
    for repeat in range(args.rate_repeats):
        for code in codes:
            config = write_config(folder / f"{code.name}-{repeat}.yaml", data, size, folder / f"{code.name}-{repeat}",
                                  args.rate_steps, args.rate_steps)
            run = code.run("train", str(config), "--quiet")
            rates[code.name]["train"].append(run.rate(args.rate_skip))
            wall, cpu = rates[code.name]["train"][-1]
            print(f"  {size:>7} {code.name:>8} training: {wall:.1f} images/s, {cpu:.1f} per CPU s "
                  f"(steps {args.rate_skip + 1}-{args.rate_steps})", flush=True)
    for code in codes:
        run = code.run("--pipeline", str(pipeline_config), str(args.pipeline_batches))
        rates[code.name]["pipeline"] = wall, cpu = run.rate(args.rate_skip, "batch")
        print(f"  {size:>7} {code.name:>8} pipeline alone: {wall:.1f} images/s, {cpu:.1f} per CPU s "
              f"(batches {args.rate_skip + 1}-{args.pipeline_batches})", flush=True)
    return rates


# -- report -----------------------------------------------------------------------------------
def report(codes: list[Code], sizes: list[int], starts: dict[int, dict[str, Starts]], rates: dict, args) -> None:
    print()
    print("| size | code | cold: first step | warm: first step | resume: first step | finished rerun "
          "| peak RSS | cold start: where the time goes |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for code in codes:
            found = starts[size].get(code.name)
            if found is None:
                print(f"| {size:,} | {code.name} | not run (--baseline-sizes) | | | | | |")
                continue
            print(f"| {size:,} | {code.name} | {found.cold.first_step_seconds:.1f} s | "
                  f"{found.warm.first_step_seconds:.1f} s | {found.resume.first_step_seconds:.1f} s | "
                  f"{found.finished.seconds:.1f} s | {found.peak_rss_mb:,.0f} MB | {describe_cold(found.cold)} |")
    small, large = sizes[0], sizes[-1]
    print()
    print(f"Ratios (measured in this run; 'large' = {large:,} records, 'small' = {small:,}):")
    for code in codes:
        if code.name not in starts[large] or code.name not in starts[small]:
            continue
        a, b = starts[small][code.name], starts[large][code.name]
        print(f"  {code.name:>8}: RSS({large:,}) / RSS({small:,}) = {b.peak_rss_mb / a.peak_rss_mb:.2f} "
              f"(target <= 1.15); warm first step({large:,}) / ({small:,}) = "
              f"{b.warm.first_step_seconds / a.warm.first_step_seconds:.2f} (target <= 1.5); "
              f"resume first step ratio {b.resume.first_step_seconds / a.resume.first_step_seconds:.2f}; "
              f"data phases of the warm start ({b.warm.data_seconds:.1f} s / {a.warm.data_seconds:.1f} s) "
              f"{b.warm.data_seconds / a.warm.data_seconds:.1f}; "
              f"finished rerun at {large:,}: {b.finished.seconds:.1f} s (target < 5 s)")
    this, base = codes[0].name, codes[1].name if len(codes) > 1 else None
    if base:
        for size in sizes:
            if base not in starts[size]:
                continue
            a, b = starts[size][this], starts[size][base]
            print(f"  {size:>7,} {this} / {base}: peak RSS {a.peak_rss_mb / b.peak_rss_mb:.2f}, cold first step "
                  f"{a.cold.first_step_seconds / b.cold.first_step_seconds:.2f}, warm "
                  f"{a.warm.first_step_seconds / b.warm.first_step_seconds:.2f}, resume "
                  f"{a.resume.first_step_seconds / b.resume.first_step_seconds:.2f}, finished rerun "
                  f"{a.finished.seconds / b.finished.seconds:.2f}")
    if rates:
        if base:
            (ours, ours_cpu), (theirs, theirs_cpu) = (
                [statistics.median(values) for values in zip(*rates[name]["train"])] for name in (this, base))
            print(f"  training images/s at {small:,}: {this} {ours:.1f}, {base} {theirs:.1f}: streamed / in-memory = "
                  f"{ours / theirs:.2f} (target >= 0.95); per CPU s {ours_cpu:.1f} vs {theirs_cpu:.1f}: "
                  f"{ours_cpu / theirs_cpu:.2f} (medians of {args.rate_repeats} runs each, taking turns)")
        cold = starts[large][this].cold
        read, read_cpu = cold.phase("read", 0)
        check, check_cpu = cold.phase("check", 0)
        print(f"  cold start at {large:,} ({this}): reading {large / read:,.0f} records/s "
              f"({large / read_cpu:,.0f} per CPU s); reading + checking images {large / (read + check):,.0f} "
              f"records/s ({large / (read_cpu + check_cpu):,.0f} per CPU s); the pipeline alone decodes "
              f"{rates[this]['pipeline'][0]:.0f} images/s ({rates[this]['pipeline'][1]:.0f} per CPU s; "
              f"augment + resize + batch included, at {small:,})")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="train set sizes, comma-separated")
    parser.add_argument("--out", help="folder for the data and runs (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep --out (or the temporary folder) at the end")
    parser.add_argument("--baseline-rev", default="4b3eab8", help="the baseline commit (default: main before issue 18)")
    parser.add_argument("--baseline-sizes", help="sizes the baseline runs at (default: all of --sizes)")
    parser.add_argument("--steps", type=int, default=4, help="steps of the cold and warm runs (resume: twice)")
    parser.add_argument("--rate-steps", type=int, default=60, help="steps of each throughput run")
    parser.add_argument("--rate-skip", type=int, default=10, help="first steps (batches) left out of the rates")
    parser.add_argument("--rate-repeats", type=int, default=2, help="0: no throughput runs")
    parser.add_argument("--pipeline-batches", type=int, default=100)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    baseline_sizes = sorted(int(s) for s in args.baseline_sizes.split(",")) if args.baseline_sizes else sizes

    print(f"start: {uptime()}")
    print(f"{os.cpu_count()} CPU cores, {platform.machine()}; this checkout {_revision(REPO)} vs baseline "
          f"{args.baseline_rev}; sizes {sizes}; retinanet_tiny at {IMAGE_SIZE} px, batch {BATCH}, {args.steps} steps "
          f"(resume: {2 * args.steps}), evaluation of {VAL_RECORDS} images at the end", flush=True)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="detkeeper-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    baseline_tree = Path(tempfile.mkdtemp(prefix="detkeeper-scale-baseline-"))
    baseline_tree.rmdir()
    try:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(baseline_tree),
                        args.baseline_rev], check=True)
        scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=out))
        this = Code("this", REPO / "src", scratch)
        baseline = Code("baseline", baseline_tree / "src", scratch)
        data = generate_data(out, sizes)
        print(f"data on disk: {sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e9:.2f} GB", flush=True)
        starts, rates = {}, {}
        for index, size in enumerate(sizes):
            codes = [this] + ([baseline] if size in baseline_sizes else [])
            starts[size] = measure_starts(codes, data, size, scratch, args.steps)
            if index == 0 and args.rate_repeats:
                rates = measure_rates(codes, data, size, scratch, args)
        report([this, baseline], sizes, starts, rates, args)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(baseline_tree)], check=False)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        else:
            print(f"kept: {out}")
        print(f"end: {uptime()}")


def _revision(repo: Path) -> str:
    found = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return found.stdout.strip() + (" (modified)" if dirty else "")


if __name__ == "__main__":
    main()
