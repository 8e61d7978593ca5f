"""What a COCO box evaluation produced, in the shapes its readers want.

One :class:`EvaluationResult` feeds Keras logs (``as_logs``: ``val_mAP`` for the checkpoint
callback to monitor), ``metrics.json`` (``to_json_dict``), TensorBoard under the TF Object
Detection API's metric names (``tf_od_api_metrics``), the console (``format_table``) and the
precision-recall plots. Every number is read from the COCO API's own ``stats`` and accumulated
``precision`` array; nothing here recomputes a match.

Undefined values stay COCO's ``-1`` (an average with nothing to average, e.g. ``mAP_small`` with no
small objects, or the AP of a class with no non-crowd ground truth), so every field is a plain
JSON number and ``-1`` can never be mistaken for a score.

With ``max_detections`` N the stats keep their names (``AR100`` is recall at N, as ``mAP`` is AP
at N) and COCO's ``maxDets`` are :func:`coco_max_dets`, which :meth:`format_table` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from detkeeper.config.schema import STAT_NAMES

# coco_tools.COCOEvalWrapper.ComputeMetrics' keys, prefixed as coco_evaluation.py does, in COCO's order.
_TF_OD_API_NAMES = tuple("DetectionBoxes_" + name for name in (
    "Precision/mAP", "Precision/mAP@.50IOU", "Precision/mAP@.75IOU", "Precision/mAP (small)",
    "Precision/mAP (medium)", "Precision/mAP (large)", "Recall/AR@1", "Recall/AR@10", "Recall/AR@100",
    "Recall/AR@100 (small)", "Recall/AR@100 (medium)", "Recall/AR@100 (large)"))

# (AP or AR, IoU, area, index into maxDets) of each stat, as COCO's summarize prints it.
_SUMMARY_LINES = (
    ("AP", "0.50:0.95", "all", 2), ("AP", "0.50", "all", 2), ("AP", "0.75", "all", 2),
    ("AP", "0.50:0.95", "small", 2), ("AP", "0.50:0.95", "medium", 2), ("AP", "0.50:0.95", "large", 2),
    ("AR", "0.50:0.95", "all", 0), ("AR", "0.50:0.95", "all", 1), ("AR", "0.50:0.95", "all", 2),
    ("AR", "0.50:0.95", "small", 2), ("AR", "0.50:0.95", "medium", 2), ("AR", "0.50:0.95", "large", 2),
)


def coco_max_dets(max_detections: int) -> tuple[int, int, int]:
    """COCO's ``maxDets`` for a cap of N detections per image: ``(1, min(10, N), N)``.

    COCO keeps at most ``maxDets[-1]`` detections per image, so with N <= 10 recall at 10 would be
    recall at N under another name; its slot says so instead, and every N >= 1 is valid. The three
    slots stay (equal values allowed): both libraries' ``summarize`` read ``maxDets[0..2]``.
    """
    return 1, min(10, int(max_detections)), int(max_detections)


def _mean_defined(values: np.ndarray) -> float:
    """COCO's average: over entries > -1, or -1 when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """COCO box metrics of one evaluation.

    ``stats`` holds the 12 numbers of ``COCOeval.stats`` under :data:`STAT_NAMES`; ``AR100`` and
    the ``mAP*`` use the evaluator's ``max_detections`` N (100 unless changed), ``AR10`` uses
    ``min(10, N)`` (:func:`coco_max_dets`). ``per_class_ap`` is
    AP@[.5:.95] and ``per_class_ap50`` AP@.5 per class name (area all, ``max_detections``), -1 for
    a class without ground truth. ``precision_recall`` is, per class, the precision at COCO's 101
    ``recall_thresholds`` at IoU 0.5 (all -1 without ground truth, 0 past the highest recall
    reached). ``num_detections`` counts the detections passed in, before COCO's per-image cap.
    """

    stats: dict[str, float]
    per_class_ap: dict[str, float]
    per_class_ap50: dict[str, float]
    precision_recall: dict[str, np.ndarray]
    recall_thresholds: np.ndarray
    num_images: int
    num_detections: int
    backend: str
    max_detections: int = 100
    image_ids: tuple[int | str, ...] = field(default=(), repr=False)

    @classmethod
    def from_cocoeval(cls, evaluation: Any, names_by_id: Mapping[int, str], *, backend: str,
                      max_detections: int, num_images: int, num_detections: int,
                      image_ids: tuple[int | str, ...] = ()) -> "EvaluationResult":
        """Read a summarized ``COCOeval`` (either library: both keep ``precision`` as [T, R, K, A, M])."""
        params = evaluation.params
        precision = np.asarray(evaluation.eval["precision"], dtype=np.float64)
        stats = [float(value) for value in evaluation.stats[:12]]
        if params.maxDets[-1] != 100:
            # pycocotools' summarize reads maxDets=100 for its first number whatever the params say.
            stats[0] = _mean_defined(precision[:, :, :, 0, -1])
        iou50 = int(np.flatnonzero(np.asarray(params.iouThrs) == 0.5)[0])
        per_class_ap, per_class_ap50, curves = {}, {}, {}
        for k, category_id in enumerate(params.catIds):
            name = names_by_id[int(category_id)]
            per_class_ap[name] = _mean_defined(precision[:, :, k, 0, -1])
            per_class_ap50[name] = _mean_defined(precision[iou50, :, k, 0, -1])
            curves[name] = precision[iou50, :, k, 0, -1].copy()
        return cls(stats=dict(zip(STAT_NAMES, stats)), per_class_ap=per_class_ap, per_class_ap50=per_class_ap50,
                   precision_recall=curves, recall_thresholds=np.asarray(params.recThrs, dtype=np.float64),
                   num_images=int(num_images), num_detections=int(num_detections), backend=backend,
                   max_detections=int(max_detections), image_ids=tuple(image_ids))

    # --- views ----------------------------------------------------------------------------------
    def as_logs(self, prefix: str = "val_") -> dict[str, float]:
        """The 12 stats as Keras ``logs`` entries: ``val_mAP``, ``val_mAP50``, ..."""
        return {prefix + name: value for name, value in self.stats.items()}

    def tf_od_api_metrics(self, include_per_class: bool = False) -> dict[str, float]:
        """The metric names the TF Object Detection API's ``CocoDetectionEvaluator`` reports, so
        dashboards built on them keep working; per class as ``PerformanceByCategory/mAP/<name>``."""
        metrics = dict(zip(_TF_OD_API_NAMES, self.stats.values()))
        if include_per_class:
            metrics.update((f"DetectionBoxes_PerformanceByCategory/mAP/{name}", ap)
                           for name, ap in self.per_class_ap.items())
        return metrics

    def to_json_dict(self) -> dict[str, Any]:
        """Plain Python numbers and lists only (for ``metrics.json``); -1 marks undefined values."""
        return {
            "backend": self.backend,
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "max_detections": self.max_detections,
            "stats": {name: float(value) for name, value in self.stats.items()},
            "per_class_ap": {name: float(value) for name, value in self.per_class_ap.items()},
            "per_class_ap50": {name: float(value) for name, value in self.per_class_ap50.items()},
            "recall_thresholds": self.recall_thresholds.tolist(),
            "precision_recall": {name: curve.tolist() for name, curve in self.precision_recall.items()},
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> "EvaluationResult":
        """The result :meth:`to_json_dict` wrote (e.g. read back from ``metrics.json``); image ids are
        not stored there and come back empty."""
        return cls(stats={name: float(data["stats"][name]) for name in STAT_NAMES},
                   per_class_ap={name: float(value) for name, value in data["per_class_ap"].items()},
                   per_class_ap50={name: float(value) for name, value in data["per_class_ap50"].items()},
                   precision_recall={name: np.asarray(curve, dtype=np.float64)
                                     for name, curve in data["precision_recall"].items()},
                   recall_thresholds=np.asarray(data["recall_thresholds"], dtype=np.float64),
                   num_images=int(data["num_images"]), num_detections=int(data["num_detections"]),
                   backend=str(data["backend"]), max_detections=int(data.get("max_detections", 100)))

    def format_table(self) -> str:
        """COCO's 12-line summary, as pycocotools prints it, then AP and AP50 per class."""
        max_dets = coco_max_dets(self.max_detections)
        lines = []
        for (kind, iou, area, m), value in zip(_SUMMARY_LINES, self.stats.values()):
            title = "Average Precision" if kind == "AP" else "Average Recall"
            lines.append(f" {title:<18} ({kind}) @[ IoU={iou:<9} | area={area:>6s} | "
                         f"maxDets={max_dets[m]:>3d} ] = {value:0.3f}")
        width = max([len("class"), *(len(name) for name in self.per_class_ap)])
        lines += ["", f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
        for name, ap in self.per_class_ap.items():
            lines.append(f"{name:<{width}}  {_cell(ap)}  {_cell(self.per_class_ap50[name])}")
        lines.append(f"({self.num_images} images, {self.num_detections} detections, {self.backend}; "
                     "'-': no ground truth)")
        return "\n".join(lines)


def _cell(value: float) -> str:
    return f"{value:6.3f}" if value > -1 else f"{'-':>6}"
