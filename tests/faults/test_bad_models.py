"""Models and files from elsewhere through the command line: a clear error naming the file, a non-zero
exit, no traceback, nothing written.

Covered beside their code, not repeated here: a run whose config no longer fits its checkpoint
(tests/evaluation/test_evaluate_command.py, tests/training/test_trainer.py), a truncated SavedModel
and one that is not a detector loaded from Python (tests/export/test_load_predict.py), a `.keras`
archive with a Lambda layer refused in safe mode (tests/models/test_custom_layers.py), a damaged
latest checkpoint skipped on resume (tests/training/test_checkpoints.py).
"""

from __future__ import annotations

import shutil

import keras
import pytest
import tensorflow as tf

from detkeeper.cli.main import main
from fault_runs import read_ledger, visible_exports

NOT_OURS = "not a run directory (config.yaml inside), a checkpoint of one"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """Files made by someone else's code: a tf.train checkpoint of a Dense model, a SavedModel that
    doubles numbers, a `.keras` archive with a Lambda layer."""
    root = tmp_path_factory.mktemp("foreign")
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    tf.train.Checkpoint(model=dense).write(str(root / "dense" / "ckpt"))

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2}

    doubler = Doubler()
    tf.saved_model.save(doubler, str(root / "doubler"), signatures={"serving_default": doubler.__call__})
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)]).save(root / "lambda.keras")
    return root


def _run(capsys, *args) -> tuple[int, str]:
    code = main([*args, "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return code, err


@pytest.mark.parametrize("command", ["export", "predict", "evaluate"])
@pytest.mark.parametrize("model", ["dense/ckpt", "dense", "doubler", "lambda.keras"])
def test_a_model_from_elsewhere_is_refused_by_name(foreign, shapes_dataset, tmp_path, capsys, faults, command, model):
    path = foreign / model
    args = {"export": ["export", str(path), "--out", str(tmp_path / "out")],
            "predict": ["predict", str(path), str(shapes_dataset / "JPEGImages"), "--out", str(tmp_path / "out")],
            "evaluate": ["evaluate", str(path), "--data", str(shapes_dataset)]}[command]
    faults.bad_input()
    code, err = _run(capsys, *args)
    assert code == 2, err[-3000:]
    if model != "doubler":
        expected = NOT_OURS
    elif command == "export":
        expected = "an exported SavedModel, not a run directory or checkpoint"
    else:
        expected = "not a detection SavedModel: expected signatures serving_default (outputs detection_boxes"
    assert f"detkeeper {command}: error: {path}: {expected}" in err, err[-3000:]
    assert not (tmp_path / "out").exists()


def test_a_foreign_checkpoint_as_init_from_is_refused_before_training(foreign, shapes_dataset, tmp_path, capsys,
                                                                        faults):
    from fault_runs import write_fault_config

    config = write_fault_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run")
    faults.bad_input()
    code, err = _run(capsys, "train", str(config), "--set", f"model.init_from.path={foreign / 'dense' / 'ckpt'}")
    assert code == 2 and f"model.init_from.path: {foreign / 'dense' / 'ckpt'}: {NOT_OURS}" in err, err[-3000:]
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


@pytest.fixture
def run_copy(fault_reference, tmp_path):
    _, reference_dir, _ = fault_reference
    copy = tmp_path / "run"
    shutil.copytree(reference_dir, copy)
    return copy


def test_a_truncated_checkpoint_is_never_exported(run_copy, tmp_path, capsys, faults):
    best = read_ledger(run_copy)["best"]
    data = next((run_copy / "checkpoints" / best).glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    faults.bad_input()
    code, err = _run(capsys, "export", str(run_copy), "--out", str(tmp_path / "exports" / "best"))
    assert code == 2, err[-3000:]
    assert f"checkpoint {best} cannot be trusted: {data} has" in err and "the ledger recorded" in err
    assert visible_exports(tmp_path / "exports") == {} and not list((tmp_path / "exports").glob(".*"))


def test_a_ledger_changed_by_hand_is_named_not_trusted(run_copy, capsys, faults):
    ledger = run_copy / "checkpoints" / "ledger.json"
    ledger.write_text(ledger.read_text()[:-40])
    faults.bad_input()
    for command in (["checkpoints", str(run_copy)], ["export", str(run_copy)]):
        code, err = _run(capsys, *command)
        assert code == 2 and f"{ledger}: the checkpoint ledger cannot be read" in err, err[-3000:]
    assert not (run_copy / "exports").exists()
