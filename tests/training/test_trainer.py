"""`detkeeper train`: best-k by the logged mAP history, early stopping that survives reruns,
a clear stop on a diverging loss, one process per run directory."""

from __future__ import annotations

import json

import keras
import pytest
import tensorflow as tf

from detkeeper.cli.main import main
from detkeeper.data.sources import DataSources
from detkeeper.errors import DetkeeperError
from detkeeper.run.layout import RunDirectory
from detkeeper.training.callbacks import TrainingDiverged
from detkeeper.training.trainer import train

from test_tensorboard import logged_pictures
from training_runs import write_config


def test_keeps_the_three_best_by_map_and_the_two_latest(reference_run):
    _, result = reference_run
    ledger = json.loads(result.ledger_path.read_text())
    history = ledger["history"]
    assert [row["step"] for row in history] == [20, 40, 60, 80, 100, 120]
    values = {row["step"]: row["metrics"]["val_mAP"] for row in history}
    assert len(set(values.values())) > 2, values  # the ranking is decided by real, varying numbers
    best3 = sorted(values, key=lambda step: (-values[step], step))[:3]
    kept = {entry["step"] for entry in ledger["checkpoints"]}
    assert kept == set(best3) | {100, 120}
    assert ledger["best"] == f"step-{best3[0]:07d}" and result.best.step == best3[0]
    on_disk = {p.name for p in (result.run_dir / "checkpoints").glob("step-*")}
    assert on_disk == {f"step-{step:07d}" for step in kept}
    assert max(values.values()) > 0.8  # it learned: 8 images evaluated on themselves
    assert ledger["status"]["state"] == "finished"


def test_ledger_entries_carry_stats_sizes_and_hashes(reference_run):
    _, result = reference_run
    ledger = json.loads(result.ledger_path.read_text())
    for entry in ledger["checkpoints"]:
        assert entry["monitor_value"] == entry["metrics"]["val_mAP"]
        assert {"val_mAP50", "val_AR100", "val_latency_ms", "loss"} <= set(entry["metrics"])
        assert entry["ema"] is False
        assert all(len(digest["sha256"]) == 64 and digest["size"] > 0 for digest in entry["files"].values())


def test_tf_tools_find_the_latest_and_the_best(reference_run):
    _, result = reference_run
    checkpoints = result.run_dir / "checkpoints"
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("step-0000120/ckpt")
    best = tf.train.latest_checkpoint(str(checkpoints / "best"))
    assert best.endswith(f"step-{result.best.step:07d}/ckpt")
    reader = tf.train.load_checkpoint(best)
    assert reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE") == result.best.step
    assert "early_stopping/wait/.ATTRIBUTES/VARIABLE_VALUE" in reader.get_variable_to_shape_map()


def _refuse_data_reads(monkeypatch) -> None:
    def refuse(self, split, *args, **kwargs):
        raise AssertionError(f"data.{split} was read to find out that the run had ended")
    monkeypatch.setattr(DataSources, "prepare", refuse)


def test_rerun_of_a_finished_run_does_not_train_again_nor_read_its_data(reference_run, monkeypatch):
    config, first = reference_run
    _refuse_data_reads(monkeypatch)
    again = train(config)
    assert again.status == "already_finished" and again.step == 120 and again.best.step == first.best.step


def test_training_writes_tensorboard_and_a_log(reference_run):
    _, result = reference_run
    run = RunDirectory(result.run_dir)
    assert list((run.logs_path / "train").glob("events.out.tfevents.*"))
    # Every evaluation's pictures: the 4 sample images, each drawn only when that pass scored it.
    pictures = logged_pictures(run.logs_path)
    assert sorted(pictures) == [20, 40, 60, 80, 100, 120] and {len(images) for images in pictures.values()} == {4}
    log = run.log_file_path.read_text()
    assert "step 120  val_mAP" in log and "training finished at step 120" in log


