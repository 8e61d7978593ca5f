"""The fault suite's tally and shared runs.

Tests count what they did through the `faults` fixture (``faults.injected()``,
``faults.recovered()``, ``faults.bad_input()``, ``faults.lost(n)``); the session ends with
``fault suite: N faults injected, N recoveries verified, N bad inputs tried, 0 data lost``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # training_runs, kill_driver

from fault_runs import write_fault_config  # noqa: E402

DRIVER = Path(__file__).with_name("fault_driver.py")


class FaultTally:
    """Thread-safe counts for the summary line (the kill chains run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = {"injected": 0, "recovered": 0, "bad_input": 0, "lost": 0}
        self.used = False

    def _add(self, name: str, n: int) -> None:
        with self._lock:
            self.used = True
            self.counts[name] += n

    def injected(self, n: int = 1) -> None:
        self._add("injected", n)

    def recovered(self, n: int = 1) -> None:
        self._add("recovered", n)

    def bad_input(self, n: int = 1) -> None:
        self._add("bad_input", n)

    def lost(self, n: int) -> None:
        """Record `n` pieces of lost data (0 when a check found none); the test asserts n == 0 itself."""
        self._add("lost", n)

    def summary(self) -> str:
        c = self.counts
        return (f"fault suite: {c['injected']} faults injected, {c['recovered']} recoveries verified, "
                f"{c['bad_input']} bad inputs tried, {c['lost']} data lost")


TALLY = FaultTally()


@pytest.fixture(scope="session")
def faults() -> FaultTally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if TALLY.used:
        terminalreporter.write_sep("=", "fault suite")
        terminalreporter.write_line(TALLY.summary())


def run_driver(moment: str, *args: str, limit: int = 900) -> subprocess.CompletedProcess:
    """``detkeeper ARGS`` in a fresh process with the fault `moment` armed (see fault_driver.py)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, str(DRIVER), moment, *args], env=env, capture_output=True,
                          text=True, timeout=limit)


@pytest.fixture(scope="session")
def fault_reference(shapes_dataset, tmp_path_factory):
    """The fault suite's run, uninterrupted, through `detkeeper train`: (config, run_dir, ledger)."""
    root = tmp_path_factory.mktemp("fault_reference")
    config = write_fault_config(root / "config.yaml", shapes_dataset, root / "run")
    done = run_driver("none", "train", str(config), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, root / "run", json.loads((root / "run" / "checkpoints" / "ledger.json").read_text())
