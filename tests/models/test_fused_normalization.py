"""detkeeper's BatchNormalization and GroupNormalization train as Keras' do, through TensorFlow's fused
kernels, and are Keras' layers everywhere else: inference, configs, checkpoints and weight files."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.models.batch_norm import BatchNormalization as FusedBatchNormalization
from detkeeper.models.group_norm import GroupNormalization as FusedGroupNormalization


def images(shape=(4, 6, 5, 3), dtype="float32", seed=0):
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, size=shape), dtype=dtype)


def twins(**kwargs):
    """Keras' layer and the fused one, built alike with the same (non-trivial) weights."""
    layers = keras.layers.BatchNormalization(**kwargs), FusedBatchNormalization(**kwargs)
    rng = np.random.default_rng(1)
    for layer in layers:
        layer.build((None, 6, 5, 3))
    weights = [rng.uniform(0.5, 1.5, size=weight.shape).astype(np.float32) for weight in layers[0].weights]
    for layer in layers:
        layer.set_weights(weights)
    return layers


def op_types(function, *args) -> set[str]:
    graph = tf.function(function).get_concrete_function(*args).graph.as_graph_def()
    return {node.op for node in graph.node} | {
        node.op for library_function in graph.library.function for node in library_function.node_def}


def training_step(layer):
    """The layer's training-mode output and the gradients of a loss through it (inputs, gamma, beta)."""
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.linspace(-1.0, 2.0, y.shape[-1]))
        return y, tape.gradient(loss, [x, *layer.trainable_weights])
    return step


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "epsilon": 1e-3}, {"center": False, "scale": False}])
def test_a_training_step_lands_where_keras_does_through_the_fused_kernels(kwargs):
    keras_layer, fused = twins(**kwargs)
    x = images()
    expected_y, expected_grads = tf.function(training_step(keras_layer))(x)
    got_y, got_grads = tf.function(training_step(fused))(x)
    np.testing.assert_allclose(got_y, expected_y, rtol=1e-5, atol=1e-5)
    for got, expected in zip(got_grads, expected_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the moving statistics move towards the batch's mean and *biased* variance, as Keras' do
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(getattr(fused, name).numpy(), getattr(keras_layer, name).numpy(), rtol=1e-5)
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types(training_step(twins(**kwargs)[1]), x)


def test_inference_is_keras_own():
    keras_layer, fused = twins()
    x = images()
    np.testing.assert_array_equal(fused(x, training=False), keras_layer(x, training=False))
    assert "FusedBatchNormV3" not in op_types(lambda t: fused(t, training=False), x)


@pytest.mark.parametrize("case", ["synchronized", "renorm", "2-d", "small epsilon", "not trainable"])
def test_what_the_kernel_does_not_cover_takes_keras_path(case):
    kwargs = {"synchronized": {"synchronized": True}, "renorm": {"renorm": True},
              "small epsilon": {"epsilon": 1e-6}}.get(case, {})
    layer = FusedBatchNormalization(**kwargs)
    x = images((4, 3)) if case == "2-d" else images()
    layer.build(x.shape)
    layer.trainable = case != "not trainable"
    assert "FusedBatchNormV3" not in op_types(lambda t: layer(t, training=True), x)


def test_mixed_precision_computes_in_float32_and_answers_in_float16():
    keras_layer, fused = twins(dtype="mixed_float16")
    x = images(dtype="float16")
    got, expected = fused(x, training=True), keras_layer(x, training=True)
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float32), expected.numpy().astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(fused.moving_variance.numpy(), keras_layer.moving_variance.numpy(), rtol=1e-4)


def test_same_variables_and_config_as_keras_so_checkpoints_read_either_way(tmp_path):
    keras_layer, fused = twins()
    assert [w.path.split("/")[-1] for w in fused.weights] == [w.path.split("/")[-1] for w in keras_layer.weights]
    path = tf.train.Checkpoint(layer=keras_layer).write(str(tmp_path / "ckpt"))
    fresh = FusedBatchNormalization()
    fresh.build((None, 6, 5, 3))
    tf.train.Checkpoint(layer=fresh).read(path).assert_consumed()
    for restored, saved in zip(fresh.weights, keras_layer.weights):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fused))
    assert type(clone) is FusedBatchNormalization and clone.get_config() == fused.get_config()


def _small_model(norm_class) -> keras.Model:
    images = keras.Input((6, 5, 3))
    x = norm_class()(keras.layers.Conv2D(4, 3)(images))
    return keras.Model(images, norm_class()(keras.layers.Conv2D(2, 1)(x)))


