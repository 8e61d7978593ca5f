"""The run directory: the contract between training, export and reports.

Layout (later stages add to it; every reader goes through this class)::

    RUN_DIR/
      config.yaml        the resolved config (absolute paths): the run is reproducible from it
      label_map.pbtxt    the classes, TF OD API format, 1-based ids
      train.log          the training log (appended on every resume)
      logs/              TensorBoard: train/ (losses, learning rate), validation/ (stats, pictures)
      checkpoints/       ledger.json (the source of truth), step-NNNNNNN/ folders, TF `checkpoint`
                         state file (latest) and best/checkpoint (the best: the top of the
                         ledger's ranking), both for tf.train.latest_checkpoint; after a crash,
                         unrecorded-step-*/ (an uncommitted save, removed once its step is
                         committed) and replaced-step-*/ (a damaged checkpoint saved again, kept)
      init_from.json     with model.init_from: what each variable was restored from
      report.html        the run report (detkeeper.report)
      eval/              detkeeper evaluate's outputs, <checkpoint>-<data>/ each
      exports/           detkeeper export's verified exports, <checkpoint>/ each (an export's own
                         evaluations beside it: eval-<export>-<data>/)
      predictions/       the demo's predictions on held-out images
      .lock              held by the one process training in this directory

README.md's "Run directory" section shows the same layout to users.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import RunFailed


class RunDirectory:
    """Paths inside one run directory, and the writes that every stage shares."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def label_map_path(self) -> Path:
        return self.path / "label_map.pbtxt"

    @property
    def checkpoints_path(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs_path(self) -> Path:
        return self.path / "logs"

    @property
    def log_file_path(self) -> Path:
        return self.path / "train.log"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run directory: a second ``train`` on it refuses instead of both
        writing. The OS drops the lock when the holder dies, so a killed run never blocks a rerun."""
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunFailed(
                    f"{self.path} is in use by {holder}; two runs writing one directory would mix their "
                    "checkpoints. Wait for it to finish, stop it, or choose another run_dir.") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()}")
            handle.flush()
            yield
        finally:
            handle.close()

    def write_config(self, config) -> Path:
        from detkeeper.config import save_config
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.config_path)
        return self.config_path

    def write_label_map(self, label_map: LabelMap) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return label_map.write(self.label_map_path)
