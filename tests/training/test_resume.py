"""Killed at any moment, rerun, and nothing differs: the final ledger equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from training_runs import write_config

DRIVER = Path(__file__).with_name("kill_driver.py")


def run_driver(config: Path, moment: str, step: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(DRIVER), str(config), moment, str(step)], env=env,
                          capture_output=True, text=True, timeout=600)


def comparable(ledger: dict) -> tuple:
    history = [(row["step"], row["checkpoint"], row["metrics"]) for row in ledger["history"]]
    kept = sorted(entry["step"] for entry in ledger["checkpoints"])
    return history, kept, ledger["best"], ledger["status"]["state"]


@pytest.mark.slow
def test_killed_mid_step_and_mid_save_then_rerun_matches_the_uninterrupted_run(reference_run, shapes_dataset,
                                                                                tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"

    killed = run_driver(config, "step", 50)  # between the evaluations at 40 and 60
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [row["step"] for row in json.loads((checkpoints / "ledger.json").read_text())["history"]] == [20, 40]

    killed = run_driver(config, "save", 80)  # resumed at 40, killed while writing step 80's checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (checkpoints / ".partial-step-0000080").is_dir()

    finished = run_driver(config, "none")
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "removed .partial-step-0000080: a save that was interrupted" in (tmp_path / "run" / "train.log").read_text()

    _, reference = reference_run
    expected = comparable(json.loads(reference.ledger_path.read_text()))
    got = comparable(json.loads((checkpoints / "ledger.json").read_text()))
    assert [step for step, _, _ in got[0]] == [step for step, _, _ in expected[0]]
    for (step, _, metrics), (_, _, reference_metrics) in zip(got[0], expected[0]):
        assert metrics.keys() == reference_metrics.keys()
        for key, value in reference_metrics.items():
            if key == "val_latency_ms":
                continue  # wall time, not a result
            assert metrics[key] == pytest.approx(value, abs=1e-6), (step, key)
    assert got[1:] == expected[1:]
    assert not list(checkpoints.glob(".partial-*"))