def test_weight_files_saved_with_keras_layer_load_into_the_fused_one_and_back(tmp_path):
    """Keras files a layer's weights in ``.weights.h5`` (and ``.keras`` archives) under its class
    name: backbone weight files saved before the fused layer existed still load."""
    keras.utils.set_random_seed(0)
    saved = _small_model(keras.layers.BatchNormalization)
    saved(images(), training=True)  # moving statistics away from their init
    saved.save_weights(tmp_path / "keras.weights.h5")
    fused = _small_model(FusedBatchNormalization)
    fused.load_weights(tmp_path / "keras.weights.h5")
    for got, expected in zip(fused.weights, saved.weights):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    fused.save_weights(tmp_path / "fused.weights.h5")
    back = _small_model(keras.layers.BatchNormalization)
    back.load_weights(tmp_path / "fused.weights.h5")
    np.testing.assert_array_equal(back(images(), training=False), saved(images(), training=False))


# --- GroupNormalization ---------------------------------------------------------------------------


def group_twins(channels=8, **kwargs):
    """Keras' GroupNormalization and the fused one with the same (non-trivial) gamma and beta."""
    layers = keras.layers.GroupNormalization(**kwargs), FusedGroupNormalization(**kwargs)
    rng = np.random.default_rng(2)
    for layer in layers:
        layer.build((None, 6, 5, channels))
    weights = [rng.uniform(0.5, 1.5, size=weight.shape).astype(np.float32) for weight in layers[0].weights]
    for layer in layers:
        layer.set_weights(weights)
    return layers


@pytest.mark.parametrize("kwargs", [{"groups": 4}, {"groups": 8, "epsilon": 1e-4}, {"groups": 1},
                                    {"groups": 2, "center": False, "scale": False}])
def test_group_norm_trains_as_keras_does_through_the_fused_kernels(kwargs):
    keras_layer, fused = group_twins(**kwargs)
    x = images((3, 6, 5, 8))
    expected_y, expected_grads = tf.function(training_step(keras_layer))(x)
    got_y, got_grads = tf.function(training_step(fused))(x)
    np.testing.assert_allclose(got_y, expected_y, rtol=1e-4, atol=1e-4)
    for got, expected in zip(got_grads, expected_grads):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3"} <= op_types(training_step(fused), x)


def test_group_norm_takes_any_batch_and_image_size_in_one_trace():
    keras_layer, fused = group_twins(groups=4)
    step = tf.function(lambda t: fused(t, training=True),
                       input_signature=[tf.TensorSpec([None, None, None, 8], tf.float32)])
    for shape in [(1, 3, 7, 8), (5, 6, 5, 8)]:
        x = images(shape, seed=len(shape))
        np.testing.assert_allclose(step(x), keras_layer(x), rtol=1e-4, atol=1e-4)


def test_group_norm_inference_and_uncovered_settings_are_keras_own():
    """Inference stays Keras' ops (what exports and TFLite conversion see); so does an epsilon below
    the kernel's minimum."""
    keras_layer, fused = group_twins(groups=4)
    x = images((2, 6, 5, 8))
    np.testing.assert_array_equal(fused(x, training=False), keras_layer(x))
    assert "FusedBatchNormV3" not in op_types(lambda t: fused(t, training=False), x)
    small = FusedGroupNormalization(groups=4, epsilon=1e-6)
    assert "FusedBatchNormV3" not in op_types(lambda t: small(t, training=True), x)


def test_group_norm_mixed_precision_computes_in_float32_and_answers_in_float16():
    keras_layer, fused = group_twins(groups=4, dtype="mixed_float16")
    x = images((2, 6, 5, 8), dtype="float16")
    got, expected = fused(x, training=True), keras_layer(x, training=True)
    assert got.dtype == tf.float16
    np.testing.assert_allclose(got.numpy().astype(np.float32), expected.numpy().astype(np.float32), atol=2e-2)


def test_group_norm_weight_files_and_configs_load_both_ways(tmp_path):
    keras_layer, fused = group_twins(groups=4)
    model = keras.Sequential([keras.Input((6, 5, 8)), keras_layer])
    model.save_weights(tmp_path / "keras.weights.h5")
    fresh = keras.Sequential([keras.Input((6, 5, 8)), FusedGroupNormalization(groups=4)])
    fresh.load_weights(tmp_path / "keras.weights.h5")
    for got, expected in zip(fresh.weights, model.weights):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fused))
    assert type(clone) is FusedGroupNormalization and clone.get_config() == fused.get_config()
