"""CocoMetric in compile(metrics=...): the number evaluate and fit report is CocoEvaluator's.

One tiny RetinaNet at 128 px (the shapes images' own size, so model-input pixels are original
pixels and run_validation scores the same boxes), score threshold 0 so an untrained model keeps
100 detections per image and its stats are not 0. Fitting it once (2 steps, validation on the 8
val images) traces the train and test steps that the other tests reuse.
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.data.pipeline import evaluation_dataset, training_dataset
from detkeeper.data.voc import read_voc
from detkeeper.evaluation import STAT_NAMES, CocoMetric
from detkeeper.evaluation.runner import compiled_detect, run_validation
from detkeeper.models import build_model
from detkeeper.models.archive import load_keras_archive, save_keras_archive
from detkeeper.models.detector import fit_inputs
from detkeeper.models.registry import Postprocess
from detkeeper.training.fused_updates import FusedAdam

STATS = ("mAP", "mAP50", "AR100", "mAP_small")


@pytest.fixture(scope="module")
def data(shapes_dataset):
    readout = read_voc(shapes_dataset, split="val")
    records, label_map = readout.records, readout.label_map
    evaluation = evaluation_dataset(records, label_map, image_size=128, batch_size=4, max_boxes=10)
    assert all(np.all(batch["image_scales"].numpy() == 1.0) for batch in evaluation)  # 128 px images
    train = training_dataset(records, label_map, image_size=128, batch_size=4, max_boxes=10,
                             augmentation=None, seed=0).map(fit_inputs)
    return {"train": train, "evaluation": evaluation, "val": evaluation.map(fit_inputs), "label_map": label_map}


def _model(label_map, metrics=None):
    keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(image_size=128, backbone=BackboneConfig("tiny", "none")),
                        label_map.num_classes, Postprocess(score_threshold=0.0))
    model.compile(optimizer=FusedAdam(3e-3), metrics=metrics)  # the trainer's Adam
    return model


@pytest.fixture(scope="module")
def fitted(data):
    label_map = data["label_map"]
    metrics = [CocoMetric(label_map, stat) for stat in STATS]
    metrics.append(CocoMetric(label_map, "AR100", during_training=True, name="AR100_seen"))
    model = _model(label_map, metrics)
    assert not model.run_eagerly  # train and test steps run as tf.function graphs
    history = model.fit(data["train"], epochs=2, steps_per_epoch=1, validation_data=data["val"],
                        shuffle=False, verbose=0)
    return model, metrics, history.history


def _reference(model, dataset, label_map):
    return run_validation(compiled_detect(model), dataset, label_map).result


def test_evaluate_reports_the_stats_run_validation_computes(fitted, data):
    model, metrics, _ = fitted
    logs = model.evaluate(data["val"], return_dict=True, verbose=0)
    reference = _reference(model, data["evaluation"], data["label_map"])
    for stat in STATS:
        assert abs(logs[stat] - reference.stats[stat]) <= 1e-12, stat
    assert logs["mAP"] > 0 and logs["AR100"] > logs["mAP"]  # a real evaluation, not zeros
    result = metrics[0].last_result
    assert result.num_images == 8 and result.image_ids == tuple(range(8))
    assert result.per_class_ap == reference.per_class_ap


def test_fit_history_has_val_stats_and_no_training_map_by_default(fitted):
    _, _, history = fitted
    for stat in STATS:
        assert len(history[f"val_{stat}"]) == 2 and all(value > -1 for value in history[f"val_{stat}"]), stat
        assert history[stat] == [-1.0, -1.0], stat  # not updated in training steps
    # during_training=True: the training logs carry the stat over the epoch's training batches
    assert all(value > 0 for value in history["AR100_seen"]) and len(history["val_AR100_seen"]) == 2


def test_a_second_evaluation_starts_from_scratch(fitted, data):
    model, metrics, _ = fitted
    whole = model.evaluate(data["val"], return_dict=True, verbose=0)
    first_batch = model.evaluate(data["val"].take(1), return_dict=True, verbose=0)
    reference = _reference(model, data["evaluation"].take(1), data["label_map"])
    assert metrics[0].last_result.num_images == 4
    assert metrics[0].last_result.image_ids == (0, 1, 2, 3)
    for stat in STATS:
        assert abs(first_batch[stat] - reference.stats[stat]) <= 1e-12, stat
    assert first_batch["AR100"] != whole["AR100"]


def test_checkpoints_are_the_same_with_and_without_the_metric(fitted, data, tmp_path):
    model, _, _ = fitted
    plain = _model(data["label_map"])
    plain(next(iter(data["val"]))[0])
    plain.optimizer.build(plain.trainable_variables)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(tmp_path / "with" / "ckpt")
    plain_path = tf.train.Checkpoint(model=plain, optimizer=plain.optimizer).save(tmp_path / "without" / "ckpt")
    names = [[name for name, _ in tf.train.list_variables(p)] for p in (path, plain_path)]
    assert names[0] == names[1]
    tf.train.Checkpoint(model=plain, optimizer=plain.optimizer).restore(path).assert_consumed()


def test_keras_archive_keeps_the_metric_and_scores_the_same(fitted, data, tmp_path):
    model, metrics, _ = fitted
    expected = model.evaluate(data["val"], return_dict=True, verbose=0)
    archive = save_keras_archive(model, tmp_path / "model.keras")
    loaded = load_keras_archive(archive)
    assert type(loaded.optimizer) is FusedAdam
    restored = loaded._compile_config.config["metrics"]
    assert [metric.get_config() for metric in restored] == [metric.get_config() for metric in metrics]
    assert all(metric.detector is None for metric in restored)  # the detector gives itself at the first step
    logs = loaded.evaluate(data["val"], return_dict=True, verbose=0)
    assert all(metric.detector is loaded for metric in restored)
    for stat in STATS:
        assert logs[stat] == expected[stat], stat


def test_a_compiled_archive_loads_where_only_the_loader_was_imported(fitted, tmp_path):
    """The archive records the modules of its metric and optimizer; the loader imports them."""
    archive = save_keras_archive(fitted[0], tmp_path / "model.keras")
    load = ("from detkeeper.models.archive import load_keras_archive\n"
            f"model = load_keras_archive({str(archive)!r})\n"
            "print(type(model.optimizer).__name__, *[type(m).__name__ for m in model._compile_config.config['metrics']])")
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["FusedAdam"] + ["CocoMetric"] * 5


def test_bad_stat_name_is_a_clear_error(data):
    with pytest.raises(ValueError, match=r"unknown stat 'AP'; choose one of mAP, mAP50, .*AR_large"):
        CocoMetric(data["label_map"], "AP")
    assert [CocoMetric(data["label_map"], stat).name for stat in STAT_NAMES] == list(STAT_NAMES)


def test_misuse_outside_a_detector_is_a_clear_error(data):
    metric = CocoMetric(data["label_map"])
    targets = {"boxes": tf.zeros([1, 2, 4]), "classes": -tf.ones([1, 2], tf.int32)}
    with pytest.raises(ValueError, match="has no detector to decode y_pred with"):
        metric.update_state(targets, {})
    with pytest.raises(ValueError, match=r"y_true must be the padded targets \{'boxes', 'classes'\}"):
        metric.update_state(tf.zeros([1, 2, 4]), {})
    with pytest.raises(ValueError, match="takes no sample weights"):
        metric.update_state(targets, {}, sample_weight=tf.ones([1]))
    assert metric.result().numpy() == -1.0  # no image yet: COCO's "undefined"
