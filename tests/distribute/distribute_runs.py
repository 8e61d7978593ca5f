"""Starting distributed training processes (``train_driver.py``) with a time limit, never leaving
one running. A module of its own, not conftest.py: tests/training has a conftest too, and
``from conftest import ...`` inside a test would get whichever was imported last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

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
