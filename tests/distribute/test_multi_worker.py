"""MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1.

Each process gets its TF_CONFIG (free ports chosen per launch) and a time limit; every process
started here is killed in a ``finally`` if it is still running. Worker 0 is the chief: only its run
directory gets checkpoints, a ledger and logs; worker 1 trains in a temporary directory (under the
TMPDIR given to it here) that it removes when it finishes. Both are then killed with SIGKILL after
the first checkpoint and restarted: the chief resumes from its latest checkpoint and worker 1 from
the chief's values (broadcast), and the run finishes with every evaluation in the ledger.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

import zygote
from distribute_runs import DRIVER, driver_env

pytestmark = pytest.mark.slow  # two processes sharing 2 cores: ~2-3 minutes

#: Evaluated and saved every 20 steps: killed after the first save, resumed, then one more on both workers.
STEPS = 40


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket()
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def _launch(config: Path, scratch: Path, logs: Path, attempt: str) -> list[zygote.Forked]:
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = driver_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
                         TMPDIR=str(scratch))
        processes.append(zygote.start("detkeeper", [DRIVER, config, "--set", "distribute.strategy=multi_worker"], env,
                                      logs / f"{attempt}-worker{index}.out", logs / f"{attempt}-worker{index}.err"))
    return processes


def _stop(processes: list[zygote.Forked]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
    for process in processes:
        process.wait(timeout=30)


def _wait(processes: list[zygote.Forked], deadline: float, until=None) -> None:
    while time.monotonic() < deadline:
        if until is not None and until():
            return
        if until is None and all(process.poll() is not None for process in processes):
            return
        if until is not None and any(process.poll() is not None for process in processes):
            return
        time.sleep(0.5)
    raise AssertionError("the workers did not get there in time")


def test_two_workers_train_resume_after_both_are_killed_and_only_the_chief_writes(sgd_config, tmp_path):
    config = sgd_config("cluster", train={"steps": STEPS})
    run_dir = tmp_path / "cluster"
    ledger_path = run_dir / "checkpoints" / "ledger.json"
    scratch, logs = tmp_path / "scratch", tmp_path / "logs"
    scratch.mkdir()
    logs.mkdir()

    processes = _launch(config, scratch, logs, "first")
    try:
        _wait(processes, time.monotonic() + 240, until=ledger_path.exists)
        assert all(process.poll() is None for process in processes), (logs / "first-worker0.err").read_text()[-3000:]
        _stop(processes)  # SIGKILL both, mid-training
    finally:
        _stop(processes)
    first = json.loads(ledger_path.read_text())
    assert first["checkpoints"] and first["status"]["state"] == "training"
    killed_at = max(entry["step"] for entry in first["checkpoints"])
    left_by_the_kill = set(scratch.iterdir())  # SIGKILL gives worker 1 no chance to remove its directory

    processes = _launch(config, scratch, logs, "second")
    try:
        _wait(processes, time.monotonic() + 300)
        for index, process in enumerate(processes):
            assert process.returncode == 0, (logs / f"second-worker{index}.err").read_text()[-3000:]
    finally:
        _stop(processes)

    chief_log = (logs / "second-worker0.err").read_text()
    worker_log = (logs / "second-worker1.err").read_text()
    assert f"from step-{killed_at:07d} (step {killed_at} of {STEPS})" in chief_log
    assert "distribute: multi_worker, 2 replica(s) in 2 worker(s) (worker 0:" in chief_log
    assert "not the chief: writes a temporary directory only" in worker_log
    chief = json.loads((logs / "second-worker0.out").read_text().splitlines()[-1])
    worker = json.loads((logs / "second-worker1.out").read_text().splitlines()[-1])
    assert chief["status"] == worker["status"] == "finished" and chief["step"] == worker["step"] == STEPS

    ledger = json.loads(ledger_path.read_text())
    assert [row["step"] for row in ledger["history"]] == [20, 40]
    assert ledger["status"]["state"] == "finished"
    # After the resume, every worker logged the same validation numbers (the chief's, broadcast) and loss.
    lines = [next(text for text in log.splitlines() if f"step {STEPS}  val_mAP" in text).split()
             for log in (chief_log, worker_log)]
    numbers = [[line[line.index(key) + 1] for key in ("val_mAP", "mAP50", "loss")] for line in lines]
    assert numbers[0] == numbers[1], numbers
    # Only the chief's run directory holds checkpoints; worker 1's directory is gone.
    assert sorted(path.name for path in run_dir.iterdir() if path.name.startswith(".worker")) == []
    assert Path(worker["run_dir"]).parent.parent == scratch and not Path(worker["run_dir"]).exists()
    assert set(scratch.iterdir()) == left_by_the_kill
