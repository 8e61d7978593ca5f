"""detkeeper's callbacks in a user's own `fit`, mixed with Keras' own: they talk through `logs`."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.data.pipeline import evaluation_dataset, training_dataset
from detkeeper.data.voc import read_voc
from detkeeper.evaluation.callback import CocoEvaluationCallback
from detkeeper.evaluation.monitors import weighted_monitor
from detkeeper.models import build_model
from detkeeper.models.detector import fit_inputs
from detkeeper.training.callbacks import BestCheckpoints
from detkeeper.training.early_stopping import EarlyStopping, EarlyStoppingState


@pytest.fixture(scope="module")
def data(shapes_dataset):
    readout = read_voc(shapes_dataset, split="train")
    records = readout.records[:8]
    train = training_dataset(records, readout.label_map, image_size=64, batch_size=4, max_boxes=10,
                             augmentation=None, seed=0).map(fit_inputs)
    val = evaluation_dataset(records, readout.label_map, image_size=64, batch_size=4, max_boxes=10)
    return train, val, records, readout.label_map


def test_map_reaches_keras_early_stopping_and_the_best_checkpointer(data, tmp_path):
    train, val, records, label_map = data
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(image_size=64, backbone=BackboneConfig("tiny", "none")), label_map.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    evaluation = CocoEvaluationCallback(val, label_map, ground_truth=records,
                                        monitors={"blend": weighted_monitor({"mAP50": 0.1, "mAP": 0.9})})
    state = EarlyStoppingState()
    history = model.fit(train, epochs=3, steps_per_epoch=2, verbose=0, shuffle=False, callbacks=[
        evaluation,
        keras.callbacks.EarlyStopping(monitor="val_mAP", mode="max", patience=10),
        EarlyStopping("val_blend", patience=10, state=state),
        BestCheckpoints(tmp_path / "checkpoints", monitor="val_blend", keep_best=1, keep_last=1,
                        extra={"early_stopping": state}),
    ])
    logs = history.history
    for key in ("val_mAP", "val_mAP50", "val_mAP75", "val_AR100", "val_latency_ms", "val_blend"):
        assert len(logs[key]) == 3, key
    np.testing.assert_allclose(logs["val_blend"], 0.1 * np.array(logs["val_mAP50"]) + 0.9 * np.array(logs["val_mAP"]))
    assert all(value > 0 for value in logs["val_latency_ms"])
    ledger = json.loads((tmp_path / "checkpoints" / "ledger.json").read_text())
    assert [row["step"] for row in ledger["history"]] == [2, 4, 6]
    assert ledger["policy"]["monitor"] == "val_blend"
    assert evaluation.last.result.num_images == 8


def test_evaluating_every_other_epoch_leaves_the_others_alone(data):
    train, val, records, label_map = data
    model = build_model(ModelConfig(image_size=64, backbone=BackboneConfig("tiny", "none")), label_map.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(train, epochs=4, steps_per_epoch=1, verbose=0, shuffle=False,
                        callbacks=[CocoEvaluationCallback(val, label_map, every_epochs=2)])
    assert len(history.history["loss"]) == 4
    assert len(history.history["val_mAP"]) == 2  # epochs 2 and 4 only
