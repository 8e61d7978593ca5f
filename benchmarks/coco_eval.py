"""How fast is detkeeper's COCO evaluation, and how much of a validation pass does it take?

Measures, in one run, on synthetic COCO-like data (80 classes with COCO's id gaps, about 7 ground
truth boxes and 50 detections per image, 640x480 images, seeded numpy) at each size:
  1. detkeeper, faster-coco-eval backend: ``update()`` per batch of 8 from padded arrays + ``result()``;
  2. detkeeper, pycocotools backend: the same;
  3. pycocotools from JSON files (the usual way): load ground truth + ``loadRes`` + evaluate +
     accumulate + summarize; writing the files is not timed;
  4. faster-coco-eval from the same JSON files.
Times are the best wall seconds of ``--repeats`` runs; ratios are against (3), measured in the
same run. All four print the same mAP.

Then the evaluation's share of a validation pass of the demo model: the registry's
``retinanet_tiny`` (demo preset: 256 px, tiny backbone, random weights, 4 classes) runs
``detect`` (tf.function, after warm-up) on synthetic 256x256 images at batch 8 (the count rounded
up to whole batches), and its detections are evaluated against synthetic ground truth. Random
weights score every anchor near the focal-loss prior (0.01), below the default 0.05 threshold, so
NMS keeps all candidates (``score_threshold=0``): 100 detections per image, the most the
evaluator is given with the default ``max_detections``.

Usage: .venv/bin/python benchmarks/coco_eval.py [--sizes 500,5000,20000] [--model-images 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from detkeeper.evaluation import CocoEvaluator  # noqa: E402

CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80
BATCH = 8
WIDTH, HEIGHT = 640, 480


def synthetic_split(num_images: int, seed: int, classes: list[int], gt_mean: float, det_mean: float,
                    width: float, height: float) -> list[dict]:
    """Per image: ground truth boxes/classes/crowd and detections (yxyx px), COCO-like sizes."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(num_images):
        m, n = rng.poisson(gt_mean), rng.poisson(det_mean)
        size = np.exp(rng.uniform(np.log(4), np.log(min(width, height) * 0.8), (m, 2)))
        corner = rng.uniform(0, 1, (m, 2)) * (np.array([height, width]) - size)
        gt = np.concatenate([corner, corner + size], axis=1)
        gt_classes = rng.choice(classes, m)
        det = np.concatenate([rng.uniform(0, [height / 2, width / 2], (n, 2)),
                              rng.uniform([height / 2, width / 2], [height, width], (n, 2))], axis=1)
        det_classes = rng.choice(classes, n)
        if m:
            near = rng.random(n) < 0.6  # most detections sit on a ground-truth box, jittered
            source = rng.integers(0, m, n)
            jitter = rng.normal(0, 0.1, (n, 4)) * np.tile(size[source], 2)
            det[near] = (gt[source] + jitter)[near]
            det[:, 2:] = np.maximum(det[:, 2:], det[:, :2])
            same_class = near & (rng.random(n) < 0.8)
            det_classes[same_class] = gt_classes[source][same_class]
        images.append({"id": 100_000 + index * 7, "gt": gt, "gt_classes": gt_classes,
                       "crowd": rng.random(m) < 0.01, "det": det, "scores": rng.random(n), "det_classes": det_classes})
    return images


def _pad(rows: list[np.ndarray], fill: float, tail: tuple[int, ...] = ()) -> np.ndarray:
    out = np.full((len(rows), max(len(r) for r in rows), *tail), fill)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def as_batches(images: list[dict]) -> list[tuple[dict, dict]]:
    """Padded arrays per batch, as the input pipeline and a model give them (not timed)."""
    batches = []
    for start in range(0, len(images), BATCH):
        chunk = images[start:start + BATCH]
        batches.append((
            {"image_ids": np.array([i["id"] for i in chunk]), "boxes": _pad([i["gt"] for i in chunk], 0.0, (4,)),
             "classes": _pad([i["gt_classes"] for i in chunk], -1).astype(np.int64),
             "is_crowd": _pad([i["crowd"] for i in chunk], 0).astype(bool)},
            {"boxes": _pad([i["det"] for i in chunk], 0.0, (4,)), "scores": _pad([i["scores"] for i in chunk], 0.0),
             "classes": _pad([i["det_classes"] for i in chunk], -1).astype(np.int64)}))
    return batches


def write_json(images: list[dict], classes: list[int], directory: Path) -> tuple[Path, Path]:
    def xywh(b):
        return [b[1], b[0], b[3] - b[1], b[2] - b[0]]
    annotations, results = [], []
    for image in images:
        for box, c, crowd in zip(image["gt"].tolist(), image["gt_classes"].tolist(), image["crowd"].tolist()):
            x, y, w, h = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": c,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)})
        for box, s, c in zip(image["det"].tolist(), image["scores"].tolist(), image["det_classes"].tolist()):
            results.append({"image_id": image["id"], "category_id": c, "bbox": xywh(box), "score": s})
    gt_path, results_path = directory / "gt.json", directory / "results.json"
    gt_path.write_text(json.dumps({"images": [{"id": i["id"], "width": WIDTH, "height": HEIGHT} for i in images],
                                   "annotations": annotations,
                                   "categories": [{"id": c, "name": f"class{c}"} for c in classes]}))
    results_path.write_text(json.dumps(results))
    return gt_path, results_path


