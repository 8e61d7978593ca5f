"""Checkpoint files: atomic saves, TF state files, verified restores, interrupted saves set aside."""

import json

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.errors import DetkeeperError
from detkeeper.run.checkpoints import CheckpointStore
from detkeeper.run.ledger import RetentionPolicy


def make_checkpoint(value):
    return tf.train.Checkpoint(weights=tf.Variable(np.full([64], value, np.float32)))


def save_series(store, values):
    for index, value in enumerate(values):
        step = (index + 1) * 100
        store.save(make_checkpoint(value), step=step, epoch=index + 1, metrics={"val_mAP": value}, ema=False)


@pytest.fixture
def store(tmp_path):
    return CheckpointStore(tmp_path / "checkpoints", RetentionPolicy("val_mAP", keep_best=2, keep_last=1))


def test_only_the_kept_checkpoints_stay_on_disk(store):
    save_series(store, [0.1, 0.5, 0.2, 0.4, 0.3])
    on_disk = sorted(p.name for p in store.directory.iterdir() if p.is_dir() and p.name != "best")
    assert on_disk == ["step-0000200", "step-0000400", "step-0000500"]
    ledger = json.loads((store.directory / "ledger.json").read_text())
    assert [c["step"] for c in ledger["checkpoints"]] == [200, 400, 500]  # best first
    assert ledger["best"] == "step-0000200" and ledger["pruned"] == []


def test_tf_state_files_point_at_latest_and_best(store):
    save_series(store, [0.1, 0.5, 0.2])
    latest = tf.train.latest_checkpoint(str(store.directory))
    best = tf.train.latest_checkpoint(str(store.directory / "best"))
    assert latest.endswith("step-0000300/ckpt")
    assert tf.train.load_checkpoint(best).get_tensor("weights/.ATTRIBUTES/VARIABLE_VALUE")[0] == np.float32(0.5)


def test_restore_by_name_reads_back_the_saved_values(store):
    save_series(store, [0.1, 0.5, 0.2])
    entry = store.resolve("best")
    target = make_checkpoint(0.0)
    target.read(store.path_of(entry)).assert_consumed()
    np.testing.assert_array_equal(target.weights.numpy(), np.full([64], 0.5, np.float32))
    assert store.resolve("300").step == 300
    with pytest.raises(DetkeeperError, match="no kept checkpoint at step 100; kept steps: 200, 300"):
        store.resolve("100")


