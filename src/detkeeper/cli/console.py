"""Terminal output shared by the commands: progress bars, tables, target resolution."""

from __future__ import annotations

import contextlib
import glob
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

from detkeeper.errors import DataError

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".record", ".records", ".tfrec")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter muted.

    TF 2.21 prints oneDNN and CUDA-probe lines through absl before any log level applies (no
    environment variable silences them), so stderr's file descriptor points at /dev/null while
    TensorFlow imports and creates its context. Python exceptions still propagate normally.
    """
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


@contextlib.contextmanager
def progress(total: int, description: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr (hidden with --quiet or when stderr is not a terminal)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="img", disable=True if quiet else None,
              file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """Plain aligned columns; numbers right-aligned."""
    cells = [[str(c) for c in header]] + [[f"{c:,}" if isinstance(c, int) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))]
    lines = []
    for row in cells:
        lines.append("  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(lines)


def is_config_target(target: str) -> bool:
    """A YAML file or a preset name (not an existing dataset path)."""
    from detkeeper.config import list_presets

    if target.endswith((".yaml", ".yml")):
        return True
    return not Path(target).exists() and target in list_presets()


def detect_format(path: str) -> str:
    """Guess a dataset's format from its path: VOC folder, COCO JSON, or TFRecord files/globs."""
    candidate = Path(path)
    if candidate.is_dir():
        if (candidate / "Annotations").is_dir():
            return "voc"
        raise DataError(f"{path}: a folder, but not a Pascal VOC dataset (no Annotations/ inside); "
                        "give a VOC root, a COCO instances JSON, or TFRecord files")
    if candidate.suffix == ".json":
        return "coco"
    first = path.split(",")[0]
    if first.endswith(TFRECORD_SUFFIXES) or ".tfrecord" in first or glob.has_magic(first):
        return "tfrecord"
    if not candidate.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(f"{path}: cannot tell the dataset format from the name; pass --format voc|coco|tfrecord")
