"""Precision-recall PNGs: one per class and an overview, valid images, written without pyplot."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from detkeeper.evaluation import CocoEvaluator
from detkeeper.evaluation.plots import OVERVIEW_NAME, save_precision_recall_plots

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "traffic light"}, {"id": 5, "name": "a/b"}]


def _result():
    evaluator = CocoEvaluator(CATEGORIES)
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (2, 6, 2))
    gt_boxes = np.concatenate([gt, gt + rng.uniform(5, 60, (2, 6, 2))], axis=2)
    det_boxes = gt_boxes + rng.normal(0, 3, gt_boxes.shape)
    det_boxes[..., 2:] = np.maximum(det_boxes[..., 2:], det_boxes[..., :2])
    classes = np.array([[1, 1, 2, 2, 1, 2], [2, 1, 1, -1, -1, -1]])  # class 5: no ground truth
    evaluator.update({"image_ids": [10, 11], "boxes": gt_boxes, "classes": classes},
                     {"boxes": det_boxes, "scores": rng.random((2, 6)), "classes": np.where(classes > 0, classes, 1)})
    return evaluator.result()


def test_one_png_per_class_and_an_overview(tmp_path):
    result = _result()
    paths = save_precision_recall_plots(result, tmp_path / "plots")
    names = [p.name for p in paths]
    assert names == ["precision_recall_000_cat.png", "precision_recall_001_traffic_light.png",
                     "precision_recall_002_a_b.png", OVERVIEW_NAME]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp files left
    for path in paths:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"
        with Image.open(path) as image:
            assert image.size[0] > 100 and image.size[1] > 100
            assert len(np.unique(np.asarray(image.convert("L")))) > 2  # something is drawn


def test_plotting_leaves_pyplot_and_the_backend_alone(tmp_path):
    code = ("import sys, matplotlib, numpy; matplotlib.use('svg'); "
            "from detkeeper.evaluation.results import EvaluationResult; "
            "from detkeeper.evaluation.plots import save_precision_recall_plots; "
            "r = EvaluationResult({'mAP50': 0.5}, {'a': 0.4}, {'a': 0.5}, {'a': numpy.linspace(1, 0, 101)}, "
            "numpy.linspace(0, 1, 101), 1, 1, 'pycocotools'); "
            f"save_precision_recall_plots(r, {str(tmp_path)!r}); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg", "False"]
    assert len(list(tmp_path.glob("*.png"))) == 2