def test_checkpoints_command_lists_best_first(reference_run, capsys):
    _, result = reference_run
    assert main(["checkpoints", str(result.run_dir)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].startswith(f"*step-{result.best.step:07d}")
    kept = len(json.loads(result.ledger_path.read_text())["checkpoints"])
    assert f"{kept} kept (3 best by val_mAP, max; 2 latest)" in out and "run status: finished" in out
    assert len(lines) == kept + 3  # header, rows, blank, summary
    assert main(["checkpoints", str(result.run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["best"] == f"step-{result.best.step:07d}"


def test_early_stopping_stops_and_stays_stopped(shapes_dataset, tmp_path, caplog, monkeypatch):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run",
                          train={"batch_size": 4, "steps": 200}, evaluation={"every_steps": 10},
                          early_stopping={"enabled": True, "patience": 2, "baseline": 1.5})
    with caplog.at_level("INFO", logger="detkeeper.training"):
        result = train(config)  # mAP can never beat 1.5: patience runs out after two evaluations
    assert result.status == "stopped_early" and result.step == 20
    # The last line says so even though restoring the best checkpoint brings back its older state.
    assert "training stopped early at step 20" in caplog.messages[-1]
    ledger = json.loads(result.ledger_path.read_text())
    assert ledger["status"]["state"] == "stopped_early"
    _refuse_data_reads(monkeypatch)  # the ledger says it stopped: no data is read to say so again
    with caplog.at_level("INFO", logger="detkeeper.training"):
        again = train(config)
    assert again.status == "already_stopped" and again.step == 20 and again.best.step == result.best.step
    assert "stopped early at step 20 (no improvement of val_mAP for 2 evaluations)" in caplog.messages[-1]


def test_a_diverging_loss_stops_with_a_clear_error_and_keeps_checkpoints(shapes_dataset, tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run",
                          train={"batch_size": 4, "steps": 60, "optimizer": {"name": "sgd", "learning_rate": 1e12,
                                                                             "clipnorm": None},
                                 "schedule": {"name": "step", "warmup_steps": 0, "decay_steps": [10],
                                              "decay_rate": 1.0}},
                          evaluation={"every_steps": 5})
    with pytest.raises(TrainingDiverged, match=r"the training loss became (nan|inf) at step \d+; training stopped"):
        train(config)


def test_a_second_process_on_the_same_run_dir_is_refused(shapes_dataset, tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    with RunDirectory(tmp_path / "run").lock():
        with pytest.raises(DetkeeperError, match="is in use by process"):
            train(config)


def test_training_needs_a_validation_split(shapes_dataset, tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    with pytest.raises(DetkeeperError, match="data.val: training keeps the best checkpoints"):
        train(config, ["data.val=null"])



def test_ema_and_mixed_precision_runs_save_their_averages_and_resume(shapes_dataset, tmp_path):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run",
                          train={"batch_size": 4, "steps": 20, "ema_decay": 0.9, "mixed_precision": True,
                                 "schedule": {"name": "constant", "warmup_steps": 0}},
                          evaluation={"every_steps": 10})
    first = train(config, ["train.steps=10"])
    assert keras.mixed_precision.dtype_policy().name == "float32"  # the caller's policy is back
    resumed = train(config)
    assert (first.step, resumed.step, resumed.status) == (10, 20, "finished")
    ledger = json.loads(resumed.ledger_path.read_text())
    assert [entry["ema"] for entry in ledger["checkpoints"]] == [True, True]
    reader = tf.train.load_checkpoint(str(resumed.run_dir / "checkpoints" / "step-0000020" / "ckpt"))
    names = reader.get_variable_to_shape_map()
    assert any(name.startswith("ema/") for name in names)
    assert "from step-0000010 (step 10 of 20)" in (resumed.run_dir / "train.log").read_text()


def test_resuming_with_a_different_model_is_a_clear_error(reference_run, tmp_path):
    import shutil

    config, result = reference_run
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir, copy)
    with pytest.raises(DetkeeperError, match="does not fit the model and optimizer the config describes"):
        train(config, [f"run_dir={copy}", "train.steps=140", "model.head.convs=1"])


def test_the_train_command_logs_each_evaluation_once_and_into_train_log(shapes_dataset, tmp_path, capsys):
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run",
                          train={"batch_size": 4, "steps": 10, "schedule": {"name": "constant", "warmup_steps": 0}},
                          evaluation={"every_steps": 10})
    assert main(["train", str(config), "--quiet"]) == 0
    assert main(["train", str(config)]) == 0  # already finished: says so
    out, err = capsys.readouterr()
    assert out.count("already trained to step 10") == 1 and "detkeeper.training" not in err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 10  val_mAP" in log and "already trained to step 10" in log
