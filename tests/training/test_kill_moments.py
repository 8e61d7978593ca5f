"""Killed while the ledger commits a checkpoint, rerun: every kept checkpoint is whole and the best-k set
is the uninterrupted run's.

The ledger write is the commit point of a save (``detkeeper.run.ledger``). The kill lands in
the middle of it: the checkpoint folder of step 100 is complete and in place, half of the new
ledger sits in its temporary file, ``ledger.json`` still lists steps 20-80. The rerun must treat
step 100 as never saved (set it aside, train it again) and end where the reference run ended.
"""

from __future__ import annotations

import hashlib
import json
import signal

import numpy as np
import pytest
import tensorflow as tf

from test_resume import comparable, run_driver
from training_runs import write_config

KILL_STEP = 100  # the fifth of six evaluations: the ledger already holds four, retention is at work


@pytest.mark.slow
def test_killed_during_the_ledger_write_then_rerun_keeps_intact_checkpoints_and_the_same_best(
        reference_run, shapes_dataset, tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"

    killed = run_driver(config, "ledger", KILL_STEP)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    before = json.loads((checkpoints / "ledger.json").read_text())  # the previous ledger, whole
    assert [row["step"] for row in before["history"]] == [20, 40, 60, 80]
    assert (checkpoints / f"step-{KILL_STEP:07d}").is_dir()  # saved, hashed, renamed, never committed
    half_written = list(checkpoints.glob(".ledger.json.*"))
    assert len(half_written) == 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(half_written[0].read_text())

    finished = run_driver(config, "none")
    assert finished.returncode == 0, finished.stderr[-2000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"set aside step-{KILL_STEP:07d} as unrecorded-step-{KILL_STEP:07d}-" in log
    assert "resuming" in log and "from step-0000080 (step 80 of 120)" in log
    assert f"removed {half_written[0].name}: a ledger write that was interrupted" in log
    assert not half_written[0].exists()

    _, reference = reference_run
    reference_ledger = json.loads(reference.ledger_path.read_text())
    ledger = json.loads((checkpoints / "ledger.json").read_text())
    expected, got = comparable(reference_ledger), comparable(ledger)
    assert got[1:] == expected[1:]  # kept steps (the best 3 and the last 2), best pointer, status
    assert [step for step, _, _ in got[0]] == [step for step, _, _ in expected[0]]
    for (step, _, metrics), (_, _, reference_metrics) in zip(got[0], expected[0]):
        assert metrics["val_mAP"] == pytest.approx(reference_metrics["val_mAP"], abs=1e-6), step

    on_disk = {folder.name for folder in checkpoints.glob("step-*")}
    assert on_disk == {entry["name"] for entry in ledger["checkpoints"]}
    for entry in ledger["checkpoints"]:
        folder = checkpoints / entry["name"]
        assert {path.name for path in folder.iterdir()} == set(entry["files"])
        for name, digest in entry["files"].items():
            data = (folder / name).read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (digest["size"], digest["sha256"]), name
        reader = tf.train.load_checkpoint(str(folder / entry["prefix"]))
        reference_reader = tf.train.load_checkpoint(str(reference.run_dir / "checkpoints" / entry["name"] / "ckpt"))
        names = reader.get_variable_to_shape_map()
        assert names == reference_reader.get_variable_to_shape_map()
        assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == entry["step"]
        for name in names:  # every tensor reads back, and is the uninterrupted run's
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
                np.testing.assert_allclose(reader.get_tensor(name), reference_reader.get_tensor(name),
                                           rtol=0, atol=1e-5, err_msg=f"{entry['name']}: {name}")
