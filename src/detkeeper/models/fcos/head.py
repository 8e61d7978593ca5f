"""FCOS's shared head: a class tower and a box tower, with a learnable scale per pyramid level."""

from __future__ import annotations

import math

import keras
from keras import ops

from detkeeper.models import group_norm
from detkeeper.models.boxes import DECODE_CLIP
from detkeeper.models.custom import run_tower, tower_layer

#: Initial foreground probability of every location (Lin et al. 2017, section 4.1), as in RetinaNet:
#: without it the many background locations swamp the first steps of training.
PRIOR_PROBABILITY = 0.01


def _tower(channels: int, convs: int, prefix: str, block: str | None = None) -> list:
    """3x3 conv -> GroupNorm -> ReLU blocks: FCOS normalizes its towers with GN because it is
    independent of the batch size and can be shared across pyramid levels (BN statistics could not).
    A custom `block` (a registered Keras layer, see :func:`detkeeper.models.custom.tower_layer`)
    replaces only the conv; GroupNorm and ReLU still follow it."""
    normal = keras.initializers.RandomNormal(stddev=0.01)
    groups = math.gcd(channels, 32)  # 32 groups where the channel count allows, fewer otherwise
    blocks = []
    for i in range(convs):
        blocks += [tower_layer(block, channels, f"{prefix}_conv{i}", use_bias=False, kernel_initializer=normal),
                   group_norm.GroupNormalization(groups, name=f"{prefix}_norm{i}"),
                   keras.layers.ReLU(name=f"{prefix}_relu{i}")]
    return blocks


class FCOSHead(keras.layers.Layer):
    """Per level ``[B, H, W, F]`` -> class logits ``[B, H*W, C]``, box distances ``[B, H*W, 4]`` and,
    with `centerness`, centerness logits ``[B, H*W]``.

    Distances are ``(l, t, r, b)`` from the location to the box sides in input pixels:
    ``exp(scale_level * x) * stride``. The exponential keeps them positive and starts every
    location at a ``2 * stride`` box (ReLU would start them at zero size, with dead gradients); the
    stride and the learnable per-level scale let one shared conv serve every level's object sizes.
    Rows come out level-major (finest first), then row, then column, the order of
    :func:`detkeeper.models.fcos.assign.locations`. Centerness is predicted from the box tower
    (Tian et al.'s later placement, better than the paper's class branch). Without `centerness`
    (quality focal loss, whose class score already ranks by box quality) the head has no centerness
    conv at all, so no weights sit unused and untrained in checkpoints and exports.
    """

    def __init__(self, num_classes: int, channels: int, convs: int, min_level: int, max_level: int,
                 block: str | None = None, centerness: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.channels, self.convs, self.block = num_classes, channels, convs, block
        self.centerness = centerness
        self.min_level, self.max_level = min_level, max_level
        normal = keras.initializers.RandomNormal(stddev=0.01)
        self.class_tower = _tower(channels, convs, "class", block)
        self.box_tower = _tower(channels, convs, "box", block)
        prior_bias = -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY)
        self.class_output = keras.layers.Conv2D(num_classes, 3, padding="same", kernel_initializer=normal,
                                                bias_initializer=keras.initializers.Constant(prior_bias),
                                                name="class_output")
        self.box_output = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=normal, name="box_output")
        if centerness:
            self.centerness_output = keras.layers.Conv2D(1, 3, padding="same", kernel_initializer=normal,
                                                         name="centerness_output")

    def build(self, input_shape: list) -> None:
        # Created here rather than in __init__ so their paths sit under the model's, like the convs'.
        self.scales = [self.add_weight(shape=(), initializer="ones", name=f"scale_p{level}")
                       for level in range(self.min_level, self.max_level + 1)]

    def call(self, pyramid: list) -> tuple:
        class_logits, box_distances, centerness_logits = [], [], []
        for level, features, scale in zip(range(self.min_level, self.max_level + 1), pyramid, self.scales):
            classes, regression = run_tower(self.class_tower, features), run_tower(self.box_tower, features)
            batch = ops.shape(features)[0]
            log_distances = ops.cast(scale, regression.dtype) * self.box_output(regression)
            # Clipped so an untrained head cannot overflow exp() to inf and poison the loss or NMS.
            distances = ops.exp(ops.minimum(log_distances, DECODE_CLIP)) * float(2 ** level)
            class_logits.append(ops.reshape(self.class_output(classes), [batch, -1, self.num_classes]))
            box_distances.append(ops.reshape(distances, [batch, -1, 4]))
            if self.centerness:
                centerness_logits.append(ops.reshape(self.centerness_output(regression), [batch, -1]))
        outputs = (ops.concatenate(class_logits, axis=1), ops.concatenate(box_distances, axis=1))
        return (*outputs, ops.concatenate(centerness_logits, axis=1)) if self.centerness else outputs

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels,
                "convs": self.convs, "min_level": self.min_level, "max_level": self.max_level,
                "block": self.block, "centerness": self.centerness}
