"""The fault suite's tally and shared runs.

Tests count what they did through the `faults` fixture (``faults.injected()``,
``faults.recovered()``, ``faults.bad_input()``, ``faults.lost(n)``); the session ends with
``fault suite: N faults injected, N recoveries verified, N bad inputs tried, 0 data lost``.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # training_runs, kill_driver

from fault_runs import train_reference, write_fault_config  # noqa: E402
from kill_chains import start_kill_chains  # noqa: E402


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


@pytest.fixture(scope="session")
def fault_pool():
    """Threads that drive the long fault runs (subprocesses) beside the tests in this process."""
    pool = ThreadPoolExecutor(max_workers=3)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def fault_reference_run(shapes_dataset, tmp_path_factory, fault_pool) -> Future:
    root = tmp_path_factory.mktemp("fault_reference")
    return fault_pool.submit(train_reference, write_fault_config(root / "config.yaml", shapes_dataset, root / "run"),
                             root / "run")


@pytest.fixture(scope="session")
def fault_reference(fault_reference_run):
    """The fault suite's run, uninterrupted, through `detkeeper train`: (config, run_dir, ledger)."""
    return fault_reference_run.result()


@pytest.fixture(scope="session")
def kill_chains(fault_pool, fault_reference_run, shapes_dataset, tmp_path_factory) -> dict:
    """The kill chains of kill_chains.py, running; their futures by chain ("export", 0, 1, ...)."""
    return start_kill_chains(fault_pool, fault_reference_run, shapes_dataset, tmp_path_factory.mktemp("kills"), TALLY)


@pytest.fixture(scope="session", autouse=True)
def _kill_chains_first(request):
    """When the kill tests are selected, start their chains before anything else, so the rest of the fault
    suite runs beside them instead of after them."""
    if any(item.path.name == "test_kills.py" for item in request.session.items):
        request.getfixturevalue("kill_chains")
