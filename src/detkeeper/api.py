"""``detkeeper.train``, ``evaluate``, ``export`` and ``load``: the library calls with the
cross-layer wiring the CLI does too.

Training does not import the report, nor evaluation the exporter's loader, nor either of them the
TF OD API layer: the layer above passes them in. These functions are that layer for Python users,
so ``detkeeper.train(...)`` writes ``RUN/report.html`` at its end, ``detkeeper.evaluate(export_dir)``
loads the export, and every model path may be a TF OD API model folder (``pipeline.config`` +
``checkpoint/``, :mod:`detkeeper.tfod.model_folder`).
"""

from __future__ import annotations

import os
from typing import Sequence

from detkeeper.config.schema import RunConfig
from detkeeper.evaluation.evaluate import EvaluationReport, evaluate as _evaluate
from detkeeper.export.exporter import ExportResult, export_model
from detkeeper.export.predictor import Predictor, load as _load
from detkeeper.report.training_end import report_at_training_end
from detkeeper.training.progress import Reporter
from detkeeper.tfod.model_folder import model_source as _model_source
from detkeeper.training.trainer import TrainResult, train as _train


def train(config: RunConfig | str | os.PathLike, overrides: Sequence[str] = (), *,
          reporter: Reporter | None = None) -> TrainResult:
    """Train (or resume) the run `config` describes and write its report at the end
    (see :func:`detkeeper.training.trainer.train`)."""
    return _train(config, overrides, reporter=reporter, on_end=report_at_training_end)


def evaluate(model_source: str | os.PathLike, data: str | os.PathLike | None = None, split: str | None = None,
             **options) -> EvaluationReport:
    """COCO-evaluate a run's checkpoint, an export or a TF OD API model folder (see
    :func:`detkeeper.evaluation.evaluate.evaluate`; `label_map` also names such a folder's classes)."""
    return _evaluate(_model_source(model_source, options.get("label_map")), data, split, load_export=_load,
                     **options)


def export(model_source: str | os.PathLike, *, label_map: str | os.PathLike | None = None, **options) -> ExportResult:
    """Export a run's checkpoint or a TF OD API model folder, verified (see
    :func:`detkeeper.export.exporter.export_model`; `label_map` names such a folder's classes)."""
    return export_model(_model_source(model_source, label_map), **options)


def load(model_source: str | os.PathLike, checkpoint: str | int | None = None, *,
         label_map: str | os.PathLike | None = None) -> Predictor:
    """A predictor for an export, a run's checkpoint or a TF OD API model folder (see
    :func:`detkeeper.export.predictor.load`; `label_map` names such a folder's classes)."""
    return _load(_model_source(model_source, label_map), checkpoint)
