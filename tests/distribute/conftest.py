"""Distributed runs happen in subprocesses (``train_driver.py``, started by distribute_runs.py):
logical CPU devices and the multi-worker strategy must be set up before any TensorFlow op, which
the test process has long done. The fixture here writes their configs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))

from training_runs import write_config  # noqa: E402


@pytest.fixture
def sgd_config(shapes_dataset, tmp_path):
    """The training tests' run with SGD (Adam's first steps amplify float rounding: every
    parameter moves by ~lr whatever the sign of a tiny gradient, so two correct runs part ways)."""
    def make(name: str, **sections) -> Path:
        train = {"steps": 30, "optimizer": {"name": "sgd", "learning_rate": 0.01}, **sections.pop("train", {})}
        return write_config(tmp_path / f"{name}.yaml", shapes_dataset, tmp_path / name, train=train, **sections)
    return make
