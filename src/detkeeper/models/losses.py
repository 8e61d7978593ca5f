"""Detection losses, elementwise so each family chooses its own masking and normalization."""

from __future__ import annotations

import tensorflow as tf


def sigmoid_focal_loss(targets: tf.Tensor, logits: tf.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> tf.Tensor:
    """Focal loss (Lin et al. 2017) per element: down-weights the many easy background anchors."""
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    probabilities = tf.sigmoid(logits)
    p_t = targets * probabilities + (1.0 - targets) * (1.0 - probabilities)
    alpha_t = targets * alpha + (1.0 - targets) * (1.0 - alpha)
    return alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy


def quality_focal_loss(targets: tf.Tensor, logits: tf.Tensor, beta: float = 2.0) -> tf.Tensor:
    """Quality focal loss (Li et al. 2020, Generalized Focal Loss) per element: sigmoid cross-entropy
    against a soft target in [0, 1] (a positive's IoU with its box, 0 elsewhere), scaled by
    ``|target - p| ** beta``; the focal loss's easy-example down-weighting for continuous targets."""
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.pow(tf.abs(targets - tf.sigmoid(logits)), beta) * cross_entropy


def huber_loss(targets: tf.Tensor, predictions: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    """Smooth-L1 / Huber per element, the TF OD API's box regression loss."""
    error = tf.abs(targets - predictions)
    quadratic = tf.minimum(error, delta)
    return 0.5 * tf.square(quadratic) + delta * (error - quadratic)


# -- under tf.distribute -----------------------------------------------------------------------
# Each replica computes its loss on its slice of the global batch and the optimizer sums the
# replicas' gradients. A loss normalised by the number of positives is therefore normalised by the
# positives of the *global* batch (``replica_sum``), so the replicas' losses add up to exactly the
# one-device loss of that batch. Keras' loss tracker multiplies each replica's loss by the number
# of replicas before averaging them; the per-term trackers do the same with ``for_tracking``.
# With one replica (no strategy, or the default) all three are the identity.


def num_replicas() -> int:
    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def replica_sum(value: tf.Tensor) -> tf.Tensor:
    """`value` summed over the replicas training in sync (in a replica context), else `value`."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def replica_share(value: tf.Tensor) -> tf.Tensor:
    """One replica's share of a loss that every replica computes whole (e.g. weight decay terms)."""
    count = num_replicas()
    return value if count == 1 else value / float(count)


def for_tracking(value: tf.Tensor) -> tf.Tensor:
    """A replica's loss term as a metric tracker should average it (the global batch's value)."""
    count = num_replicas()
    return value if count == 1 else value * float(count)
