"""MirroredStrategy over 2 logical CPU devices trains like one device at the same global batch.

Both runs are processes of their own: the logical devices must be configured before any TensorFlow op.
Tolerance: the running training loss agrees to 1e-4 (relative) over the first 15 steps and to 5%
over all 30. The replicas' sum of gradients and the synchronised BatchNorm (E[x^2] - E[x]^2 over
the global batch) round differently from one device (1e-6 at first); once the loss falls fast the
difference grows (about 1% by step 22 on this run). A mistake in the distributed math shows at once:
unscaled replica losses double the gradient, per-replica clipping or per-replica normalisation
change the first updates by far more than 1e-4.
"""

from __future__ import annotations

import json

import tensorflow as tf

from detkeeper.run.layout import RunDirectory
from detkeeper.run.restore import restore_run_checkpoint

from distribute_runs import MIRRORED_2_CPUS, run_driver, run_driver_process


def _ledger(run_dir) -> dict:
    return json.loads((run_dir / "checkpoints" / "ledger.json").read_text())


def test_two_replicas_follow_the_one_device_loss_curve_and_keep_the_same_ledger(sgd_config, tmp_path):
    # EMA on in both: it does not touch the training loss, and the mirrored run's averages must be
    # created in the strategy's scope, saved, and exported like one device's.
    one = sgd_config("one", train={"ema_decay": 0.9})
    two = sgd_config("two", train={"ema_decay": 0.9})
    result_one, _ = run_driver(one, "--curve", str(tmp_path / "one.json"))
    result_two, log_two = run_driver(two, "--curve", str(tmp_path / "two.json"), *MIRRORED_2_CPUS)

    assert "distribute: mirrored, 2 replica(s) in 1 worker(s)" in log_two
    assert "global batch 8 = 4 per replica; learning rate 0.01 for the global batch (not scaled)" in log_two
    assert "BatchNorm synchronised over the global batch" in log_two

    curve_one = json.loads((tmp_path / "one.json").read_text())
    curve_two = json.loads((tmp_path / "two.json").read_text())
    assert sorted(curve_one, key=int) == sorted(curve_two, key=int) == [str(step) for step in range(1, 31)]
    for step in curve_one:
        for name in ("loss", "class_loss", "box_loss"):
            a, b = curve_one[step][name], curve_two[step][name]
            tolerance = 1e-4 if int(step) <= 15 else 5e-2
            assert abs(a - b) <= tolerance * abs(a), (step, name, a, b)

    # The ledger is the same in form: same checkpoints, same keys, same statistics.
    assert result_one["status"] == result_two["status"] == "finished"
    assert result_one["best"] == result_two["best"]
    ledger_one, ledger_two = _ledger(tmp_path / "one"), _ledger(tmp_path / "two")
    assert set(ledger_one) == set(ledger_two)
    assert [entry["name"] for entry in ledger_one["checkpoints"]] == [entry["name"] for entry in ledger_two["checkpoints"]]
    for row_one, row_two in zip(ledger_one["history"], ledger_two["history"]):
        assert row_one["step"] == row_two["step"] and set(row_one["metrics"]) == set(row_two["metrics"])
        assert abs(row_one["metrics"]["loss"] - row_two["metrics"]["loss"]) <= 5e-2 * row_one["metrics"]["loss"]
    # The checkpoints hold the same variables with the same shapes, so exports are built alike.
    for entry in ledger_one["checkpoints"]:
        names = [tf.train.list_variables(str(tmp_path / run / "checkpoints" / entry["name"] / "ckpt"))
                 for run in ("one", "two")]
        assert names[0] == names[1]
    assert (tmp_path / "two" / "checkpoints" / "best" / "checkpoint").exists()
    assert all(entry["ema"] for entry in ledger_two["checkpoints"])
    # The mirrored run's best checkpoint, its EMA weights, restores whole on one device: what an export,
    # evaluate or predict of the run starts from (restoring fails on any model variable not found).
    restored = restore_run_checkpoint(RunDirectory(tmp_path / "two"))
    assert restored.entry.ema is True and restored.entry.name == result_two["best"]
    detections = restored.model.detect(tf.zeros([1, 128, 128, 3]))
    assert int(detections["num_detections"][0]) >= 0


def test_a_global_batch_that_does_not_split_evenly_is_refused(sgd_config):
    config = sgd_config("odd", train={"batch_size": 7})
    completed = run_driver_process(config, *MIRRORED_2_CPUS, timeout=120)
    assert completed.returncode != 0
    assert "train.batch_size: the global batch (7) must split evenly over the 2 replicas" in completed.stderr
