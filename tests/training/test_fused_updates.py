"""The fused optimizers step as Keras' own do, through one TensorFlow kernel per variable, and read
and write the same checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.training.fused_updates import FusedAdam, FusedAdamW, FusedSGD
from detkeeper.training.optimizers import WarmupSchedule

SHAPES = [(3, 3, 4, 8), (8,), (5,)]
#: (fused, Keras', their arguments, the op each variable's update must be)
PAIRS = [
    (FusedAdam, keras.optimizers.Adam, {}, "ResourceApplyAdam"),
    (FusedAdamW, keras.optimizers.AdamW, {"weight_decay": 0.05}, "ResourceApplyAdam"),
    (FusedSGD, keras.optimizers.SGD, {"momentum": 0.9}, "ResourceApplyKerasMomentum"),
    (FusedSGD, keras.optimizers.SGD, {"momentum": 0.9, "nesterov": True}, "ResourceApplyKerasMomentum"),
    (FusedSGD, keras.optimizers.SGD, {"momentum": 0.0}, "ResourceApplyGradientDescent"),
]
IDS = ["adam", "adamw", "sgd-momentum", "sgd-nesterov", "sgd"]


def gradients(steps: int = 6):
    rng = np.random.default_rng(0)
    return [[tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES] for _ in range(steps)]


def train(optimizer, steps=None) -> tuple[list, tf.types.experimental.ConcreteFunction]:
    """The variables after `optimizer` stepped through `gradients()` in a tf.function, as training
    does, with a warmup schedule and global clipping; and the step's graph."""
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    for grads in steps or gradients():
        step(grads)
    return [variable.numpy() for variable in variables], step.get_concrete_function(gradients(1)[0])


def op_types(function) -> list[str]:
    """The ops of a traced function, those of the functions it calls included."""
    graph_def = function.graph.as_graph_def()
    return [node.op for node in graph_def.node] + [
        node.op for library_function in graph_def.library.function for node in library_function.node_def]


def make(cls, **kwargs):
    return cls(learning_rate=WarmupSchedule(0.01, warmup_steps=2), global_clipnorm=4.0, **kwargs)


@pytest.mark.parametrize("fused, keras_class, arguments, op", PAIRS, ids=IDS)
def test_each_update_is_one_fused_op_and_lands_where_keras_does(fused, keras_class, arguments, op):
    got, graph = train(make(fused, **arguments))
    expected, keras_graph = train(make(keras_class, **arguments))
    for mine, theirs in zip(got, expected):
        # The kernels evaluate Keras' formulas; rounding may differ by an ulp or two (steps of 1e-2).
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)
    types = op_types(graph)
    assert types.count(op) == len(SHAPES)
    assert len(types) < len(op_types(keras_graph))
    if op == "ResourceApplyAdam":  # the step's beta_1^t and beta_2^t, made once for all the variables
        assert types.count("Pow") == 2


@pytest.mark.parametrize("fused, arguments", [(fused, arguments) for fused, _, arguments, _ in PAIRS[:3]],
                         ids=IDS[:3])
def test_two_updates_in_one_graph_each_use_their_own_step(fused, arguments):
    """What an update pass shares (its step's powers, its learning rate) is not carried into the next
    pass of the same graph: two steps in one tf.function land where two separate steps do."""
    steps = gradients(4)
    separate, _ = train(make(fused, **arguments), steps)
    optimizer = make(fused, **arguments)
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]

    @tf.function
    def two_steps(first, second):
        optimizer.apply(first, variables)
        optimizer.apply(second, variables)

    two_steps(steps[0], steps[1])
    two_steps(steps[2], steps[3])
    for together, apart in zip(variables, separate):
        np.testing.assert_allclose(together.numpy(), apart, rtol=1e-6, atol=1e-7)


def test_amsgrad_and_sparse_gradients_take_keras_update():
    got, graph = train(make(FusedAdam, amsgrad=True))
    expected, _ = train(make(keras.optimizers.Adam, amsgrad=True))
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)
    assert "ResourceApplyAdam" not in op_types(graph)

    for cls in (FusedAdam, FusedSGD):
        table = keras.Variable(np.ones((4, 2), np.float32))
        optimizer = cls(learning_rate=0.1)
        sparse = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([2]), tf.constant([4, 2]))
        optimizer.apply([sparse], [table])
        changed = np.flatnonzero((table.numpy() != 1.0).any(axis=1))
        assert changed.tolist() == [2]


@pytest.mark.parametrize("fused, keras_class", [(FusedAdam, keras.optimizers.Adam),
                                                (FusedSGD, keras.optimizers.SGD)])
def test_a_checkpoint_of_keras_optimizer_resumes_in_the_fused_one_and_back(fused, keras_class, tmp_path):
    """Runs trained before the fused updates resume with them: the slots are Keras' own."""
    steps = gradients(6)
    arguments = {"momentum": 0.9} if keras_class is keras.optimizers.SGD else {}
    whole, _ = train(make(keras_class, **arguments), steps)

    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]
    first = make(keras_class, **arguments)
    for grads in steps[:3]:
        first.apply(grads, variables)
    path = tf.train.Checkpoint(optimizer=first, variables=variables).write(str(tmp_path / "ckpt"))

    resumed_variables = [keras.Variable(np.zeros(shape, np.float32)) for shape in SHAPES]
    resumed = make(fused, **arguments)
    resumed.build(resumed_variables)
    tf.train.Checkpoint(optimizer=resumed, variables=resumed_variables).read(path).assert_consumed()
    for grads in steps[3:]:
        resumed.apply(grads, resumed_variables)
    for mine, theirs in zip(resumed_variables, whole):
        np.testing.assert_allclose(mine.numpy(), theirs, rtol=1e-5, atol=1e-6)
