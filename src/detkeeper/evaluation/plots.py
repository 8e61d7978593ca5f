"""Precision-recall curves of an evaluation as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never
through ``pyplot``: no global backend is switched, no figure is registered with a GUI, and the
plots work the same in a training job, a notebook or a headless server. Files are written
atomically, so a crash never leaves a half-written PNG beside good ones.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from detkeeper.evaluation.results import EvaluationResult
from detkeeper.files import atomic_write_bytes

OVERVIEW_NAME = "precision_recall_all.png"
_LEGEND_MAX_CLASSES = 15  # beyond this a legend hides the curves; the per-class files name them


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def png_bytes(figure: Figure, dpi: int = 100) -> bytes:
    """`figure` rendered on an Agg canvas as PNG bytes (no pyplot, no global backend)."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _write_png(figure: Figure, path: Path) -> Path:
    return atomic_write_bytes(path, png_bytes(figure))


def _new_axes(title: str):
    figure = Figure(figsize=(5, 4.5))
    axes = figure.add_subplot()
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
    axes.grid(True, alpha=0.3)
    return figure, axes


def save_precision_recall_plots(result: EvaluationResult, out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per class (``precision_recall_<NNN>_<name>.png``, NNN its position in the label map,
    so names that differ only in punctuation never collide) and ``precision_recall_all.png`` with
    every class; returns the paths, overview last.

    Curves are COCO's interpolated precision at IoU 0.5 over its 101 recall thresholds; a class
    with no ground truth gets a labelled empty plot.
    """
    out_dir = Path(out_dir)
    recall = result.recall_thresholds
    written = []
    for position, (name, precision) in enumerate(result.precision_recall.items()):
        figure, axes = _new_axes(f"{name}: AP50 {result.per_class_ap50[name]:.3f}, "
                                 f"AP {result.per_class_ap[name]:.3f}")
        if np.all(precision == -1):
            axes.set_title(f"{name}: no ground truth")
            axes.text(0.5, 0.5, "no ground truth in the evaluated images", ha="center", va="center")
        else:
            axes.plot(recall, precision, drawstyle="steps-post")
        written.append(_write_png(figure, out_dir / f"precision_recall_{position:03d}_{_slug(name)}.png"))
    written.append(_write_png(precision_recall_overview(result), out_dir / OVERVIEW_NAME))
    return written


def precision_recall_overview(result: EvaluationResult) -> Figure:
    """Every class's curve in one figure (``precision_recall_all.png``; also the run report's)."""
    figure, axes = _new_axes(f"Precision-recall at IoU 0.5 (mAP50 {result.stats['mAP50']:.3f})")
    for name, precision in result.precision_recall.items():
        if not np.all(precision == -1):
            axes.plot(result.recall_thresholds, precision, drawstyle="steps-post", linewidth=1,
                      label=f"{name} ({result.per_class_ap50[name]:.2f})")
    if 0 < len(axes.lines) <= _LEGEND_MAX_CLASSES:
        axes.legend(fontsize="small", loc="lower left")
    return figure
