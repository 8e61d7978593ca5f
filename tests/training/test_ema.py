"""Weight averaging: hand-computed updates with the decay warmup, swapping, checkpoints, and fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.models import build_model
from detkeeper.models.ema import WeightAverage
from detkeeper.training.ema import EmaCallback


def tiny_model():
    """Dense(2) + BatchNormalization: a kernel and bias to average, moving statistics to copy."""
    inputs = keras.Input((3,))
    outputs = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(2, name="dense")(inputs))
    return keras.Model(inputs, outputs)


def set_all(model, value):
    for weight in model.weights:
        weight.assign(np.full(weight.shape, value, np.float32))


def by_name(model, weight_average):
    return {w.path: a.numpy() for w, a in zip(model.weights, weight_average.averages)}


def test_three_updates_by_hand_with_the_decay_warmup():
    model = tiny_model()
    set_all(model, 1.0)
    average = WeightAverage(model, decay=0.2)
    # step 1: min(0.2, 2/11) = 2/11 (warmup); steps 2, 3: min(0.2, 3/12 | 4/13) = 0.2 (capped).
    assert [float(average.decay_at(s)) for s in (1, 2, 3)] == pytest.approx([2 / 11, 0.2, 0.2])
    for step, value in zip((1, 2, 3), (2.0, 3.0, 4.0)):  # the "trained" weights before each update
        set_all(model, value)
        average.update(step)
    # 1 -> 2/11 * 1 + 9/11 * 2 = 20/11 -> 0.2 * 20/11 + 0.8 * 3 = 2.763636 -> 0.2 * 2.763636 + 0.8 * 4
    expected_trainable = 0.2 * (0.2 * 20 / 11 + 0.8 * 3) + 0.8 * 4  # 3.7527273
    averages = by_name(model, average)
    assert set(averages) == {"dense/kernel", "dense/bias", "bn/gamma", "bn/beta", "bn/moving_mean",
                             "bn/moving_variance"}
    for path in ("dense/kernel", "dense/bias", "bn/gamma", "bn/beta"):
        np.testing.assert_allclose(averages[path], expected_trainable, rtol=1e-6, err_msg=path)
    for path in ("bn/moving_mean", "bn/moving_variance"):  # non-trainable: copied, not averaged
        np.testing.assert_array_equal(averages[path], 4.0, err_msg=path)


def test_averages_start_from_the_model_and_are_not_trainable():
    model = tiny_model()
    average = WeightAverage(model, decay=0.99)
    for weight, avg in zip(model.weights, average.averages):
        np.testing.assert_array_equal(avg.numpy(), keras.ops.convert_to_numpy(weight))
        assert not avg.trainable
    assert len(average.variables) == len(model.weights)  # the model's own are not listed


def test_swapped_in_holds_averages_and_restores_raw_weights_exactly():
    model = tiny_model()
    model.set_weights([np.random.default_rng(0).normal(size=w.shape).astype(np.float32)
                       for w in model.weights])
    average = WeightAverage(model, decay=0.9)
    model.set_weights([w + 0.123456789 for w in model.get_weights()])
    average.update(5)
    raw = model.get_weights()
    with average.swapped_in(model) as swapped:
        assert swapped is model
        for weight, avg in zip(model.weights, average.averages):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), avg.numpy())
    for weight, value in zip(model.weights, raw):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), value)


def test_swapped_in_restores_raw_weights_after_an_exception():
    model = tiny_model()
    set_all(model, 1.0)
    average = WeightAverage(model, decay=0.5)
    set_all(model, 3.0)
    average.update(100)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with average.swapped_in(model):
            assert float(model.weights[0][0, 0]) == 2.0
            raise RuntimeError("evaluation failed")
    for weight in model.weights:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), 3.0)


def test_copy_to_assigns_for_good_and_checks_the_model():
    model = tiny_model()
    set_all(model, 1.0)
    average = WeightAverage(model, decay=0.5)
    set_all(model, 3.0)
    average.update(100)
    average.copy_to(model)
    for weight in model.weights:
        expected = 3.0 if "moving" in weight.path else 2.0
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight), expected)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="does not match"):
        average.copy_to(other)


def test_checkpoint_round_trip_restores_the_averages_exactly(tmp_path):
    model = tiny_model()
    average = WeightAverage(model, decay=0.9)
    rng = np.random.default_rng(1)
    for step in range(1, 4):
        model.set_weights([rng.normal(size=w.shape).astype(np.float32) for w in model.weights])
        average.update(step)
    path = tf.train.Checkpoint(ema=average).write(str(tmp_path / "ckpt"))
    saved = [a.numpy() for a in average.averages]
    keys = [name for name, _ in tf.train.list_variables(path) if name.startswith("ema/")]
    assert len(keys) == len(model.weights)  # the averages only, not the model's weights

    fresh_model = tiny_model()
    restored = WeightAverage(fresh_model, decay=0.9)
    tf.train.Checkpoint(ema=restored).read(path).assert_consumed()
    for got, expected in zip(restored.averages, saved):
        np.testing.assert_array_equal(got.numpy(), expected)


def test_callback_refuses_a_weight_average_of_another_model():
    model, other = tiny_model(), tiny_model()
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="does not average"):
        model.fit(np.zeros((2, 3)), np.zeros((2, 2)), epochs=1, verbose=0,
                  callbacks=[EmaCallback(WeightAverage(other, decay=0.9))])


def test_invalid_decay_and_unbuilt_model_are_refused():
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(tiny_model(), decay=1.0)
    with pytest.raises(ValueError, match="no weights yet"):
        WeightAverage(keras.Sequential([keras.layers.Dense(2)]), decay=0.9)


def test_fit_with_the_callback_on_a_detector():
    keras.utils.set_random_seed(0)
    config = ModelConfig(name="retinanet_tiny", image_size=64,
                         backbone=BackboneConfig(name="tiny", weights="none"))
    model = build_model(config, num_classes=3)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(4, 64, 64, 3)).astype(np.float32)
    boxes = np.full((4, 2, 4), -1, np.float32)
    classes = np.full((4, 2), -1, np.int32)
    boxes[:, 0], classes[:, 0] = [8, 8, 40, 40], [0, 1, 2, 1]
    boxes[:2, 1], classes[:2, 1] = [20, 30, 60, 62], [2, 0]
    model(images[:1])
    # Eager: tracing the detector's train step costs ~15 s here; the callback runs the same either way.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    average = WeightAverage(model, decay=0.999)
    model.fit(images, {"boxes": boxes, "classes": classes}, batch_size=2, epochs=2, verbose=0,
              callbacks=[EmaCallback(average)])
    assert int(model.optimizer.iterations) == 4

    changed = 0
    for weight, avg in zip(model.weights, average.averages):
        raw, value = keras.ops.convert_to_numpy(weight), avg.numpy()
        assert np.all(np.isfinite(value)), weight.path
        if weight.trainable:
            changed += not np.array_equal(value, raw)
        else:  # BatchNormalization statistics follow the model
            np.testing.assert_array_equal(value, raw, err_msg=weight.path)
    assert changed == len(model.trainable_weights)
    outputs = model(images, training=False)
    with average.swapped_in(model):
        averaged_outputs = model(images, training=False)
    key = next(iter(outputs))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(averaged_outputs[key])))
    assert not np.array_equal(keras.ops.convert_to_numpy(outputs[key]),
                              keras.ops.convert_to_numpy(averaged_outputs[key]))
