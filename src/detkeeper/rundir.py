"""The run directory: the contract between training, export and reports.

Layout (later stages add to it; every reader goes through this class)::

    RUN_DIR/
      config.yaml        the resolved config (absolute paths): the run is reproducible from it
      label_map.pbtxt    the classes, TF OD API format, 1-based ids
      train_batch.png    a training batch as the pipeline makes it, boxes drawn (demo, data show)
"""

from __future__ import annotations

import os
from pathlib import Path

from detkeeper.data.label_map import LabelMap


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
    def train_batch_path(self) -> Path:
        return self.path / "train_batch.png"

    def write_config(self, config) -> Path:
        from detkeeper.config import save_config
        self.path.mkdir(parents=True, exist_ok=True)
        save_config(config, self.config_path)
        return self.config_path

    def write_label_map(self, label_map: LabelMap) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return label_map.write(self.label_map_path)
