"""The fault suite's shared runs and its tally fixture (the tally itself is tests/fault_tally.py)."""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # training_runs

from fault_runs import train_reference, write_fault_config  # noqa: E402
from fault_tally import TALLY, FaultTally  # noqa: E402
from kill_chains import start_kill_chains  # noqa: E402


@pytest.fixture(scope="session")
def faults() -> FaultTally:
    return TALLY


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
