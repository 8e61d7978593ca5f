"""Starting distributed training processes (``train_driver.py``) with a time limit, never leaving
one running. Each is forked from a zygote that has imported TensorFlow and detkeeper but run no
TensorFlow op (tests/zygote.py), so it still sets up its devices and cluster as a fresh process
does. A module of its own, not conftest.py: tests/training has a conftest too, and
``from conftest import ...`` inside a test would get whichever was imported last."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import zygote

HERE = Path(__file__).resolve().parent

DRIVER = HERE / "train_driver.py"
MIRRORED_2_CPUS = ["--logical-cpus", "2", "--set", "distribute.strategy=mirrored",
                   "--set", "distribute.devices=[/cpu:0,/cpu:1]"]


def driver_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_driver_process(config: Path, *args: str, timeout: float = 240,
                       env: dict | None = None) -> subprocess.CompletedProcess:
    """``train_driver.py CONFIG ARGS`` in a process of its own, as ``subprocess.run`` would report it."""
    return zygote.run("detkeeper", [DRIVER, config, *args], env or driver_env(), timeout=timeout)


def run_driver(config: Path, *args: str, timeout: float = 240, env: dict | None = None) -> tuple[dict, str]:
    """Train in a process of its own; returns its JSON result and its log (stderr)."""
    completed = run_driver_process(config, *args, timeout=timeout, env=env)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1]), completed.stderr