def timed(function, repeats: int = 1) -> tuple[float, float]:
    """Best wall time of `repeats` calls (the machines are shared and noisy) and the last value."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def run_detkeeper(batches, classes, backend) -> float:
    evaluator = CocoEvaluator([{"id": c, "name": f"class{c}"} for c in classes], backend=backend)
    for ground_truth, detections in batches:
        evaluator.update(ground_truth, detections)
    return evaluator.result().stats["mAP"]


def run_from_json(gt_path: Path, results_path: Path, library: str) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        if library == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval as Eval
            coco_gt = COCO(str(gt_path))
        else:
            from faster_coco_eval import COCO
            from faster_coco_eval import COCOeval_faster as Eval
            coco_gt = COCO(str(gt_path))
        evaluation = Eval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def library_benchmark(sizes: list[int], repeats: int) -> None:
    print(f"Synthetic COCO-like data: 80 classes, ~7 GT and ~50 detections per image, {os.cpu_count()} CPU cores, "
          f"best of {repeats}")
    header = f"{'images':>7} {'detections':>10} | {'method':<38} {'seconds':>8} {'vs pycocotools JSON':>19} {'mAP':>8}"
    print(header)
    print("-" * len(header))
    for size in sizes:
        images = synthetic_split(size, seed=size, classes=CATEGORY_IDS, gt_mean=7, det_mean=50,
                                 width=WIDTH, height=HEIGHT)
        batches = as_batches(images)
        num_dets = sum(len(i["scores"]) for i in images)
        with tempfile.TemporaryDirectory() as tmp:
            gt_path, results_path = write_json(images, CATEGORY_IDS, Path(tmp))
            rows = [
                ("detkeeper arrays, faster_coco_eval",
                 timed(lambda: run_detkeeper(batches, CATEGORY_IDS, "faster_coco_eval"), repeats)),
                ("detkeeper arrays, pycocotools",
                 timed(lambda: run_detkeeper(batches, CATEGORY_IDS, "pycocotools"), repeats)),
                ("pycocotools from JSON", timed(lambda: run_from_json(gt_path, results_path, "pycocotools"), repeats)),
                ("faster-coco-eval from JSON", timed(lambda: run_from_json(gt_path, results_path, "faster"), repeats)),
            ]
        baseline = rows[2][1][0]
        for name, (seconds, m_ap) in rows:
            print(f"{size:>7} {num_dets:>10} | {name:<38} {seconds:>8.2f} {baseline / seconds:>18.2f}x {m_ap:>8.5f}")


def model_share(num_images: int, repeats: int) -> None:
    import keras
    import tensorflow as tf

    from detkeeper.config.schema import BackboneConfig, ModelConfig
    from detkeeper.models import build_model
    from detkeeper.models.registry import Postprocess

    size, classes = 256, [1, 2, 3, 4]
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(name="retinanet_tiny", image_size=size,
                                    backbone=BackboneConfig(name="tiny", weights="none")),
                        num_classes=len(classes), postprocess=Postprocess(score_threshold=0.0))
    detect = tf.function(model.detect)
    rng = np.random.default_rng(0)
    batches = [tf.constant(rng.uniform(0, 255, (BATCH, size, size, 3)), tf.float32)
               for _ in range(-(-num_images // BATCH))]
    detect(batches[0])  # trace and warm up
    detect_seconds, outputs = timed(lambda: [{k: v.numpy() for k, v in detect(images).items()}
                                             for images in batches], repeats)

    truth = synthetic_split(len(batches) * BATCH, seed=1, classes=classes, gt_mean=3, det_mean=0,
                            width=size, height=size)
    gt_batches = [g for g, _ in as_batches(truth)]
    num_dets = sum(int(o["num_detections"].sum()) for o in outputs)
    print(f"\nValidation pass of the demo model (retinanet_tiny, {size} px, random weights, batch {BATCH}, "
          f"{len(batches) * BATCH} images, {num_dets} detections)")
    print(f"  model.detect (tf.function, warmed up)  {detect_seconds:8.3f} s")
    for backend in ("faster_coco_eval", "pycocotools"):
        def evaluate():
            evaluator = CocoEvaluator([{"id": c, "name": f"class{c}"} for c in classes], backend=backend)
            for ground_truth, output in zip(gt_batches, outputs):
                # model indices -> label-map ids (1-based here); padding stays -1
                ids = np.where(output["classes"] >= 0, output["classes"] + 1, -1)
                evaluator.update(ground_truth, {**output, "classes": ids})
            return evaluator.result()

        seconds, _ = timed(evaluate, repeats)
        print(f"  evaluation, {backend:<17}        {seconds:8.3f} s  "
              f"({100 * seconds / (seconds + detect_seconds):.1f}% of detect + evaluate)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,5000,20000", help="comma-separated image counts")
    parser.add_argument("--model-images", type=int, default=100, help="images for the demo-model share (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="time each measurement this often, keep the best")
    args = parser.parse_args()
    library_benchmark([int(s) for s in args.sizes.split(",") if s], args.repeats)
    if args.model_images:
        model_share(args.model_images, args.repeats)


if __name__ == "__main__":
    main()
