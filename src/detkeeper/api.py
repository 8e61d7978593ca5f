"""``detkeeper.train`` and ``detkeeper.evaluate``: the library calls with the cross-layer wiring
the CLI does too.

Training does not import the report, nor evaluation the exporter's loader: the layer above passes
them in. These functions are that layer for Python users, so ``detkeeper.train(...)`` writes
``RUN/report.html`` at its end and ``detkeeper.evaluate(export_dir)`` loads the export.
"""

from __future__ import annotations

import os
from typing import Sequence

from detkeeper.config.schema import RunConfig
from detkeeper.evaluation.evaluate import EvaluationReport, evaluate as _evaluate
from detkeeper.export.predictor import load
from detkeeper.report.training_end import report_at_training_end
from detkeeper.training.progress import Reporter
from detkeeper.training.trainer import TrainResult, train as _train


def train(config: RunConfig | str | os.PathLike, overrides: Sequence[str] = (), *,
          reporter: Reporter | None = None) -> TrainResult:
    """Train (or resume) the run `config` describes and write its report at the end
    (see :func:`detkeeper.training.trainer.train`)."""
    return _train(config, overrides, reporter=reporter, on_end=report_at_training_end)


def evaluate(model_source: str | os.PathLike, data: str | os.PathLike | None = None, split: str | None = None,
             **options) -> EvaluationReport:
    """COCO-evaluate a run's checkpoint or an export (see :func:`detkeeper.evaluation.evaluate.evaluate`)."""
    return _evaluate(model_source, data, split, load_export=load, **options)
