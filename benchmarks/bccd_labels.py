"""How complete are BCCD's labels? A trained run's confident detections that no label matches.

BCCD (the VOC release in ../shared/data/bccd) is said to leave red cells unlabelled. This script
measures it: it evaluates a run's best checkpoint on one split with ``detkeeper evaluate`` (the
product's own evaluation, so its ``detections.json``), then matches each image's detections to its
labels as COCO does at IoU 0.5 (highest score first, each label matched once, same class), and
prints per class: labelled boxes, confident detections (score >= ``--score``), how many of them
match a label, how many of the others lie away from every label (IoU < 0.1 with each), and how many
labelled boxes no confident detection found. It also counts the images
that label no object of a class, and draws the images with the most unmatched confident detections
(labels green, unmatched detections red, matched ones thin blue) for a person to judge: a red box on
a whole cell is a label missing, a red box on nothing a false detection.

Usage: .venv/bin/python benchmarks/bccd_labels.py RUN [--split train] [--score 0.4] [--draw 4]
       [--out /tmp/bccd-labels] [--data ../shared/data/bccd/BCCD]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import xywh_to_yxyx
from detkeeper.data.voc import read_voc

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "bccd" / "BCCD"
MATCH_IOU = 0.5
AWAY_IOU = 0.1
"""An unmatched detection overlapping no label of any class by this much lies away from every label:
a cell nobody labelled, or nothing at all (the drawings tell which), not a box placed badly."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory trained on BCCD (e.g. one of bccd_ablation.py's)")
    parser.add_argument("--split", default="train", help="the VOC split to look at (default train)")
    parser.add_argument("--score", type=float, default=0.4, help="a detection at or above this is confident")
    parser.add_argument("--draw", type=int, default=4, help="how many images to draw")
    parser.add_argument("--out", default="/tmp/bccd-labels", help="the evaluation and the drawings go here")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="BCCD root (Annotations/, JPEGImages/, ...)")
    return parser.parse_args()


def pairwise_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """``[N, 4] x [M, 4] -> [N, M]`` IoU of yxyx boxes."""
    low = np.maximum(boxes[:, None, :2], others[None, :, :2])
    high = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    intersection = np.prod(np.clip(high - low, 0, None), axis=-1)

    def area(b: np.ndarray) -> np.ndarray:
        return np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)

    union = area(boxes)[:, None] + area(others)[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def match(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which detections (one class, one image) match a label: COCO's greedy order at IoU 0.5."""
    matched = np.zeros(len(boxes), bool)
    free = np.ones(len(labels), bool)
    overlaps = pairwise_iou(boxes, labels) if len(labels) else np.zeros((len(boxes), 0))
    for detection in np.argsort(-scores, kind="stable"):
        candidates = np.where(free, overlaps[detection], -1.0)
        if candidates.size and candidates.max() >= MATCH_IOU:
            free[candidates.argmax()] = False
            matched[detection] = True
    return matched


def evaluate(args) -> Path:
    """``detkeeper evaluate`` of the run's best checkpoint on the split: its detections.json."""
    out = Path(args.out) / f"eval-{args.split}"
    command = [str(Path(sys.executable).with_name("detkeeper")), "evaluate", args.run, "--data", args.data,
               "--split", args.split, "--out", str(out), "--quiet"]
    finished = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if finished.returncode != 0:
        raise SystemExit(f"detkeeper evaluate failed:\n{finished.stderr[-3000:]}")
    return out / "detections.json"


def main() -> None:
    args = parse_args()
    label_map = LabelMap.read(Path(args.run) / "label_map.pbtxt")
    records = {record.image_id: record for record in read_voc(args.data, args.split, label_map).records}
    detections: dict[str, list[dict]] = {}
    for detection in json.loads(evaluate(args).read_text()):
        detections.setdefault(str(detection["image_id"]), []).append(detection)

    counts: Counter = Counter()
    unmatched_per_image: dict[str, int] = {}
    drawn: dict[str, list[tuple[np.ndarray, bool]]] = {}
    for image_id, record in records.items():
        confident = [d for d in detections.get(image_id, []) if d["score"] >= args.score]
        drawn[image_id] = []
        for class_id in label_map.ids:
            name = label_map.item_of_id(class_id).name
            labels = record.boxes[record.class_ids == class_id]
            mine = [d for d in confident if d["category_id"] == class_id]
            boxes = xywh_to_yxyx(np.array([d["bbox"] for d in mine]).reshape(-1, 4))
            matched = match(boxes, np.array([d["score"] for d in mine]), labels)
            counts[name, "labelled"] += len(labels)
            counts[name, "images without"] += not len(labels)
            counts[name, "confident"] += len(mine)
            counts[name, "matched"] += int(matched.sum())
            if len(record.boxes) and len(boxes):
                away = pairwise_iou(boxes, record.boxes).max(axis=1) < AWAY_IOU
            else:
                away = np.ones(len(boxes), bool)
            counts[name, "away"] += int((away & ~matched).sum())
            unmatched_per_image[image_id] = unmatched_per_image.get(image_id, 0) + int((~matched).sum())
            drawn[image_id] += list(zip(boxes, matched))

    print(f"{args.run} on {args.split} ({len(records)} images), detections with score >= {args.score}, "
          f"matched at IoU {MATCH_IOU}:")
    print(f"{'class':10s} {'labelled':>8s} {'confident':>9s} {'matched':>7s} {'unmatched':>9s} {'away':>5s}"
          f" {'labels missed':>13s} {'images labelling none':>21s}")
    for name in label_map.names:
        print(f"{name:10s} {counts[name, 'labelled']:8d} {counts[name, 'confident']:9d} {counts[name, 'matched']:7d} "
              f"{counts[name, 'confident'] - counts[name, 'matched']:9d} {counts[name, 'away']:5d} "
              f"{counts[name, 'labelled'] - counts[name, 'matched']:13d} {counts[name, 'images without']:21d}")

    worst = sorted(unmatched_per_image, key=lambda image_id: -unmatched_per_image[image_id])[:args.draw]
    for image_id in worst:
        record = records[image_id]
        image = Image.open(record.image_path).convert("RGB")
        pen = ImageDraw.Draw(image)
        for box in record.boxes:
            pen.rectangle([box[1], box[0], box[3], box[2]], outline=(0, 200, 0), width=3)
        for box, matched in drawn[image_id]:
            pen.rectangle([box[1], box[0], box[3], box[2]], outline=(0, 0, 255) if matched else (255, 0, 0),
                          width=1 if matched else 2)
        path = Path(args.out) / f"{image_id}.png"
        image.save(path)
        print(f"  {path}: {unmatched_per_image[image_id]} unmatched confident detections, "
              f"{len(record.boxes)} labels")


if __name__ == "__main__":
    main()
