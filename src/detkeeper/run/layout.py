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

README.md's "Run directory" section shows the same layout to users. Every name above is spelled
in this package only (here, :mod:`.ledger`, :mod:`.checkpoints`, :mod:`.exports`,
:mod:`.evaluations`); everything else asks a :class:`RunDirectory` for a path.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

from detkeeper.config.loader import save_config
from detkeeper.config.schema import SPLITS
from detkeeper.config.yamlio import parse_yaml
from detkeeper.data.label_map import LabelMap
from detkeeper.errors import RunFailed
from detkeeper.run.ledger import LEDGER_NAME

CONFIG_FILE = "config.yaml"
LABEL_MAP_FILE = "label_map.pbtxt"
LOG_FILE = "train.log"
INIT_FROM_FILE = "init_from.json"
REPORT_FILE = "report.html"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
LOGS_DIR = "logs"
TRAIN_LOGS_DIR = "train"
VALIDATION_LOGS_DIR = "validation"
EVAL_DIR = "eval"
EXPORTS_DIR = "exports"
PREDICTIONS_DIR = "predictions"


class RunDirectory:
    """Paths inside one run directory, and the writes that every stage shares."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether `path` is a run directory (a resolved config inside)."""
        return (Path(path) / CONFIG_FILE).is_file()

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def label_map_path(self) -> Path:
        return self.path / LABEL_MAP_FILE

    @property
    def checkpoints_path(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def ledger_path(self) -> Path:
        return self.checkpoints_path / LEDGER_NAME

    @property
    def logs_path(self) -> Path:
        return self.path / LOGS_DIR

    @property
    def train_logs_path(self) -> Path:
        return self.logs_path / TRAIN_LOGS_DIR

    @property
    def validation_logs_path(self) -> Path:
        return self.logs_path / VALIDATION_LOGS_DIR

    @property
    def log_file_path(self) -> Path:
        return self.path / LOG_FILE

    @property
    def init_from_path(self) -> Path:
        return self.path / INIT_FROM_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def eval_path(self) -> Path:
        return self.path / EVAL_DIR

    @property
    def exports_path(self) -> Path:
        return self.path / EXPORTS_DIR

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS_DIR

    def read_raw_config(self) -> Any:
        """``config.yaml`` as plain YAML, unvalidated (None when absent): for what may be read from a
        run whose config no longer loads (a moved dataset, an older schema). Raises what
        ``parse_yaml`` raises on a file that is not YAML."""
        if not self.config_path.is_file():
            return None
        return parse_yaml(self.config_path.read_text(encoding="utf-8"), str(self.config_path))

    def configured_splits(self) -> list[str]:
        """The splits the run's config sets, in :data:`~detkeeper.config.schema.SPLITS` order."""
        raw = self.read_raw_config()
        data = raw.get("data") if isinstance(raw, dict) else None
        return [name for name in SPLITS if isinstance(data, dict) and data.get(name)]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive use of the run directory: a second ``train`` on it refuses instead of both
        writing. The OS drops the lock when the holder dies, so a killed run never blocks a rerun."""
        import fcntl  # optional: POSIX-only, so the module still loads where it is missing

        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK_FILE, "a+", encoding="utf-8")
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
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.config_path)
        return self.config_path

    def write_label_map(self, label_map: LabelMap) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return label_map.write(self.label_map_path)
