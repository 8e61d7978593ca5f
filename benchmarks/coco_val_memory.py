"""A large COCO val split evaluates with bounded memory (issue 18): peak RSS of ``detkeeper evaluate``
on COCO JSON splits of 500 and 5,000 images, cold (dataset index built) and warm (index cached).

Data, made once per run: the clean records of BCCD's val split (../shared/data/bccd/BCCD; 640x480
JPEG photos of ~21 KB) replicated with unique integer ids into one images folder (hard links, so the
5,000 files take no disk space, yet are 5,000 files to stat, open and decode) and written with
detkeeper's own ``write_coco`` as ``instances_500.json`` and ``instances_5000.json``. The model is the
demo preset's ``retinanet_tiny`` at 128 px trained for 2 steps on BCCD's train split (the weights do
not matter here: every image goes through it all the same).

Each measurement is one fresh process of ``detkeeper evaluate RUN --data instances_N.json --images
DIR`` (batch 16); its peak RSS is ``ru_maxrss`` from ``os.wait4`` of that process. ``cold`` runs with
an empty ``$DETKEEPER_CACHE``, ``warm`` again with the cache the cold run wrote. With
``--baseline-src SRC`` the warm measurements are repeated with PYTHONPATH at another checkout's src
(e.g. main before COCO went through the index), taking turns with this one.

Then, per size, a probe process (this script with ``--probe``, warm cache) splits the growth: its
peak RSS after importing TensorFlow, after reading the split (``read_coco`` through the index: the
columns), and after scoring it with COCO (``score_batches`` with no detections: the evaluator's own
ground truth and per-image state, which any COCO evaluation holds).

Printed: per size the images' bytes on disk and decoded, the peak RSS, wall time and detections per
image of each run, the probe's three figures, and RSS(5000)/RSS(500) with how much the images would
add if a process held them.
Detections are held until the end of a pass (COCO scores them all at once), so they grow with the
split: ``--score-threshold 0.3`` leaves the 2-step model almost none, which leaves what the data costs.

Usage: PYTHONPATH=src .venv/bin/python benchmarks/coco_val_memory.py [--sizes 500,5000] [--keep]
           [--out DIR] [--baseline-src ../main/src] [--score-threshold 0.05]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BCCD = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
LIMIT_SECONDS = 900  # one process; far above what any measurement here should take


def generate_data(out: Path, sizes: list[int]) -> dict:
    """The images folder, one COCO JSON per size, and the label map; returns their paths."""
    from detkeeper.data.check import check_records, drop_bad
    from detkeeper.data.coco import write_coco
    from detkeeper.data.record import DetectionRecord
    from detkeeper.data.voc import read_voc

    readout = read_voc(BCCD, split="val")
    val = list(drop_bad(readout.records, check_records(readout.records)))
    images = out / "images"
    images.mkdir(parents=True)
    records = []
    for number in range(max(sizes)):
        base = val[number % len(val)]
        image_id = number + 1
        path = images / f"{image_id:06d}.jpg"
        os.link(base.image_path, path)
        records.append(DetectionRecord(
            image_id=str(image_id), original_id=image_id, boxes=base.boxes, class_ids=base.class_ids,
            is_crowd=base.is_crowd, source=f"BCCD {base.image_id} copy {number}", image_path=path,
            width=base.width, height=base.height))
    paths = {"images": str(images), "label_map": str(readout.label_map.write(out / "label_map.pbtxt"))}
    for size in sizes:
        paths[size] = str(write_coco(records[:size], readout.label_map, out / f"instances_{size}.json", images))
    print(f"data: {len(val)} clean BCCD val photos replicated as {max(sizes)} hard-linked files; "
          f"JSON files for {', '.join(map(str, sizes))} images", flush=True)
    return paths


def train_run(out: Path, data: dict, score_threshold: float) -> Path:
    """A demo-preset run trained 2 steps on BCCD train (its val split is the smallest COCO file)."""
    run_dir = out / "run"
    config = {
        "preset": "demo", "run_dir": str(run_dir),
        "data": {"train": {"format": "voc", "path": str(BCCD), "split": "train"},
                 "val": {"format": "coco", "path": data["smallest"], "images": data["images"], "split": None},
                 "test": None, "label_map": data["label_map"], "max_boxes": 32},
        "model": {"image_size": 128},
        "train": {"batch_size": 8, "steps": 2, "schedule": {"name": "constant", "warmup_steps": 0}},
        "evaluation": {"every_steps": 1000, "score_threshold": score_threshold},
        "early_stopping": {"enabled": False},
    }
    path = out / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "detkeeper.cli.main", "train", str(path), "--quiet"], check=True,
                   env={**os.environ, "DETKEEPER_CACHE": str(out / "cache-train")}, stdin=subprocess.DEVNULL)
    print(f"model: trained 2 steps in {time.perf_counter() - started:.0f} s", flush=True)
    return run_dir


@dataclasses.dataclass
class Measured:
    code: str
    size: int
    start: str  # cold / warm
    seconds: float
    peak_rss_mb: float


def evaluate(code: str, src: Path, cache: Path, run_dir: Path, data: dict, size: int, start: str,
             logs: Path) -> Measured:
    env = {**os.environ, "PYTHONPATH": str(src), "TF_CPP_MIN_LOG_LEVEL": "3", "DETKEEPER_CACHE": str(cache)}
    out = logs / f"eval-{code}-{size}-{start}"
    command = [sys.executable, "-m", "detkeeper.cli.main", "evaluate", str(run_dir), "--data", data[size],
               "--images", data["images"], "--batch-size", "16", "--out", str(out), "--quiet"]
    with open(logs / f"{code}-{size}-{start}.log", "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        status, usage = _wait(process)
        seconds = time.perf_counter() - started
    if status:
        raise SystemExit(f"{' '.join(command)} failed ({status}); see {log.name}")
    measured = Measured(code, size, start, seconds, usage.ru_maxrss / 1024)
    detections = len(json.loads((out / "detections.json").read_text()))
    print(f"{code:>8} {size:>6} images {start:<5}: peak RSS {measured.peak_rss_mb:7.0f} MB, "
          f"{seconds:6.1f} s, {detections / size:.1f} detections per image", flush=True)
    return measured


def probe(annotations: str, images: str) -> None:
    """Peak RSS (MB) after importing TensorFlow, after reading the split, after scoring it; one JSON line."""
    import resource

    import numpy as np
    import tensorflow  # noqa: F401  (as `detkeeper evaluate` has it imported)

    from detkeeper.data.coco import read_coco
    from detkeeper.evaluation.runner import score_batches

    def peak() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    figures = {"base": peak()}
    readout = read_coco(annotations, images)
    figures["read"] = peak()
    ids = readout.records.image_ids.tolist()

    def batches():
        for first in range(0, len(ids), 16):
            chosen = ids[first:first + 16]
            nothing = {"boxes": np.zeros([len(chosen), 1, 4]), "scores": np.zeros([len(chosen), 1]),
                       "classes": np.full([len(chosen), 1], -1), "num_detections": np.zeros(len(chosen), int)}
            yield chosen, nothing, 0.0, None

    score_batches(batches(), readout.label_map, readout.records, "faster_coco_eval", 100, None, None)
    figures["scored"] = peak()
    print(json.dumps(figures))


def run_probe(cache: Path, data: dict, size: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3", "DETKEEPER_CACHE": str(cache)}
    done = subprocess.run([sys.executable, __file__, "--probe", data[size], data["images"]], env=env, check=True,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"   probe {size:>6} images warm : {figures['base']:.0f} MB with TensorFlow, +{figures['read'] - figures['base']:.0f} "
          f"MB reading the split (columns), +{figures['scored'] - figures['read']:.0f} MB scoring it with COCO "
          "(no detections, no model)", flush=True)
    return figures


def _wait(process: subprocess.Popen):
    """Exit status and rusage of exactly this child (os.wait4), with a time limit."""
    deadline = time.time() + LIMIT_SECONDS
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            return os.waitstatus_to_exitcode(status), usage
        if time.time() > deadline:
            process.kill()
            raise SystemExit(f"{process.args} still running after {LIMIT_SECONDS} s")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,5000")
    parser.add_argument("--out", help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    parser.add_argument("--baseline-src", help="another checkout's src to measure warm starts of too")
    parser.add_argument("--probe", nargs=2, metavar=("JSON", "IMAGES"), help=argparse.SUPPRESS)
    parser.add_argument("--score-threshold", type=float, default=0.05,
                        help="the run's evaluation.score_threshold (default 0.05, the config's); the 2-step "
                             "model scores ~0.01-0.1, so 0.3 keeps almost no detection and leaves the data's cost")
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    sizes = sorted(int(size) for size in args.sizes.split(","))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="coco-val-memory-"))
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = generate_data(out, sizes)
        data["smallest"] = data[sizes[0]]
        run_dir = train_run(out, data, args.score_threshold)
        logs = out / "logs"
        logs.mkdir()
        codes = {"this": REPO / "src"}
        if args.baseline_src:
            codes["baseline"] = Path(args.baseline_src).resolve()
        results: list[Measured] = []
        for size in sizes:
            for code, src in codes.items():
                cache = out / f"cache-{code}-{size}"
                for start in ("cold", "warm") if code == "this" else ("warm",):
                    results.append(evaluate(code, src, cache, run_dir, data, size, start, logs))
            run_probe(out / f"cache-this-{size}", data, size)
        report(results, sizes, data)
    finally:
        if args.keep:
            print(f"kept {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)


def report(results: list[Measured], sizes: list[int], data: dict) -> None:
    from PIL import Image

    images = sorted(Path(data["images"]).iterdir())
    per_image = sum(path.stat().st_size for path in images) / len(images)
    with Image.open(images[0]) as first:
        decoded = first.width * first.height * 3
    small, large = sizes[0], sizes[-1]
    print(f"images: {per_image / 1e3:.1f} KB JPEG each ({decoded / 1e6:.2f} MB decoded); holding {large} "
          f"of them would add {large * per_image / 1e6:.0f} MB encoded, {large * decoded / 1e9:.1f} GB decoded")
    for code in sorted({result.code for result in results}):
        for start in ("cold", "warm"):
            rss = {r.size: r.peak_rss_mb for r in results if r.code == code and r.start == start}
            if small in rss and large in rss:
                print(f"{code} {start}: RSS({large})/RSS({small}) = {rss[large] / rss[small]:.3f} "
                      f"(+{rss[large] - rss[small]:.0f} MB for {large - small} more images)")


if __name__ == "__main__":
    main()
