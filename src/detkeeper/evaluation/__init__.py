"""COCO box evaluation from arrays: exact (the COCO API computes every number) and fast.

    evaluator = CocoEvaluator(label_map)          # backend="faster_coco_eval" | "pycocotools"
    evaluator.update(ground_truth, detections)    # per batch; label-map ids, yxyx pixels
    result = evaluator.result()                   # EvaluationResult: stats, per class, PR curves

    model.compile(optimizer, metrics=[CocoMetric(label_map)])   # mAP in evaluate, val_mAP in fit

``CocoMetric`` is loaded on first use, so importing this package does not import TensorFlow.
"""

from detkeeper.evaluation.coco import BACKENDS, CocoEvaluator
from detkeeper.evaluation.results import STAT_NAMES, EvaluationResult

__all__ = ["BACKENDS", "CocoEvaluator", "CocoMetric", "EvaluationResult", "STAT_NAMES"]


def __getattr__(name: str):
    if name == "CocoMetric":  # a Keras metric: importing it imports Keras and TensorFlow
        from detkeeper.evaluation.metric import CocoMetric  # light: imports TensorFlow

        return CocoMetric
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
