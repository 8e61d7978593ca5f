"""Where ``detkeeper evaluate`` writes an evaluation, and finding one already written.

A checkpoint's evaluation goes to ``RUN/eval/<checkpoint>-<data>/``; an export's beside the
export, ``eval-<export>-<data>/``. Each holds ``metrics.json`` (the stats and what was evaluated),
``detections.json`` (COCO results format) and ``pr_curves/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from detkeeper.run.exports import SAVED_MODEL_DIR
from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import LedgerEntry

METRICS_FILE = "metrics.json"
DETECTIONS_FILE = "detections.json"
PR_CURVES_DIR = "pr_curves"
EXPORT_EVALUATION_PREFIX = "eval-"


def evaluation_dir(run: RunDirectory, checkpoint: str, data: str) -> Path:
    """``RUN/eval/<checkpoint>-<data>``: the default output of evaluating a run's checkpoint."""
    return run.eval_path / f"{checkpoint}-{data}"


def export_evaluation_dir(saved_model: str | Path, data: str) -> Path:
    """``eval-<export>-<data>`` beside the export whose SavedModel (or folder) is `saved_model`."""
    export = Path(saved_model)
    export = export.parent if export.name == SAVED_MODEL_DIR else export
    return export.parent / f"{EXPORT_EVALUATION_PREFIX}{export.name}-{data}"


def cached_evaluation_dir(run: RunDirectory, best: LedgerEntry) -> Path | None:
    """``RUN/eval/<best>-val`` when it holds an evaluation of `best` on data.val that scored what the
    ledger recorded; else None."""
    folder = evaluation_dir(run, best.name, "val")
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
        same = (metrics["checkpoint"]["name"] == best.name and metrics["data"]["config_split"] == "val"
                and (folder / metrics["files"]["detections"]).is_file())
        recorded = best.metrics.get("val_mAP", math.nan)
        scored = float(metrics["stats"]["mAP"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same or (not math.isnan(recorded) and abs(scored - recorded) > 1e-6):
        return None
    return folder
