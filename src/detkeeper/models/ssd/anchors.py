"""The TF OD API's ``multiscale_anchor_generator``, in its order and with its offset rule.

``anchor_generators/multiscale_grid_anchor_generator.py`` with ``grid_anchor_generator.tile_anchors``:
per level ``l`` (stride ``s = 2 ** l``), a grid of the level's feature map ``(H, W)``, base size
``anchor_scale * s``, scales ``2 ** (k / scales_per_octave)``, an aspect ratio ``r`` is width /
height with the area kept (``h = scale / sqrt(r) * base``, ``w = scale * sqrt(r) * base``).

Order: level, then row, then column, then **aspect ratio, then scale** (``ops.meshgrid(scales,
aspect_ratios)`` varies the scale fastest), aspect ratios in the config's order
(``[1.0, 2.0, 0.5]`` in the FPN-lite configs). detkeeper's own families put the scale first.

Offset rule: the first center of a level is at ``s / 2`` only where the image side is a multiple
of ``s``; otherwise at 0 (320 px, level 7: 320 is not a multiple of 128, so that level's 3 x 3
centers are at 0, 128, 256). Height and width follow the rule separately.

The API normalises anchors by the image size; here they stay in input pixels (detkeeper's box
convention), computed in float32 with the API's operations in the API's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def feature_map_sizes(image_size: int, min_level: int, max_level: int) -> list[int]:
    """Side of each level's feature map: MobileNetV2 and the coarse layers are "same"-padded
    stride-2 convolutions, so each level halves the previous one rounding up."""
    sizes, side = [], image_size
    for level in range(1, max_level + 1):
        side = -(-side // 2)
        if level >= min_level:
            sizes.append(side)
    return sizes


def multiscale_grid_anchors(image_size: int, min_level: int = 3, max_level: int = 7,
                            anchor_scale: float = 4.0,
                            aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
                            scales_per_octave: int = 2) -> tf.Tensor:
    """Anchors ``[A, 4]`` yxyx in pixels of a square ``image_size`` input, in the API's order."""
    scales = [2.0 ** (float(k) / scales_per_octave) for k in range(scales_per_octave)]
    # ops.meshgrid(scales, aspect_ratios): [R, S] grids, the scale varying fastest.
    scale_grid = tf.reshape(tf.tile(tf.constant(scales, tf.float32)[None, :], [len(aspect_ratios), 1]), [-1])
    ratio_grid = tf.reshape(tf.tile(tf.constant(aspect_ratios, tf.float32)[:, None], [1, len(scales)]), [-1])
    levels = []
    for level, side in zip(range(min_level, max_level + 1), feature_map_sizes(image_size, min_level, max_level)):
        stride = 2 ** level
        base = float(anchor_scale * stride)
        offset = stride / 2.0 if image_size % stride == 0 else 0.0
        ratio_sqrts = tf.sqrt(ratio_grid)
        heights = scale_grid / ratio_sqrts * base
        widths = scale_grid * ratio_sqrts * base
        centers = tf.range(side, dtype=tf.float32) * float(stride) + offset
        y_centers = tf.broadcast_to(centers[:, None, None], [side, side, len(scales) * len(aspect_ratios)])
        x_centers = tf.broadcast_to(centers[None, :, None], y_centers.shape)
        h = tf.broadcast_to(heights[None, None, :], y_centers.shape)
        w = tf.broadcast_to(widths[None, None, :], y_centers.shape)
        level_anchors = tf.stack([y_centers - 0.5 * h, x_centers - 0.5 * w,
                                  y_centers + 0.5 * h, x_centers + 0.5 * w], axis=-1)
        levels.append(tf.reshape(level_anchors, [-1, 4]))
    return tf.concat(levels, axis=0)
