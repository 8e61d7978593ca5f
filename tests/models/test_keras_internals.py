"""The private Keras and TensorFlow attributes detkeeper relies on, one test per use.

Keras is bounded to one major version in pyproject.toml, but a minor release may still rename a
private attribute. Each test here checks exactly what its user in detkeeper needs and fails with
a message naming that user, so an upgrade that breaks one is a red test, not a checkpoint that
silently skips weights.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import ModelConfig
from detkeeper.models import build_model

UPGRADE = "Keras {} changed {}, which {} uses; adapt it before allowing this Keras version"


class _Blocks(keras.layers.Layer):
    """A layer holding sub-layers in a list, as detkeeper's head towers and FPN levels do."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(2, name="first"), keras.layers.Dense(2, name="second")]

    def call(self, inputs):
        for block in self.blocks:
            inputs = block(inputs)
        return inputs


def _message(what: str, user: str) -> str:
    return UPGRADE.format(keras.__version__, what, user)


@pytest.fixture(scope="module")
def detector():
    model = build_model(ModelConfig(name="retinanet_tiny", image_size=64), num_classes=2)
    model(tf.zeros([1, 64, 64, 3]), training=False)
    return model


def test_flatten_layers_walks_into_layers_held_in_lists(detector):
    user = "Detector._trackable_children and Distribution.synchronise_batch_norm"
    assert hasattr(detector, "_flatten_layers"), _message("Layer._flatten_layers", user)
    layers = list(detector._flatten_layers(include_self=False, recursive=True))
    assert detector.head.class_tower[0] in layers, _message("Layer._flatten_layers(recursive=True)", user)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in layers), \
        _message("Layer._flatten_layers(recursive=True)", user)


def test_tracked_names_the_attributes_holding_collections():
    layer = _Blocks()
    assert "blocks" in getattr(layer, "_tracked", ()), _message("Layer._tracked", "Detector._trackable_children")


def test_track_trackable_adds_a_named_checkpoint_dependency():
    owner, child = tf.Module(), tf.Variable(1.0)
    assert hasattr(owner, "_track_trackable"), _message("Trackable._track_trackable", "detector._track_collection")
    owner._track_trackable(child, name="blocks[0]", overwrite=True)
    assert owner._trackable_children("checkpoint").get("blocks[0]") is child, \
        _message("Trackable._track_trackable / _trackable_children", "detector._track_collection")


def test_a_checkpoint_holds_layers_kept_in_lists(detector, tmp_path):
    """Detector overrides ``_trackable_children``: without it a model-only restore keeps random
    weights for the head towers (Keras 3 leaves list-held layers out of TF's object graph)."""
    path = tf.train.Checkpoint(model=detector).write(str(tmp_path / "ckpt"))
    keys = [name for name, _ in tf.train.list_variables(path)]
    assert any("class_tower[0]" in key for key in keys), \
        _message("the object graph tf.train.Checkpoint reads (Trackable._trackable_children)",
                 "Detector._trackable_children")


def test_compile_metrics_is_the_compiled_metric_container(detector):
    detector.compile(optimizer="sgd", metrics=[keras.metrics.Mean(name="probe")])
    compiled = getattr(detector, "_compile_metrics", None)
    user = "Detector.compute_metrics"
    assert compiled is not None, _message("Model._compile_metrics", user)
    assert hasattr(compiled, "built") and hasattr(compiled, "build"), _message("CompileMetrics.build", user)
    if not compiled.built:
        compiled.build(tf.zeros(()), tf.zeros(()))
    assert [metric.name for metric in compiled.metrics] == ["probe"], _message("CompileMetrics.metrics", user)


def test_optimizers_clip_in_clip_gradients():
    user = "training.optimizers.ClipSummedGradients"
    optimizer = keras.optimizers.SGD(learning_rate=1.0, clipnorm=1.0)
    assert hasattr(optimizer, "_clip_gradients"), _message("Optimizer._clip_gradients", user)
    clipped = optimizer._clip_gradients([tf.constant([3.0, 4.0])])
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6, err_msg=_message(
        "Optimizer._clip_gradients", user))


def test_loss_scaling_skips_a_step_in_stateful_handle_non_finite_grads():
    user = "training.optimizers.StepCountingLossScaleOptimizer"
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(learning_rate=0.1))
    assert hasattr(optimizer, "_stateful_handle_non_finite_grads"), \
        _message("LossScaleOptimizer._stateful_handle_non_finite_grads", user)
    variable = keras.Variable(1.0)
    optimizer.build([variable])
    calls = []
    original = optimizer._stateful_handle_non_finite_grads
    optimizer._stateful_handle_non_finite_grads = lambda: (calls.append(1), original())[1]
    optimizer.apply([tf.constant(float("inf"))], [variable])
    assert calls == [1] and float(variable.numpy()) == 1.0, \
        _message("LossScaleOptimizer._stateful_handle_non_finite_grads (called on a non-finite step)", user)
