"""Terminal output shared by the commands: a quiet, cheap TensorFlow import, progress bars, tables."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from detkeeper.config import list_presets


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up chatter muted, and without Python's garbage collector.

    TF 2.21 prints oneDNN and CUDA-probe lines through absl before any log level applies (no
    environment variable silences them), so stderr's file descriptor points at /dev/null while
    TensorFlow imports and creates its context. Python exceptions still propagate normally.

    The import makes about 300,000 objects and almost no garbage, yet with the cyclic collector on
    its collections walked them again and again: 10-25% of the import's CPU (benchmarks/start_cpu.py).
    The collector is off during the import, and what it made is then frozen (``gc.freeze``) so that
    later collections skip it as well.
    """
    if "tensorflow" in sys.modules:
        return
    collecting = gc.isenabled()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    gc.disable()
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf  # light: imports TensorFlow

        tf.config.list_logical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
        gc.freeze()
        if collecting:
            gc.enable()


@contextlib.contextmanager
def progress(total: int | None, description: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr (hidden with --quiet or when stderr is not a terminal); a count and a
    rate where the `total` is not known beforehand (records read through the dataset index)."""
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
    if target.endswith((".yaml", ".yml")):
        return True
    return not Path(target).exists() and target in list_presets()


def print_json(data) -> None:
    """`data` as indented JSON on stdout, for `--json`: strict JSON, so NaN and infinities
    (a metric that could not be computed) are written as null."""
    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    print(json.dumps(finite(data), indent=2, allow_nan=False, default=str))
