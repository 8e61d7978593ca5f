"""RetinaNet's class and box subnets, shared by every pyramid level."""

from __future__ import annotations

import math

import keras
from keras import ops

from detkeeper.models.custom import run_tower, tower_layer

#: Initial foreground probability of every anchor (Lin et al. 2017, section 4.1): without it the
#: many background anchors swamp the first steps of training.
PRIOR_PROBABILITY = 0.01


class RetinaNetHead(keras.layers.Layer):
    """Per level ``[B, H, W, F]`` -> class logits ``[B, H*W*K, C]`` and box deltas ``[B, H*W*K, 4]``.

    Rows come out in (y, x, anchor) order, the order of :func:`detkeeper.models.boxes.generate_anchors`
    within a level; levels are concatenated finest first. Each tower is `convs` 3x3 conv + ReLU
    layers, or `convs` of the registered Keras layer `block` (see
    :func:`detkeeper.models.custom.tower_layer`).
    """

    def __init__(self, num_classes: int, anchors_per_location: int, channels: int, convs: int,
                 block: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.anchors_per_location = num_classes, anchors_per_location
        self.channels, self.convs, self.block = channels, convs, block
        normal = keras.initializers.RandomNormal(stddev=0.01)
        # A custom `block` replaces conv + ReLU: it brings its own activation.
        conv = {"activation": "relu", "kernel_initializer": normal}
        self.class_tower = [tower_layer(block, channels, f"class_conv{i}", **conv) for i in range(convs)]
        self.box_tower = [tower_layer(block, channels, f"box_conv{i}", **conv) for i in range(convs)]
        prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        self.class_output = keras.layers.Conv2D(
            anchors_per_location * num_classes, 3, padding="same", kernel_initializer=normal,
            bias_initializer=keras.initializers.Constant(prior_bias), name="class_output")
        self.box_output = keras.layers.Conv2D(anchors_per_location * 4, 3, padding="same",
                                              kernel_initializer=normal, name="box_output")

    def call(self, pyramid: list) -> tuple:
        class_logits, box_deltas = [], []
        for level in pyramid:
            classes, deltas = run_tower(self.class_tower, level), run_tower(self.box_tower, level)
            batch = ops.shape(level)[0]
            class_logits.append(ops.reshape(self.class_output(classes), [batch, -1, self.num_classes]))
            box_deltas.append(ops.reshape(self.box_output(deltas), [batch, -1, 4]))
        return ops.concatenate(class_logits, axis=1), ops.concatenate(box_deltas, axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes,
                "anchors_per_location": self.anchors_per_location, "channels": self.channels,
                "convs": self.convs, "block": self.block}
