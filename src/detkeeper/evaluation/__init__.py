"""COCO box evaluation from arrays: exact (the COCO API computes every number) and fast.

    evaluator = CocoEvaluator(label_map)          # backend="faster_coco_eval" | "pycocotools"
    evaluator.update(ground_truth, detections)    # per batch; label-map ids, yxyx pixels
    result = evaluator.result()                   # EvaluationResult: stats, per class, PR curves
"""

from detkeeper.evaluation.coco import BACKENDS, CocoEvaluator
from detkeeper.evaluation.results import STAT_NAMES, EvaluationResult

__all__ = ["BACKENDS", "CocoEvaluator", "EvaluationResult", "STAT_NAMES"]
