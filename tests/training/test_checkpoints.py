"""Checkpoint files: atomic saves, TF state files, verified restores, interrupted saves set aside."""

import json

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.errors import DetkeeperError
from detkeeper.training.checkpoints import CheckpointStore
from detkeeper.training.ledger import RetentionPolicy


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
