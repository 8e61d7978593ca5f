"""The report's pictures as PNG bytes: metric history, losses, learning rate, sample predictions.

Plots are drawn on matplotlib's Agg canvas without pyplot (as :mod:`detkeeper.evaluation.plots`
does, whose ``png_bytes`` renders them), at sizes that stay readable in a page column: 7 x 3.8
inches at 100 dpi with 10-11 pt text, labelled axes, and the best checkpoint's step marked on
every step axis.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image
from matplotlib.figure import Figure

from detkeeper.data.label_map import LabelMap
from detkeeper.evaluation.plots import png_bytes
from detkeeper.report.history import Series
from detkeeper.visualize import draw_boxes

FIGURE_SIZE = (7.0, 3.8)  # inches, at 100 dpi: 700 x 380 px
SAMPLE_SIDE = 360  # px: the long side of each drawn sample image
_BEST_STYLE = {"color": "#d62728", "linestyle": "--", "linewidth": 1.2}


def _axes(title: str, ylabel: str):
    figure = Figure(figsize=FIGURE_SIZE)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=12)
    axes.set_xlabel("training step", fontsize=11)
    axes.set_ylabel(ylabel, fontsize=11)
    axes.tick_params(labelsize=10)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _mark_best(axes, best_step: int | None, label: str) -> None:
    if best_step is not None:
        axes.axvline(best_step, label=label, **_BEST_STYLE)


def _finish(figure: Figure, axes) -> bytes:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=10, loc="best")
    figure.tight_layout()
    return png_bytes(figure)


def metric_history_png(history: Sequence[dict[str, Any]], monitor: str, best_step: int | None) -> bytes:
    """Validation mAP and mAP50 (and the monitor when it is another stat) at every evaluation."""
    figure, axes = _axes("Validation metrics at each evaluation", "COCO metric (data.val)")
    steps = np.array([row["step"] for row in history], dtype=np.int64)
    names = ["val_mAP", "val_mAP50"] + ([monitor] if monitor not in ("val_mAP", "val_mAP50") else [])
    for name in names:
        values = np.array([_number(row["metrics"].get(name)) for row in history], dtype=np.float64)
        if np.isfinite(values).any():
            axes.plot(steps, values, marker="o", markersize=4, label=name[4:] if name.startswith("val_") else name)
    if best_step is not None:
        best = next((row for row in history if row["step"] == best_step), None)
        value = _number(best["metrics"].get(monitor)) if best else math.nan
        _mark_best(axes, best_step, f"best: step {best_step}")
        if math.isfinite(value):
            axes.plot([best_step], [value], marker="*", markersize=14, color=_BEST_STYLE["color"], linestyle="none")
            axes.annotate(f"{monitor[4:] if monitor.startswith('val_') else monitor} {value:.3f}",
                          (best_step, value), textcoords="offset points", xytext=(-8, 6), ha="right",
                          fontsize=10, color=_BEST_STYLE["color"])
    axes.set_ylim(bottom=0)
    return _finish(figure, axes)


def loss_png(losses: dict[str, Series], best_step: int | None, source: str) -> bytes:
    """Training losses over steps (`source` says what the points are, for the title)."""
    figure, axes = _axes(f"Training loss ({source})", "loss")
    for tag, series in losses.items():
        axes.plot(series.steps, series.values, linewidth=2 if tag == "loss" else 1.2, label=tag)
    _mark_best(axes, best_step, f"best: step {best_step}")
    positive = [series.values[series.values > 0] for series in losses.values()]
    if all(len(values) for values in positive) and max(values.max() / values.min() for values in positive) > 50:
        axes.set_yscale("log")
    return _finish(figure, axes)


def learning_rate_png(series: Series, best_step: int | None) -> bytes:
    figure, axes = _axes("Learning rate (TensorBoard, logs/train)", "learning rate")
    axes.plot(series.steps, series.values, linewidth=2)
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    axes.set_ylim(bottom=0)
    _mark_best(axes, best_step, f"best: step {best_step}")
    return _finish(figure, axes)


def sample_png(image: bytes, boxes: np.ndarray, class_ids: Sequence[int], label_map: LabelMap,
               scores: Sequence[float] | None = None, side: int = SAMPLE_SIDE) -> bytes:
    """The encoded `image` scaled so its long side is `side`, with the boxes (original pixels) drawn
    by :func:`detkeeper.visualize.draw_boxes` on the scaled picture, so labels stay legible."""
    with Image.open(io.BytesIO(image)) as opened:
        picture = opened.convert("RGB")
    scale = side / max(picture.size)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                             Image.Resampling.BILINEAR)
    drawn = draw_boxes(picture, np.asarray(boxes, np.float32).reshape(-1, 4) * scale, [int(c) for c in class_ids],
                       label_map, scores=scores)
    buffer = io.BytesIO()
    drawn.save(buffer, format="PNG")
    return buffer.getvalue()


def _number(value) -> float:
    return math.nan if value is None else float(value)
