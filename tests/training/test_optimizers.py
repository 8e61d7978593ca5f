"""Learning-rate schedules by hand, the optimizer the config describes, and exact resumption."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import OptimizerConfig, ScheduleConfig, TrainConfig
from detkeeper.errors import ConfigError
from detkeeper.training.fused_updates import FusedAdam
from detkeeper.training.optimizers import WarmupSchedule, build_optimizer, learning_rate_at


def rates(schedule, steps):
    return [float(schedule(tf.constant(step, tf.int64))) for step in steps]


def train_config(optimizer=None, schedule=None, **kwargs):
    return TrainConfig(optimizer=optimizer or OptimizerConfig(), schedule=schedule or ScheduleConfig(),
                       **kwargs)


# --- schedules, by hand ---------------------------------------------------------------------------

def test_constant_with_warmup_climbs_linearly_from_zero():
    schedule = WarmupSchedule(0.1, warmup_steps=4, decay="constant")
    assert rates(schedule, [0, 1, 2, 3, 4, 5, 1000]) == pytest.approx(
        [0.0, 0.025, 0.05, 0.075, 0.1, 0.1, 0.1])


def test_without_warmup_the_first_step_has_the_peak_rate():
    assert rates(WarmupSchedule(0.1, warmup_steps=0), [0, 1, 50]) == pytest.approx([0.1] * 3)
    cosine = WarmupSchedule(0.1, warmup_steps=0, decay="cosine", total_steps=4)
    # 0.05 * (1 + cos(pi * s / 4)): 0.1, 0.0853553, 0.05, 0.0146447, 0
    assert rates(cosine, [0, 1, 2, 3, 4, 5]) == pytest.approx(
        [0.1, 0.0853553, 0.05, 0.0146447, 0.0, 0.0], abs=1e-7)


def test_cosine_starts_after_warmup_and_reaches_zero_at_total_steps():
    schedule = WarmupSchedule(0.2, warmup_steps=10, decay="cosine", total_steps=110)
    steps = [0, 5, 9, 10, 35, 60, 85, 109, 110, 111, 500]
    expected = [0.0, 0.1, 0.18, 0.2,
                0.1 * (1 + math.cos(math.pi * 0.25)),  # 0.170711
                0.1,
                0.1 * (1 + math.cos(math.pi * 0.75)),  # 0.029289
                0.1 * (1 + math.cos(math.pi * 0.99)),  # 4.93e-5
                0.0, 0.0, 0.0]
    assert rates(schedule, steps) == pytest.approx(expected, abs=1e-7)


def test_cosine_with_warmup_as_long_as_training_ends_at_zero_without_nan():
    schedule = WarmupSchedule(0.1, warmup_steps=5, decay="cosine", total_steps=5)
    assert rates(schedule, [0, 4, 5, 6]) == pytest.approx([0.0, 0.08, 0.0, 0.0], abs=1e-7)


def test_step_decay_multiplies_at_each_boundary_reached():
    schedule = WarmupSchedule(0.1, warmup_steps=2, decay="step", decay_rate=0.5, decay_steps=[10, 20])
    steps = [0, 1, 2, 9, 10, 11, 19, 20, 1000]
    assert rates(schedule, steps) == pytest.approx(
        [0.0, 0.05, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_step_boundary_inside_warmup_takes_effect_when_warmup_ends():
    schedule = WarmupSchedule(1.0, warmup_steps=4, decay="step", decay_rate=0.1, decay_steps=[2])
    assert rates(schedule, [0, 2, 3, 4]) == pytest.approx([0.0, 0.5, 0.75, 0.1])


@pytest.mark.parametrize("schedule", [
    WarmupSchedule(0.2, warmup_steps=10, decay="cosine", total_steps=110),
    WarmupSchedule(0.3, warmup_steps=7, decay="step", decay_rate=0.3, decay_steps=[20, 40]),
])
def test_schedule_gives_the_same_rate_in_graph_and_eager_mode(schedule):
    graph_rate = tf.function(schedule)
    for step in (0, 3, 7, 10, 19, 20, 33, 41, 60, 200):
        assert float(graph_rate(tf.constant(step, tf.int64))) == float(schedule(step)), step


@pytest.mark.parametrize("kwargs", [
    {"decay": "cosine", "total_steps": None},
    {"decay": "cosine", "total_steps": 5, "warmup_steps": 10},
    {"decay": "linear"},
    {"decay": "step", "decay_steps": [20, 10]},
    {"warmup_steps": -1},
])
def test_schedule_rejects_inconsistent_arguments(kwargs):
    with pytest.raises(ValueError):
        WarmupSchedule(0.1, **kwargs)


@pytest.mark.parametrize("schedule", [
    WarmupSchedule(0.1),
    WarmupSchedule(0.05, warmup_steps=7, decay="cosine", total_steps=100),
    WarmupSchedule(0.3, warmup_steps=3, decay="step", decay_rate=0.2, decay_steps=[10, 30]),
])
def test_schedule_config_round_trip(schedule):
    config = schedule.get_config()
    rebuilt = WarmupSchedule.from_config(config)
    assert rebuilt.get_config() == config
    steps = [0, 2, 3, 7, 10, 29, 30, 99, 100, 150]
    assert rates(rebuilt, steps) == rates(schedule, steps)
    # And through Keras' own (de)serialization of an optimizer, by registered name.
    optimizer = keras.optimizers.SGD(learning_rate=schedule)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored._learning_rate, WarmupSchedule)
    assert restored._learning_rate.get_config() == config


# --- build_optimizer ------------------------------------------------------------------------------

def test_sgd_takes_momentum_weight_decay_and_global_clipnorm_from_the_config():
    config = train_config(OptimizerConfig(name="sgd", learning_rate=0.02, momentum=0.8,
                                          weight_decay=1e-4, clipnorm=5.0))
    optimizer = build_optimizer(config)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == pytest.approx(0.8) and optimizer.nesterov is False
    assert optimizer.weight_decay == pytest.approx(1e-4)
    assert optimizer.global_clipnorm == 5.0 and optimizer.clipnorm is None
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupSchedule)
    assert (schedule.peak_learning_rate, schedule.decay, schedule.total_steps) == (0.02, "cosine", 2000)


def test_adam_without_weight_decay_or_clipping():
    config = train_config(OptimizerConfig(name="adam", learning_rate=1e-3, weight_decay=0.0, clipnorm=None),
                          ScheduleConfig(name="constant", warmup_steps=0))
    optimizer = build_optimizer(config)
    assert type(optimizer) is FusedAdam  # Keras' Adam, each update one fused op
    assert optimizer.weight_decay is None
    assert optimizer.global_clipnorm is None and optimizer.clipnorm is None
    assert learning_rate_at(optimizer) == pytest.approx(1e-3)


def test_adam_with_weight_decay():
    config = train_config(OptimizerConfig(name="adam", weight_decay=0.01))
    assert build_optimizer(config).weight_decay == pytest.approx(0.01)


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_adamw_uses_the_configured_weight_decay_not_keras_default(weight_decay):
    config = train_config(OptimizerConfig(name="adamw", weight_decay=weight_decay))
    optimizer = build_optimizer(config)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(weight_decay)


def test_clipping_is_by_global_norm():
    config = train_config(OptimizerConfig(name="sgd", learning_rate=1.0, momentum=0.0, clipnorm=5.0),
                          ScheduleConfig(name="constant", warmup_steps=0))
    optimizer = build_optimizer(config)
    a, b = tf.Variable([0.0, 0.0]), tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([6.0, 0.0]), a), (tf.constant([8.0]), b)])
    # Global norm 10 -> scaled by 0.5 together; per-variable clipping would give [5, 0] and [5].
    np.testing.assert_allclose(a.numpy(), [-3.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [-4.0], rtol=1e-6)


def test_update_k_uses_the_rate_at_step_k():
    config = train_config(OptimizerConfig(name="sgd", learning_rate=0.1, momentum=0.0, clipnorm=None),
                          ScheduleConfig(name="constant", warmup_steps=2))
    optimizer = build_optimizer(config)
    variable = tf.Variable([1.0])
    values = []
    for _ in range(3):
        optimizer.apply_gradients([(tf.constant([1.0]), variable)])
        values.append(float(variable[0]))
    # Rates 0, 0.05, 0.1 at steps 0, 1, 2: the first update of a warmup changes nothing.
    assert values == pytest.approx([1.0, 0.95, 0.85])


def test_total_steps_overrides_train_steps():
    schedule = build_optimizer(train_config(steps=2000), total_steps=500)._learning_rate
    assert schedule.total_steps == 500


def test_mixed_precision_wraps_in_a_loss_scale_optimizer():
    config = train_config(OptimizerConfig(name="sgd", learning_rate=0.1),
                          ScheduleConfig(name="constant", warmup_steps=4), mixed_precision=True)
    optimizer = build_optimizer(config)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, keras.optimizers.SGD)
    variable = tf.Variable([1.0])
    assert learning_rate_at(optimizer) == 0.0
    for _ in range(2):
        optimizer.apply_gradients([(tf.constant([1.0]), variable)])
    assert int(optimizer.iterations) == 2
    assert learning_rate_at(optimizer) == pytest.approx(0.05)


@pytest.mark.parametrize("schedule, message", [
    (ScheduleConfig(name="cosine", warmup_steps=300), "warmup_steps.*300"),
    (ScheduleConfig(name="step", decay_steps=[]), "decay_steps"),
])
def test_inconsistent_schedule_settings_are_config_errors(schedule, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(train_config(schedule=schedule, steps=200))


# --- resuming -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mixed_precision", [False, True])
def test_restored_optimizer_continues_the_schedule(tmp_path, mixed_precision):
    config = train_config(OptimizerConfig(name="sgd", learning_rate=0.1),
                          ScheduleConfig(name="cosine", warmup_steps=3), steps=12,
                          mixed_precision=mixed_precision)
    variables = [tf.Variable(tf.ones([3])), tf.Variable(tf.ones([2, 2]))]
    optimizer = build_optimizer(config)
    optimizer.build(variables)
    gradients = [tf.fill([3], 0.1), tf.fill([2, 2], 0.1)]
    for _ in range(5):
        optimizer.apply_gradients(zip(gradients, variables))
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt"))
    expected = []
    for _ in range(3):
        expected.append(learning_rate_at(optimizer))
        optimizer.apply_gradients(zip(gradients, variables))

    restored = build_optimizer(config)
    restored_variables = [tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([2, 2]))]
    restored.build(restored_variables)
    assert learning_rate_at(restored) == 0.0  # step 0: start of the warmup
    tf.train.Checkpoint(optimizer=restored).read(path).assert_existing_objects_matched()
    assert int(restored.iterations) == 5
    got = []
    for _ in range(3):
        got.append(learning_rate_at(restored))
        restored.apply_gradients(zip(gradients, restored_variables))
    assert got == expected
    # Steps 5, 6, 7 of a cosine from 0.1 over steps 3..12.
    assert expected == pytest.approx([0.05 * (1 + math.cos(math.pi * s / 9)) for s in (2, 3, 4)])


def test_learning_rate_at_a_float_rate():
    optimizer = keras.optimizers.SGD(learning_rate=0.25)
    assert learning_rate_at(optimizer) == 0.25
    assert learning_rate_at(keras.optimizers.LossScaleOptimizer(optimizer)) == 0.25


def test_a_step_skipped_by_loss_scaling_still_counts():
    """Steps are batches: evaluation points, checkpoint names and the resumed data order depend on it."""
    from detkeeper.training.optimizers import StepCountingLossScaleOptimizer

    variable = keras.Variable([1.0, 2.0])
    optimizer = StepCountingLossScaleOptimizer(keras.optimizers.SGD(0.1))
    optimizer.apply([tf.constant([np.inf, 0.0])], [variable])  # skipped: the scale halves
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    optimizer.apply([tf.constant([1.0, 1.0]) * optimizer.dynamic_scale], [variable])
    assert int(optimizer.iterations.numpy()) == 2
    np.testing.assert_allclose(variable.numpy(), [0.9, 1.9], rtol=1e-6)