def test_damaged_latest_is_skipped_and_left_on_disk(store):
    save_series(store, [0.1, 0.5, 0.2])
    data_file = next((store.directory / "step-0000300").glob("ckpt.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:-7] + b"garbage")
    entry, problems = store.latest_intact()
    assert entry.step == 200
    assert "step-0000300 (step 300) is skipped" in problems[0] and "sha256" in problems[0]
    assert data_file.exists()
    with pytest.raises(DetkeeperError, match="cannot be trusted"):
        store.resolve("latest")


def test_interrupted_saves_are_reported_and_never_trusted(store, tmp_path):
    save_series(store, [0.1])
    make_checkpoint(9.0).write(str(store.directory / ".partial-step-0000200" / "ckpt"))
    make_checkpoint(9.0).write(str(store.directory / "step-0000300" / "ckpt"))  # renamed, never committed
    reopened = CheckpointStore(store.directory, store.policy)
    messages = reopened.tidy()
    assert any("interrupted before it finished" in m for m in messages)
    assert any("set aside step-0000300" in m for m in messages)
    assert not (store.directory / ".partial-step-0000200").exists()
    assert [p.name.startswith("unrecorded-step-0000300") for p in store.directory.glob("unrecorded-*")] == [True]
    assert reopened.latest_intact()[0].step == 100


def test_prunes_interrupted_after_the_ledger_commit_are_finished(store):
    save_series(store, [0.1, 0.5])
    ledger = store.ledger
    ledger.pruned = ["step-0000100"]  # as if the process died between the ledger write and rmtree
    (store.directory / "step-0000100").mkdir(exist_ok=True)
    ledger.write(store.ledger_path)
    reopened = CheckpointStore(store.directory, store.policy)
    assert any("removed pruned checkpoint step-0000100" in m for m in reopened.tidy())
    assert not (store.directory / "step-0000100").exists()


def test_non_chief_writes_nothing_in_the_run(tmp_path):
    worker = CheckpointStore(tmp_path / "checkpoints", RetentionPolicy("val_mAP"), is_chief=False)
    assert worker.save(make_checkpoint(1.0), step=10, epoch=1, metrics={"val_mAP": 1.0}, ema=False) is None
    assert list((tmp_path / "checkpoints").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


def test_with_min_delta_every_reader_of_best_gets_the_top_of_the_ranking(tmp_path, capsys):
    """0.500 then 0.509 with min_delta 0.01: the best is step 200 for the ledger, TF's pointer,
    the entry export, evaluate and predict restore, ``detkeeper checkpoints`` and the report."""
    from argparse import Namespace

    from detkeeper.cli.train_commands import run_checkpoints
    from detkeeper.run.checkpoints import checkpoint_entry
    from detkeeper.report.page import _ledger
    from detkeeper.report.rundata import read_run
    from detkeeper.run.layout import RunDirectory

    store = CheckpointStore(tmp_path / "checkpoints", RetentionPolicy("val_mAP", keep_best=2, keep_last=1,
                                                                      min_delta=0.01))
    save_series(store, [0.500, 0.509, 0.100])
    assert json.loads(store.ledger_path.read_text())["best"] == "step-0000200"
    assert store.resolve("best").step == 200
    assert tf.train.latest_checkpoint(str(store.directory / "best")).endswith("step-0000200/ckpt")
    run_checkpoints(Namespace(run_dir=str(tmp_path), json=False))
    assert capsys.readouterr().out.splitlines()[1].startswith("*step-0000200")
    (tmp_path / "config.yaml").write_text("run_dir: .\n")
    assert checkpoint_entry(RunDirectory(tmp_path), "best")[1].step == 200
    contents = read_run(tmp_path)
    assert contents.best_text() == "val_mAP 0.5090 @ step 200 (step-0000200)"
    html = _ledger(contents)
    assert html.count('<tr class="best">') == 1 and '<tr class="best"><td class="num">200</td>' in html
    assert "min_delta" not in html  # it does not decide what is kept


def test_an_older_ledger_whose_best_lags_the_top_is_read_with_the_top(tmp_path):
    """A ledger written while min_delta could hold the best back: resolve and, after tidy() on
    the next train, TF's best pointer name the top of the ranking."""
    store = CheckpointStore(tmp_path / "checkpoints", RetentionPolicy("val_mAP", keep_best=2, keep_last=1))
    save_series(store, [0.500, 0.509, 0.100])
    data = json.loads(store.ledger_path.read_text())
    data["best"] = "step-0000100"
    store.ledger_path.write_text(json.dumps(data))
    (store.directory / "best" / "checkpoint").write_text('model_checkpoint_path: "../step-0000100/ckpt"\n')
    reopened = CheckpointStore(store.directory, store.policy)
    assert reopened.resolve("best").step == 200
    reopened.tidy()
    assert tf.train.latest_checkpoint(str(store.directory / "best")).endswith("step-0000200/ckpt")


def test_a_set_aside_save_is_removed_once_its_step_is_committed_and_the_log_says_so(store, caplog):
    save_series(store, [0.1])
    make_checkpoint(9.0).write(str(store.directory / "step-0000200" / "ckpt"))  # renamed, never committed
    make_checkpoint(9.0).write(str(store.directory / "step-0000400" / "ckpt"))
    reopened = CheckpointStore(store.directory, store.policy)
    reopened.tidy()
    set_aside = sorted(p.name for p in store.directory.glob("unrecorded-*"))
    assert [name[:len("unrecorded-step-0000200")] for name in set_aside] == ["unrecorded-step-0000200",
                                                                           "unrecorded-step-0000400"]
    with caplog.at_level("INFO", logger="detkeeper.training"):
        reopened.save(make_checkpoint(0.2), step=200, epoch=2, metrics={"val_mAP": 0.2}, ema=False)
    assert not (store.directory / set_aside[0]).exists()
    assert (store.directory / set_aside[1]).is_dir()  # step 400 has not been committed again yet
    assert f"removed {set_aside[0]}: step-0000200 is committed again" in caplog.text
    with caplog.at_level("INFO", logger="detkeeper.training"):
        reopened.save(make_checkpoint(0.3), step=400, epoch=4, metrics={"val_mAP": 0.3}, ema=False)
    assert not list(store.directory.glob("unrecorded-*"))
    assert f"removed {set_aside[1]}: step-0000400 is committed again" in caplog.text


def test_a_damaged_recorded_checkpoint_saved_again_is_set_aside_and_never_removed(store, caplog):
    """Resumed from step 200 because step 300 was damaged: saving step 300 again replaces its
    ledger entry; the damaged folder is kept for inspection, also after later saves."""
    save_series(store, [0.1, 0.5, 0.2])
    data_file = next((store.directory / "step-0000300").glob("ckpt.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:-7] + b"garbage")
    assert store.latest_intact()[0].step == 200
    with caplog.at_level("INFO", logger="detkeeper.training"):
        store.save(make_checkpoint(0.6), step=300, epoch=3, metrics={"val_mAP": 0.6}, ema=False)
        store.save(make_checkpoint(0.3), step=400, epoch=4, metrics={"val_mAP": 0.3}, ema=False)
    kept_aside = list(store.directory.glob("replaced-step-0000300-*"))
    assert len(kept_aside) == 1 and (kept_aside[0] / data_file.name).read_bytes().endswith(b"garbage")
    assert not list(store.directory.glob("unrecorded-*"))
    assert f"set aside the recorded checkpoint step-0000300 as {kept_aside[0].name}" in caplog.text
    assert "sha256" in caplog.text  # why it was not used
    assert store.resolve("best").step == 300 and store.resolve("300").monitor_value == 0.6
