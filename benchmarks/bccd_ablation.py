"""Which parts of a BCCD recipe earn their place? Val-split ablations at a fixed number of steps.

Each candidate is a named set of config overrides on the `bccd` preset (fcos_tiny at 448 px from
random init). Every candidate trains for the same `--steps` (the cosine schedule's length, so a
shorter schedule still decays) on the BCCD train split, evaluated on the val split every
`evaluation.every_steps` steps, once per seed, in one run of this script. The table gives each
candidate's best val mAP / mAP50 over the run (what `train` hands back) and at the last step, the
mean over seeds and each seed's, and the difference to the first candidate (the baseline).

Only the val split is read: choosing a recipe here, then measuring it once on the test split with
`benchmarks/bccd.py`, keeps the test split out of the choice (issue 19). A fixed step count makes
the result independent of the machine's load: a busy machine only takes longer.

Usage: .venv/bin/python benchmarks/bccd_ablation.py [--steps 1000] [--seeds 0 1]
       [--only NAME ...] [--out /tmp/bccd-ablation] [--data ../shared/data/bccd/BCCD]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
SYMMETRIES = ["data.augment.vertical_flip=true", "data.augment.rotate_90=true"]
ATSS = ["model.head.assigner=atss"]
QFL = ["model.head.classification_loss=quality_focal"]
# The first is the baseline; "all" is every new piece, and each "all - X" leaves one out; the
# flips and turns alone, and EMA weights (evaluated and kept in place of the raw ones), on the baseline.
CANDIDATES = {
    "bccd": [],
    "all": [*SYMMETRIES, *ATSS, *QFL],
    "all - symmetries": [*ATSS, *QFL],
    "all - atss": [*SYMMETRIES, *QFL],
    "all - qfl": [*SYMMETRIES, *ATSS],
    "bccd + symmetries": SYMMETRIES,
    "bccd + ema": ["train.ema_decay=0.998"],
    # The photos are 4:3: padding leaves a quarter of the square canvas empty, stretching fills it
    # (a third more pixels on every cell, the same step cost).
    "bccd + stretch": ["model.resize.mode=stretch"],
    "bccd + wide jitter": ["data.augment.scale_jitter=[0.5,1.5]"],
    # The same images seen as the baseline's batch 8 at --steps, in twice the updates (these override
    # --steps: run with the baseline's --steps 1000).
    "bccd + batch 4": ["train.batch_size=4", "train.steps=2000", "train.optimizer.learning_rate=0.002",
                       "evaluation.every_steps=400"],
    "bccd + 512 px": ["model.image_size=512"],
    # YOLO-style mosaic (4 photos on one canvas, issue 19): more cells and more context per image for a
    # 205-photo dataset, cells cut at the quadrants' edges, less of the square left empty by the 4:3 photos.
    # At 1.0 every example is one; at 0.5 half (YOLOv5 trains on mosaics only, and turns them off for its
    # last epochs: whole photos are what evaluation sees). A mosaic carries more boxes than the preset's
    # max_boxes 32 (448 px, mosaic 1.0, 800 examples: 16% over 32, 2.3% of boxes truncated away and so
    # trained as background; at most 47): 48 rows keep them all. Padded rows do not change the loss,
    # only the step cost a little.
    "bccd + mosaic": ["data.augment.mosaic=0.5", "data.max_boxes=48"],
    "bccd + mosaic 1.0": ["data.augment.mosaic=1.0", "data.max_boxes=48"],
    # The preset's Adam 3e-3 was chosen without a sweep: half and twice it, and AdamW's decoupled decay.
    "bccd + lr 1.5e-3": ["train.optimizer.learning_rate=0.0015"],
    "bccd + lr 6e-3": ["train.optimizer.learning_rate=0.006"],
    "bccd + adamw": ["train.optimizer.name=adamw", "train.optimizer.weight_decay=0.05"],
    # Capacity: the preset fits its own training split no better than val (train mAP50 0.94, RBC 0.88,
    # at the best step), so a larger model may learn more per step. Step time against the preset's
    # (train_on_batch on one synthetic batch; in the real pipeline tiny_x2 measured at least 1.45x):
    # three convs per tower 1.29x, 96 channels in neck and head 1.67x, MobileNetV2 0.35 from random
    # init for the tiny backbone 1.57x, the tiny backbone at twice the channels 1.21x.
    "bccd + 3 convs": ["model.head.convs=3"],
    "bccd + 96 channels": ["model.neck.channels=96", "model.head.channels=96"],
    "bccd + mobilenetv2_035": ["model.backbone.name=mobilenetv2_035"],
    "bccd + tiny_x2": ["model.backbone.name=tiny_x2"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="train.steps of every candidate")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="run these candidates only")
    parser.add_argument("--out", default="/tmp/bccd-ablation", help="run directories go here (kept)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BCCD root (Annotations/, JPEGImages/, ...)")
    return parser.parse_args()


def train(name: str, overrides: list[str], seed: int, args) -> dict:
    """Train one candidate with one seed (resuming a run left unfinished); returns its val curve."""
    run_dir = Path(args.out) / f"{name.replace(' ', '')}-seed{seed}-steps{args.steps}"
    data = [f"data.{split}=" + json.dumps({"format": "voc", "path": args.data, "split": split})
            for split in ("train", "val")]
    command = [str(Path(sys.executable).with_name("detkeeper")), "train", "bccd", "--run-dir", str(run_dir), "--json",
               *(f"--set={item}" for item in [*data, f"train.steps={args.steps}", f"train.seed={seed}",
                                              "checkpoint.keep_last=1000", *overrides])]
    started = time.time()
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if finished.returncode != 0:
        raise SystemExit(f"{name} (seed {seed}) failed:\n{finished.stderr[-3000:]}")
    ledger = json.loads((run_dir / "checkpoints" / "ledger.json").read_text())
    curve = sorted((entry["step"], entry["metrics"]) for entry in ledger["checkpoints"])
    best = max(curve, key=lambda item: (item[1]["val_mAP"], -item[0]))
    print(f"  {name} seed {seed}: best val mAP {best[1]['val_mAP']:.3f} at step {best[0]}, "
          f"{time.time() - started:.0f} s", flush=True)
    return {"best": best[1], "best_step": best[0], "last": curve[-1][1], "last_step": curve[-1][0]}


def main() -> None:
    args = parse_args()
    if not Path(args.data).is_dir():
        raise SystemExit(f"{args.data}: no BCCD dataset there (see --data)")
    names = args.only or list(CANDIDATES)
    print(f"{len(names)} candidates x seeds {args.seeds}, {args.steps} steps each; load average "
          f"{'/'.join(f'{value:.1f}' for value in os.getloadavg())}", flush=True)
    results = {name: [train(name, CANDIDATES[name], seed, args) for seed in args.seeds] for name in names}

    def mean(name: str, which: str, stat: str) -> float:
        return statistics.fmean(run[which][f"val_{stat}"] for run in results[name])

    baseline = names[0]
    print(f"\nval split, {args.steps} steps, seeds {args.seeds}; differences against {baseline!r} in points")
    print(f"{'candidate':18s} | {'best mAP':>8s} {'d':>5s} {'mAP50':>6s} {'d':>5s} | {'last mAP':>8s} {'mAP50':>6s} |"
          f" per seed (best mAP / mAP50 @ step)")
    for name in names:
        seeds = "  ".join(f"{run['best']['val_mAP']:.3f}/{run['best']['val_mAP50']:.3f}@{run['best_step']}"
                          for run in results[name])
        print(f"{name:18s} | {mean(name, 'best', 'mAP'):8.3f} "
              f"{100 * (mean(name, 'best', 'mAP') - mean(baseline, 'best', 'mAP')):+5.1f} "
              f"{mean(name, 'best', 'mAP50'):6.3f} "
              f"{100 * (mean(name, 'best', 'mAP50') - mean(baseline, 'best', 'mAP50')):+5.1f} | "
              f"{mean(name, 'last', 'mAP'):8.3f} {mean(name, 'last', 'mAP50'):6.3f} | {seeds}")
    print(f"load average at the end: {'/'.join(f'{value:.1f}' for value in os.getloadavg())}")


if __name__ == "__main__":
    main()
