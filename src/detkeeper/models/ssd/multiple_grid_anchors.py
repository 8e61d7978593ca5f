"""The TF OD API's ``ssd_anchor_generator``, in its order and with its offset rule.

``anchor_generators/multiple_grid_anchor_generator.py`` (``create_ssd_anchors`` and
``MultipleGridAnchorGenerator._generate``) with ``grid_anchor_generator.tile_anchors``:

- layer ``i`` of ``num_layers`` has scale ``min_scale + (max_scale - min_scale) * i / (num_layers - 1)``;
  its boxes are one per aspect ratio at that scale, plus one at ``sqrt(scale * next scale)`` (1.0
  after the last layer) with ``interpolated_scale_aspect_ratio``; with
  ``reduce_boxes_in_lowest_layer`` the first layer has three instead: (0.1, 1.0), (scale, 2.0),
  (scale, 0.5). A box of scale ``s`` and aspect ratio ``r`` (width / height) is ``s / sqrt(r)``
  high and ``s * sqrt(r)`` wide, in units of the image side (``base_anchor_size`` 1 x 1, square input).
- The grid is the feature map's own shape (``anchor_strides`` unset): a map of side ``n`` has
  centres ``(k + 0.5) / n`` of the image side, whatever the network's stride. This differs from
  the multiscale generator (:mod:`~detkeeper.models.ssd.anchors`), whose centres follow ``2 ** level``.
- Order: layer, then row, then column, then box in the order above. No clipping.

The config's ``min_scale``, ``max_scale`` and aspect ratios are proto floats: they are rounded to
float32 first, then the scales are computed in Python floats and the boxes in float32 as the API
does, normalised, and only then scaled to input pixels (detkeeper's box convention).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

#: The zoo's ``ssd_mobilenet_v2_320x320`` generator (``create_ssd_anchors``' own defaults but for
#: the order of the aspect ratios, which the config lists as here).
NUM_LAYERS, MIN_SCALE, MAX_SCALE = 6, 0.2, 0.95
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 0.3333)
INTERPOLATED_SCALE_ASPECT_RATIO = 1.0

BoxSpecs = list[list[tuple[float, float]]]


def _proto_float(value: float) -> float:
    return float(np.float32(value))


def ssd_box_specs(num_layers: int = NUM_LAYERS, min_scale: float = MIN_SCALE, max_scale: float = MAX_SCALE,
                  aspect_ratios: Sequence[float] = ASPECT_RATIOS,
                  interpolated_scale_aspect_ratio: float = INTERPOLATED_SCALE_ASPECT_RATIO,
                  reduce_boxes_in_lowest_layer: bool = True) -> BoxSpecs:
    """Per layer, its boxes' ``(scale, aspect_ratio)``: ``create_ssd_anchors``' ``box_specs_list``."""
    min_scale, max_scale = _proto_float(min_scale), _proto_float(max_scale)
    interpolated = _proto_float(interpolated_scale_aspect_ratio)
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1) for i in range(num_layers)] + [1.0]
    specs = []
    for layer, (scale, scale_next) in enumerate(zip(scales[:-1], scales[1:])):
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
            continue
        layer_specs = [(scale, _proto_float(ratio)) for ratio in aspect_ratios]
        if interpolated > 0.0:
            layer_specs.append((float(np.sqrt(scale * scale_next)), interpolated))
        specs.append(layer_specs)
    return specs


def multiple_grid_anchors(feature_map_sizes: Sequence[int], box_specs: BoxSpecs, image_size: int) -> tf.Tensor:
    """Anchors ``[A, 4]`` yxyx in pixels of a square ``image_size`` input, one grid per square
    feature map of side ``feature_map_sizes[i]`` with the boxes ``box_specs[i]``, in the API's order."""
    if len(feature_map_sizes) != len(box_specs):
        raise ValueError(f"{len(feature_map_sizes)} feature maps for {len(box_specs)} layers of boxes")
    layers = []
    for side, specs in zip(feature_map_sizes, box_specs):
        scales, aspect_ratios = zip(*specs)
        ratio_sqrts = tf.sqrt(tf.constant(aspect_ratios, tf.float32))
        scales = tf.constant(scales, tf.float32)
        heights, widths = scales / ratio_sqrts, scales * ratio_sqrts
        stride = 1.0 / tf.constant(side, tf.float32)
        centers = tf.range(side, dtype=tf.float32) * stride + 0.5 * stride
        shape = [side, side, len(specs)]
        y_centers = tf.broadcast_to(centers[:, None, None], shape)
        x_centers = tf.broadcast_to(centers[None, :, None], shape)
        h = tf.broadcast_to(heights[None, None, :], shape)
        w = tf.broadcast_to(widths[None, None, :], shape)
        corners = tf.stack([y_centers - 0.5 * h, x_centers - 0.5 * w, y_centers + 0.5 * h, x_centers + 0.5 * w],
                           axis=-1)
        layers.append(tf.reshape(corners, [-1, 4]))
    return tf.concat(layers, axis=0) * float(image_size)
