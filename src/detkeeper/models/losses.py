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


def huber_loss(targets: tf.Tensor, predictions: tf.Tensor, delta: float = 1.0) -> tf.Tensor:
    """Smooth-L1 / Huber per element, the TF OD API's box regression loss."""
    error = tf.abs(targets - predictions)
    quadratic = tf.minimum(error, delta)
    return 0.5 * tf.square(quadratic) + delta * (error - quadratic)
