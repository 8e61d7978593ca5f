"""Random scenes: the evaluator through either backend equals pycocotools run directly on the same
boxes, to 1e-12, including COCO's corner cases (crowds, empty images, >100 detections per image,
tied scores across images, integer boxes that hit IoU thresholds exactly)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detkeeper.evaluation import BACKENDS, CocoEvaluator

CATEGORY_IDS = (1, 3, 4, 7)  # gaps, as label maps have


@dataclass
class Image:
    image_id: int
    gt_boxes: np.ndarray  # [m, 4] yxyx float64
    gt_classes: np.ndarray
    crowd: np.ndarray
    area: np.ndarray | None
    det_boxes: np.ndarray  # [n, 4]
    scores: np.ndarray
    det_classes: np.ndarray


def _random_boxes(rng: np.random.Generator, count: int, integer: bool) -> np.ndarray:
    y, x = rng.uniform(0, 200, (2, count))
    h, w = np.exp(rng.uniform(math.log(2), math.log(160), (2, count)))  # small, medium and large
    boxes = np.stack([y, x, y + h, x + w], axis=1)
    return np.round(boxes) if integer else boxes


def _detections(rng: np.random.Generator, gt_boxes, gt_classes, count, classes, integer, tied):
    boxes = _random_boxes(rng, count, integer)
    det_classes = rng.choice(classes, count)
    if len(gt_boxes):
        near = rng.random(count) < 0.7  # most detections sit on a ground-truth box, jittered
        source = rng.integers(0, len(gt_boxes), count)
        size = np.repeat(gt_boxes[source, 2:] - gt_boxes[source, :2], 2, axis=0).reshape(count, 4)
        jittered = gt_boxes[source] + rng.normal(0, 0.08, (count, 4)) * size
        jittered = np.round(jittered) if integer else jittered
        jittered[:, 2:] = np.maximum(jittered[:, 2:], jittered[:, :2])
        boxes[near] = jittered[near]
        keep_class = near & (rng.random(count) < 0.85)
        det_classes[keep_class] = gt_classes[source][keep_class]
    scores = rng.random(count)
    scores = np.round(scores, 1) if tied else scores
    return boxes, scores, det_classes


@st.composite
def scenes(draw) -> tuple[list[Image], tuple[int, ...], list[int]]:
    num_images = draw(st.integers(1, 6))
    classes = CATEGORY_IDS[:draw(st.integers(1, 4))]
    image_ids = draw(st.lists(st.integers(0, 10**6), min_size=num_images, max_size=num_images, unique=True))
    gt_counts = draw(st.lists(st.integers(0, 8), min_size=num_images, max_size=num_images))
    det_counts = draw(st.lists(st.sampled_from([0, 1, 4, 15, 40, 130]), min_size=num_images, max_size=num_images))
    integer, tied, with_area = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    images = []
    for image_id, m, n in zip(image_ids, gt_counts, det_counts):
        gt_boxes = _random_boxes(rng, m, integer)
        gt_classes = rng.choice(classes, m)
        crowd = rng.random(m) < 0.15
        box_area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        area = box_area * rng.uniform(0.3, 1.0, m) if with_area else None  # a segmentation's area
        det = _detections(rng, gt_boxes, gt_classes, n, classes, integer, tied)
        images.append(Image(image_id, gt_boxes, gt_classes, crowd, area, *det))
    batch_sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=num_images))
    return images, classes, batch_sizes


def _pad(rows: list[np.ndarray], width: int, fill: float, tail: tuple[int, ...] = ()) -> np.ndarray:
    out = np.full((len(rows), width, *tail), fill, dtype=np.float64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _batches(images: list[Image], batch_sizes: list[int]):
    start, k = 0, 0
    while start < len(images):
        batch = images[start:start + batch_sizes[k % len(batch_sizes)]]
        start, k = start + len(batch), k + 1
        m = max(len(i.gt_classes) for i in batch) + k % 2
        n = max(len(i.det_classes) for i in batch) + 1
        ground_truth = {
            "image_ids": np.array([i.image_id for i in batch]),
            "boxes": _pad([i.gt_boxes for i in batch], m, math.nan, (4,)),
            "classes": _pad([i.gt_classes for i in batch], m, -1).astype(np.int32),
            "is_crowd": _pad([i.crowd for i in batch], m, 0).astype(bool),
        }
        if batch[0].area is not None:
            ground_truth["area"] = _pad([i.area for i in batch], m, math.nan)
        detections = {
            "boxes": _pad([i.det_boxes for i in batch], n, math.nan, (4,)).astype(np.float64),
            "scores": _pad([i.scores for i in batch], n, math.nan),
            "classes": _pad([i.det_classes for i in batch], n, -1),  # floats, as NMS returns them
        }
        if k % 2:
            ground_truth["num_boxes"] = np.array([len(i.gt_classes) for i in batch])
            detections["num_detections"] = np.array([len(i.det_classes) for i in batch])
        yield ground_truth, detections


def _xywh(box: np.ndarray) -> list[float]:
    ymin, xmin, ymax, xmax = box.tolist()
    return [xmin, ymin, xmax - xmin, ymax - ymin]


def _pycocotools_direct(images: list[Image], classes: tuple[int, ...]):
    """pycocotools as its README uses it, fed the same boxes as COCO dicts with the original ids."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    annotations, results = [], []
    for image in images:
        for box, category, crowd, k in zip(image.gt_boxes, image.gt_classes, image.crowd, range(len(image.crowd))):
            x, y, w, h = _xywh(box)
            area = w * h if image.area is None else float(image.area[k])
            annotations.append({"id": len(annotations) + 1, "image_id": image.image_id, "category_id": int(category),
                                "bbox": [x, y, w, h], "area": area, "iscrowd": int(crowd)})
        for box, score, category in zip(image.det_boxes, image.scores, image.det_classes):
            results.append({"image_id": image.image_id, "category_id": int(category), "bbox": _xywh(box),
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": [{"id": i.image_id} for i in images], "annotations": annotations,
                           "categories": [{"id": c, "name": f"c{c}"} for c in classes]}
        coco_gt.createIndex()
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenes())
def test_stats_equal_pycocotools_on_random_scenes(scene):
    images, classes, batch_sizes = scene
    if not any(len(i.det_classes) for i in images):  # pycocotools' loadRes cannot take an empty list
        images[0] = dataclasses.replace(images[0], det_boxes=np.array([[0.0, 0.0, 1.0, 1.0]]),
                                        scores=np.array([0.5]), det_classes=np.array([classes[0]]))
    reference = _pycocotools_direct(images, classes)
    precision = reference.eval["precision"]
    for backend in BACKENDS:
        evaluator = CocoEvaluator([{"id": c, "name": f"c{c}"} for c in classes], backend=backend)
        for ground_truth, detections in _batches(images, batch_sizes):
            evaluator.update(ground_truth, detections)
        result = evaluator.result()
        for name, got, want in zip(result.stats, result.stats.values(), reference.stats):
            assert abs(got - want) <= 1e-12, (backend, name, got, want)
        for k, category in enumerate(classes):
            s = precision[:, :, k, 0, 2]
            want = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
            assert abs(result.per_class_ap[f"c{category}"] - want) <= 1e-12, (backend, category)
        assert result.num_images == len(images)
        assert result.num_detections == sum(len(i.scores) for i in images)
