"""Keras' SGD, Adam and AdamW with each variable's update as TensorFlow's one fused training op.

Keras 3 writes an optimizer's update in backend-neutral ``keras.ops``: Adam is about fifteen graph
ops per variable (casts, powers, the two moments, the step), SGD with momentum about six. Every
training process traces them once for each of the model's variables, Grappler optimizes them and
every step runs them as so many small kernels. TensorFlow has each update as one kernel, the ones
``tf.compat.v1.train`` optimizers ran (``ResourceApplyAdam``, ``ResourceApplyKerasMomentum``,
``ResourceApplyGradientDescent``), computing the same formulas: the results agree with Keras' to an
ulp or two. The first training step (its trace) takes 13-43% less time, the bccd preset's steps 7% less,
and a fault-suite training run (50 steps at 128 px, ~80 variables) takes 11-15% less CPU
(benchmarks/fused_updates.py, RESULTS.md).

What is the same for every variable (the step's ``beta^t`` powers, the learning rate and the
constants cast to the variable's dtype) is made once per update pass and dtype, not once per
variable: Adam's update went from 20 graph ops per variable to 10 (global clipping included), and a
fault-suite training run from 8.7 to 8.2 CPU s (RESULTS.md, "Fused BatchNormalization").

Only the per-variable update changes: the slots are Keras' own (so checkpoints are unchanged and
read either way), and the learning-rate schedule, gradient clipping, weight decay, loss scaling,
gradient accumulation and tf.distribute's per-replica update all stay Keras'. A sparse gradient
(``tf.IndexedSlices``), AMSGrad, or a dtype the kernels lack falls back to Keras' update.
"""

from __future__ import annotations

import keras
import tensorflow as tf

#: The dtypes TensorFlow's CPU and GPU training kernels are registered for.
FUSED_DTYPES = (tf.float16, tf.float32, tf.float64)


def _fusable(gradient, variable) -> bool:
    return not isinstance(gradient, tf.IndexedSlices) and variable.dtype in FUSED_DTYPES


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras or TF variable (under tf.distribute's ``update``, the local
    component's)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


class _PassScalars:
    """Mixin: ``self._scalars(dtype, make)`` is ``make(dtype)``, made once per update pass (one
    ``_backend_update_step`` of Keras' TensorFlow backend: every variable of one step, in one graph)
    and dtype. Outside a pass (a Keras version without that method) it is made on every call."""

    _pass_scalars = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        object.__setattr__(self, "_pass_scalars", {})  # plain attribute: not for Keras' tracking
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            object.__setattr__(self, "_pass_scalars", None)

    def _scalars(self, dtype, make) -> dict:
        if self._pass_scalars is None:
            return make(dtype)
        if dtype not in self._pass_scalars:
            self._pass_scalars[dtype] = make(dtype)
        return self._pass_scalars[dtype]


@keras.saving.register_keras_serializable(package="detkeeper")
class FusedAdam(_PassScalars, keras.optimizers.Adam):
    """:class:`keras.optimizers.Adam`, its update one ``ResourceApplyAdam``: the moments move by
    ``(g - m) * (1 - beta_1)`` and ``(g^2 - v) * (1 - beta_2)``, the variable by
    ``lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)``, as Keras writes it."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)

        def make(dtype) -> dict:
            step = tf.cast(self.iterations + 1, dtype)
            beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
            return dict(beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
                        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
                        epsilon=tf.cast(self.epsilon, dtype))

        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            grad=tf.cast(gradient, variable.dtype), **self._scalars(variable.dtype, make))


@keras.saving.register_keras_serializable(package="detkeeper")
class FusedAdamW(FusedAdam, keras.optimizers.AdamW):
    """:class:`keras.optimizers.AdamW`: Keras decays the weights, then :class:`FusedAdam` steps."""


@keras.saving.register_keras_serializable(package="detkeeper")
class FusedSGD(_PassScalars, keras.optimizers.SGD):
    """:class:`keras.optimizers.SGD`, its update one ``ResourceApplyKerasMomentum`` (``m = momentum *
    m - lr * g``, then ``w += m``, or ``w += momentum * m - lr * g`` with Nesterov) or, without
    momentum, one ``ResourceApplyGradientDescent``."""

    def update_step(self, gradient, variable, learning_rate):
        if not _fusable(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        scalars = self._scalars(variable.dtype, lambda dtype: dict(
            lr=tf.cast(learning_rate, dtype), momentum=tf.cast(self.momentum, dtype)))
        gradient = tf.cast(gradient, variable.dtype)
        if self.momentum == 0:
            tf.raw_ops.ResourceApplyGradientDescent(var=_handle(variable), alpha=scalars["lr"], delta=gradient)
            return
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=_handle(variable), accum=_handle(self.momentums[self._get_variable_index(variable)]),
            grad=gradient, use_nesterov=self.nesterov, **scalars)
