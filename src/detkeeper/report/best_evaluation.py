"""Per-class AP, precision-recall curves and sample predictions of the run's best checkpoint on data.val.

Three sources, cheapest first:

1. an evaluation already on disk: ``RUN/eval/<best>-val/`` as ``detkeeper evaluate --model RUN``
   writes it (``metrics.json`` + ``detections.json``), used when it is of the same checkpoint and
   scored the ``val_mAP`` the ledger recorded for it (so a stale folder of a retrained run is not);
2. what training holds in memory when it ends (:mod:`detkeeper.report.training_end`);
3. computed now with :func:`detkeeper.evaluation.evaluate.evaluate` (the checkpoint restored
   and sha256-checked as ``detkeeper evaluate`` does, one pass over data.val, which is what each
   of training's evaluations cost); its outputs land in ``RUN/eval/<best>-val/``, so the next
   report reads them instead.

Sample predictions are the first few images of data.val, drawn next to their ground truth, with
the detections at or above :data:`SAMPLE_MIN_SCORE`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from detkeeper.data.record import DetectionRecord
from detkeeper.data.sources import DataSources
from detkeeper.errors import DetkeeperError
from detkeeper.evaluation.evaluate import prepare_evaluation
from detkeeper.evaluation.results import EvaluationResult
from detkeeper.run.evaluations import METRICS_FILE, cached_evaluation_dir
from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import LedgerEntry
from detkeeper.run.sources import run_config

SAMPLE_MIN_SCORE = 0.3  # what `detkeeper predict` and TensorBoard's pictures call a detection
DEFAULT_SAMPLES = 4


@dataclasses.dataclass(frozen=True)
class SamplePrediction:
    """One validation image: its ground truth and the checkpoint's detections, original-image pixels
    ``[ymin, xmin, ymax, xmax]``, label-map ids."""

    record: DetectionRecord
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclasses.dataclass(frozen=True)
class BestEvaluation:
    """The best checkpoint's COCO result on data.val, the samples, and where they came from."""

    checkpoint: str
    step: int
    result: EvaluationResult
    samples: tuple[SamplePrediction, ...]
    source: str  # for the page: "RUN/eval/step-…-val (detkeeper evaluate)", ...


def load_evaluation(folder: Path, best: LedgerEntry, records: Sequence[DetectionRecord], count: int,
                    source: str) -> BestEvaluation:
    """The evaluation ``detkeeper evaluate`` wrote into `folder`; samples from its detections.json."""
    metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    rows = json.loads((folder / metrics["files"]["detections"]).read_text(encoding="utf-8"))
    chosen = list(records[:count])
    wanted = {record.image_id for record in chosen}
    found: dict[str, list[dict[str, Any]]] = {image_id: [] for image_id in wanted}
    for row in rows:
        image_id = str(row["image_id"])
        if image_id in wanted and row["score"] >= SAMPLE_MIN_SCORE:
            found[image_id].append(row)
    samples = []
    for record in chosen:
        kept = found[record.image_id]
        boxes = np.array([[y, x, y + height, x + width] for x, y, width, height in (row["bbox"] for row in kept)],
                         np.float32).reshape(-1, 4)
        samples.append(SamplePrediction(record, boxes, np.array([row["score"] for row in kept], np.float32),
                                        np.array([row["category_id"] for row in kept], np.int64)))
    return BestEvaluation(best.name, best.step, EvaluationResult.from_json_dict(metrics), tuple(samples), source)


def compute_evaluation(run: RunDirectory, best: LedgerEntry, count: int) -> BestEvaluation:
    """Evaluate `best` on data.val now (``detkeeper evaluate --model RUN``: writes ``RUN/eval/<best>-val``)."""
    prepared = prepare_evaluation(run.path, "val", checkpoint=str(best.step))
    report = prepared.run()
    return load_evaluation(report.out_dir, best, prepared.data.records, count,
                           f"{_relative(report.out_dir, run)} (evaluated for this report, kept for the next)")


def validation_records(run: RunDirectory) -> list[DetectionRecord]:
    """data.val of the run's config, read and checked as training read it."""
    config = run_config(run, keep_split="val")
    data_config = dataclasses.replace(config.data, label_map=str(run.label_map_path))
    return list(DataSources(data_config).prepare("val", log_problems=False).records)


def samples_from(records: Sequence[DetectionRecord], detections: dict[str, dict]) -> tuple[SamplePrediction, ...]:
    """The sample predictions of `records` from a validation pass's detections of them
    (``{image_id: {"boxes", "scores", "classes", "num_detections"}}`` in original pixels and
    label-map ids, as the pass scored them)."""
    samples = []
    for record in records:
        found = detections[record.image_id]
        count = int(found["num_detections"])
        scores, classes = found["scores"][:count], found["classes"][:count]
        keep = (scores >= SAMPLE_MIN_SCORE) & (classes >= 0)
        samples.append(SamplePrediction(record, found["boxes"][:count][keep].astype(np.float32),
                                        scores[keep].astype(np.float32), classes[keep].astype(np.int64)))
    return tuple(samples)


def find_best_evaluation(run: RunDirectory, best: LedgerEntry, *, count: int = DEFAULT_SAMPLES,
                         compute: bool = True) -> tuple[BestEvaluation | None, str | None]:
    """The best checkpoint's evaluation from disk, else computed when `compute`; with the reason
    when there is none (for the page)."""
    folder = cached_evaluation_dir(run, best)
    if folder is None and not compute:
        return None, (f"no evaluation of {best.name} on data.val in {_relative(run.eval_path, run)}/; "
                      f"`detkeeper report {run.path}` computes it (one pass over data.val)")
    if folder is not None:
        source = f"{_relative(folder, run)} (detkeeper evaluate)"
        try:
            records = validation_records(run) if count else []
        except DetkeeperError as error:  # e.g. the dataset moved: the stats on disk still stand
            return load_evaluation(folder, best, [], 0, source), f"no sample images: data.val cannot be read ({error})"
        return load_evaluation(folder, best, records, count, source), None
    try:
        return compute_evaluation(run, best, count), None
    except DetkeeperError as error:
        return None, f"the best checkpoint could not be evaluated on data.val: {error}"


def _relative(path: Path, run: RunDirectory) -> str:
    try:
        return f"RUN/{path.resolve().relative_to(run.path)}"
    except ValueError:
        return str(path)
