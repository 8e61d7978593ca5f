"""The training curves (losses, learning rate) as TensorBoard recorded them in ``RUN/logs/train``.

Why read TensorBoard's event files rather than have training keep a history file of its own:
training already writes them every 20 steps in every run (runs trained before the report existed
included), so the report adds nothing to the training loop. Resuming makes them ambiguous, and
this module resolves that: each ``train`` call opens a new event file, and a run resumed from an
earlier checkpoint (after a crash) writes again the steps the crashed call had logged past it.
Files are merged oldest first, so at a step logged twice the later value wins; resume is exact, so
that is the trajectory the kept checkpoints continue. Points past the ledger's last step (a
crashed call's that nothing committed) are dropped. A file cut short by a kill ends where its last
whole record does.

The validation stats are not read from here: the checkpoint ledger's history holds every
evaluation, pruned checkpoints included, and is what best-k was decided on.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.util.event_pb2 import Event

from detkeeper.data.dataset_options import tfrecord_dataset

#: Tags the trainer's TensorBoard logger writes under ``logs/train`` that the report plots.
LOSS_TAGS = ("loss", "box_loss", "class_loss", "centerness_loss")
LEARNING_RATE_TAG = "learning_rate"


@dataclasses.dataclass(frozen=True)
class Series:
    """One scalar over steps, steps ascending."""

    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.steps)


@dataclasses.dataclass(frozen=True)
class TrainingCurves:
    """Scalars by tag; `files` read; `problems`: files cut short or unreadable, with why."""

    series: dict[str, Series]
    files: int
    problems: tuple[str, ...] = ()

    @property
    def losses(self) -> dict[str, Series]:
        known = {tag: self.series[tag] for tag in LOSS_TAGS if tag in self.series}
        others = {tag: series for tag, series in self.series.items()
                  if tag.endswith("loss") and tag not in known}
        return {**known, **others}

    @property
    def learning_rate(self) -> Series | None:
        return self.series.get(LEARNING_RATE_TAG)


def read_training_curves(folder: str | Path, last_step: int | None = None) -> TrainingCurves:
    """Every scalar in the event files of `folder` (``RUN/logs/train``), merged across resumes;
    steps after `last_step` (the ledger's last) are left out."""
    folder = Path(folder)
    files = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    problems: list[str] = []
    readings = []
    for path in files:
        points, problem = _read_event_file(path)
        if problem:
            problems.append(problem)
        if points:
            readings.append((min(wall for wall, _, _, _ in points), path.name, points))
    merged: dict[str, dict[int, float]] = {}
    for _, _, points in sorted(readings, key=lambda reading: reading[:2]):  # oldest file first
        for _, step, tag, value in sorted(points, key=lambda point: point[0]):
            if last_step is None or step <= last_step:
                merged.setdefault(tag, {})[step] = value
    series = {}
    for tag, by_step in merged.items():
        steps = np.array(sorted(by_step), dtype=np.int64)
        series[tag] = Series(steps, np.array([by_step[int(step)] for step in steps], dtype=np.float64))
    return TrainingCurves(series=series, files=len(files), problems=tuple(problems))


def _read_event_file(path: Path) -> tuple[list[tuple[float, int, str, float]], str | None]:
    """``(wall time, step, tag, value)`` of each scalar in one event file, and why reading stopped
    early (None when it read to the end)."""
    points = []
    try:
        for record in tfrecord_dataset(str(path)):
            event = Event.FromString(record.numpy())
            for value in event.summary.value:
                number = _scalar(value)
                if number is not None:
                    points.append((event.wall_time, int(event.step), value.tag, number))
    except tf.errors.DataLossError:  # the last record of a killed writer: keep what came before it
        return points, f"{path.name}: cut short (a killed run's last record); read up to it"
    except tf.errors.OpError as error:
        return points, f"{path.name}: cannot be read ({error.message})"
    return points, None


def _scalar(value) -> float | None:
    """The number of a scalar summary value: TF 2 writes a rank-0 tensor, TF 1 a simple_value."""
    if value.HasField("tensor"):
        if value.metadata.plugin_data.plugin_name not in ("", "scalars"):
            return None
        array = tf.make_ndarray(value.tensor)
        return float(array) if array.ndim == 0 and np.issubdtype(array.dtype, np.number) else None
    if value.HasField("simple_value"):
        return float(value.simple_value)
    return None
