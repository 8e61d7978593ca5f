"""Two `detkeeper train` processes on one run directory: the second refuses, naming the first, while
the first trains on and ends exactly as if it had been alone.

tests/training/test_trainer.py checks the lock inside one process; this is two real processes.
"""

from __future__ import annotations

import os
import time

import pytest

import zygote
from fault_runs import (DRIVER, assert_consistent, assert_same_as_reference, error_line, run_driver,
                        write_fault_config)


@pytest.mark.slow
def test_a_second_trainer_on_the_same_run_dir_refuses_and_the_first_finishes_as_if_alone(
        fault_reference, shapes_dataset, tmp_path, faults):
    _, reference_dir, _ = fault_reference
    config = write_fault_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    first_err = tmp_path / "first.err"
    first = zygote.start("detkeeper", [DRIVER, "none", "train", config, "--quiet"],
                         {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, tmp_path / "first.out", first_err)
    try:
        lock = tmp_path / "run" / ".lock"
        deadline = time.monotonic() + 300
        while not (lock.is_file() and lock.read_text() == f"process {first.pid}"):
            assert first.poll() is None and time.monotonic() < deadline, "the first trainer never took the lock"
            time.sleep(0.2)
        second = run_driver("none", "train", str(config), "--quiet")
        faults.injected()
        still_training = first.poll() is None
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert still_training, "the first trainer ended before the second was refused: the test proved nothing"
    assert second.returncode == 1, second.stderr[-3000:]
    message = error_line(second.stderr, "train")
    assert f"{tmp_path / 'run'} is in use by process {first.pid}" in message
    assert "choose another run_dir" in message
    assert first.returncode == 0, first_err.read_text()[-3000:]
    _, lost = assert_consistent(tmp_path / "run")
    faults.lost(lost)
    assert lost == 0
    assert_same_as_reference(tmp_path / "run", reference_dir)
    faults.recovered()
