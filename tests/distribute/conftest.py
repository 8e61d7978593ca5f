"""Distributed runs happen in subprocesses (``train_driver.py``): logical CPU devices and the
multi-worker strategy must be set up before any TensorFlow op, which the test process has long
done. Helpers here start those processes with a time limit and never leave one running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))

from training_runs import write_config  # noqa: E402

DRIVER = HERE / "train_driver.py"
MIRRORED_2_CPUS = ["--logical-cpus", "2", "--set", "distribute.strategy=mirrored",
                   "--set", "distribute.devices=[/cpu:0,/cpu:1]"]


def driver_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_driver(config: Path, *args: str, timeout: float = 240, env: dict | None = None) -> tuple[dict, str]:
    """Train in a fresh process; returns its JSON result and its log (stderr)."""
    completed = subprocess.run([sys.executable, str(DRIVER), str(config), *args], capture_output=True, text=True,
                               timeout=timeout, env=env or driver_env())
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr


@pytest.fixture
def sgd_config(shapes_dataset, tmp_path):
    """The training tests' run with SGD (Adam's first steps amplify float rounding: every
    parameter moves by ~lr whatever the sign of a tiny gradient, so two correct runs part ways)."""
    def make(name: str, **sections) -> Path:
        train = {"steps": 30, "optimizer": {"name": "sgd", "learning_rate": 0.01}, **sections.pop("train", {})}
        return write_config(tmp_path / f"{name}.yaml", shapes_dataset, tmp_path / name, train=train, **sections)
    return make
