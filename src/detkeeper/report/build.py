"""``write_report``: read a run directory, draw what it holds, write ``RUN/report.html`` atomically.

    path = write_report("runs/cells")                       # RUN/report.html
    written = build_report("runs/cells", "cells.html", evaluate=False)
    print(written.path, written.missing)

A part the run does not have yet (no export, no evaluation of the best checkpoint, no TensorBoard
logs) is shown as what is missing and how to get it; only a folder that is not a run directory
is an error.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from pathlib import Path

import numpy as np

import detkeeper.report.figures as figures
from detkeeper import __version__
from detkeeper.evaluation.plots import png_bytes, precision_recall_overview
from detkeeper.files import atomic_write_text
from detkeeper.report.best_evaluation import DEFAULT_SAMPLES, BestEvaluation, find_best_evaluation
from detkeeper.report.history import Series, read_training_curves
from detkeeper.report.page import PageParts, render_page
from detkeeper.report.rundata import RunContents, read_run
from detkeeper.run.exports import find_exports

logger = logging.getLogger("detkeeper.report")



@dataclasses.dataclass(frozen=True)
class WrittenReport:
    """Where the report went and what it could not show (one line each, as on the page)."""

    path: Path
    missing: tuple[str, ...]
    evaluation_source: str | None  # where per-class AP and the samples came from
    seconds: float


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, evaluate: bool = True,
                 samples: int = DEFAULT_SAMPLES) -> Path:
    """Write the report of the run at `run_dir` to `out` (default ``RUN/report.html``); returns its path.
    See :func:`build_report` for what it shows and where each part comes from."""
    return build_report(run_dir, out, evaluate=evaluate, samples=samples).path


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, *, evaluate: bool = True,
                 samples: int = DEFAULT_SAMPLES, best_evaluation: BestEvaluation | None = None) -> WrittenReport:
    """Write the report of the run at `run_dir` to `out` (default ``RUN/report.html``) and say what
    it could not show.

    Per-class AP, precision-recall curves and the `samples` sample predictions come from
    `best_evaluation` when given, else from an evaluation of the best checkpoint on data.val already
    in ``RUN/eval/``, else, with `evaluate`, from evaluating it now (one pass over data.val; kept in
    ``RUN/eval/<best>-val/`` for the next report). Raises :class:`DetkeeperError` only when
    `run_dir` is not a run directory."""
    started = time.perf_counter()
    contents = read_run(run_dir)
    missing: list[str] = list(contents.problems)
    history_figures, history_missing = _history_figures(contents)
    missing += history_missing
    exports = tuple(find_exports(contents.run))
    if not exports:
        missing.append(f"no export yet: run `detkeeper export {contents.run.path}`")

    evaluation, evaluation_missing = best_evaluation, None
    best = contents.best
    if evaluation is None:
        if best is None:
            evaluation_missing = f"no best checkpoint to evaluate ({contents.best_text()})"
        else:
            evaluation, evaluation_missing = find_best_evaluation(contents.run, best, count=samples,
                                                                  compute=evaluate)
    if evaluation_missing:
        missing.append(evaluation_missing)
    pr_png, drawn = None, ()
    if evaluation is not None:
        pr_png = png_bytes(precision_recall_overview(evaluation.result))
        drawn, problem = _draw_samples(contents, evaluation)
        if problem:
            missing.append(problem)
            evaluation_missing = problem

    parts = PageParts(contents=contents, generated=_now(), history_figures=tuple(history_figures),
                      history_missing=tuple(history_missing), exports=exports, evaluation=evaluation,
                      evaluation_missing=evaluation_missing, precision_recall_png=pr_png, samples=drawn,
                      version=__version__)
    path = Path(out) if out is not None else contents.run.report_path
    atomic_write_text(path, render_page(parts))
    seconds = time.perf_counter() - started
    logger.debug("report of %s written to %s in %.1f s", contents.run.path, path, seconds)
    return WrittenReport(path=path, missing=tuple(missing),
                         evaluation_source=evaluation.source if evaluation is not None else None, seconds=seconds)


def _history_figures(contents: RunContents) -> tuple[list[tuple[str, bytes]], list[str]]:
    """Validation metrics from the ledger; losses and learning rate from TensorBoard (the ledger's
    interval losses when there are no event files)."""
    ledger, found, missing = contents.ledger, [], []
    history = ledger.history if ledger is not None else []
    best = contents.best
    best_step = best.step if best is not None else None
    if history:
        found.append(("Validation mAP and mAP50 at each evaluation (checkpoints/ledger.json); dashed: the best "
                      "checkpoint", figures.metric_history_png(history, contents.monitor, best_step)))
    else:
        missing.append("no evaluation yet, so no validation metrics to plot (checkpoints/ledger.json has no history)")
    last_step = max((row["step"] for row in history), default=None)
    curves = read_training_curves(contents.run.train_logs_path, last_step)
    missing += [f"logs/train/{problem}" for problem in curves.problems]
    if curves.losses:
        steps = next(iter(curves.losses.values())).steps
        every = f"every {int(np.min(np.diff(steps)))} steps" if len(steps) > 1 else f"at step {steps[0]}"
        found.append((f"Training loss, logged {every} (the mean since the evaluation interval began; logs/train)",
                      figures.loss_png(curves.losses, best_step, "TensorBoard, logs/train")))
    elif history and any("loss" in row["metrics"] for row in history):
        steps = [row for row in history if row["metrics"].get("loss") is not None]
        series = Series(np.array([row["step"] for row in steps]), np.array([row["metrics"]["loss"] for row in steps]))
        found.append(("Training loss per evaluation interval (checkpoints/ledger.json: no TensorBoard logs)",
                      figures.loss_png({"loss": series}, best_step, "interval means, ledger")))
        missing.append("no TensorBoard event files in logs/train: loss from the ledger, no learning rate")
    else:
        missing.append("no training loss recorded (logs/train has no event files)")
    if curves.learning_rate is not None:
        found.append(("Learning rate (logs/train)", figures.learning_rate_png(curves.learning_rate, best_step)))
    elif curves.losses:
        missing.append("no learning_rate in logs/train")
    return found, missing


def _draw_samples(contents: RunContents, evaluation: BestEvaluation):
    """(image id, truth PNG, prediction PNG, #truth, #found) per sample; and why none, if so."""
    if contents.label_map is None:
        return (), "sample predictions need the run's label_map.pbtxt"
    drawn = []
    for sample in evaluation.samples:
        record = sample.record
        try:
            encoded = record.read_encoded()
        except (OSError, ValueError) as error:
            return tuple(drawn), f"sample image {record.image_id} cannot be read ({error})"
        truth = figures.sample_png(encoded, record.boxes, record.class_ids, contents.label_map)
        found = figures.sample_png(encoded, sample.boxes, sample.classes, contents.label_map, scores=sample.scores)
        drawn.append((record.image_id, truth, found, record.num_boxes, len(sample.scores)))
    return tuple(drawn), None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
