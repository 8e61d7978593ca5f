"""Where FCOS's training targets come from: the locations, their distances to boxes, the assigners.

A location is a feature-map cell of one pyramid level, at its center in input pixels; the head
predicts per location. :func:`assign_targets` (the paper's) and :func:`assign_targets_atss` give
each location at most one ground-truth box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

from detkeeper.models import boxes

#: A level's objects have a largest side distance between ``SIZE_RANGE_LOW * stride`` and
#: ``SIZE_RANGE_HIGH * stride``: the paper's P3 [0, 64], P4 [64, 128] ... P7 [512, inf].
SIZE_RANGE_LOW, SIZE_RANGE_HIGH = 4.0, 8.0
#: ATSS's candidates per gt and level, and its one anchor per location of side ``8 * stride``: the
#: paper's values for FCOS (it found the results insensitive to k from 7 to 17).
ATSS_TOP_K, ATSS_ANCHOR_SCALE = 9, 8.0


def locations(image_size: int, min_level: int, max_level: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Every location of a square ``image_size`` input: centers, strides and size ranges.

    Returns ``centers [A, 2]`` ``(y, x)`` at cell centers ``((i + 0.5) s, (j + 0.5) s)``,
    ``strides [A]`` and ``size_ranges [A, 2]`` (the regression sizes a level handles), ordered
    level-major, then row, then column: a head output ``[B, H, W, D]`` reshaped to ``[B, H*W, D]``
    lines up with its level. The paper's ranges have boundaries at ``8 * stride`` between levels;
    here the first level used starts at 0 and the last used ends at infinity, so a pyramid with
    fewer levels (P3-P6, or P4-P7) still covers every object size.
    """
    strides = [2 ** level for level in range(min_level, max_level + 1)]
    centers, location_strides, ranges = [], [], []
    for index, (stride, (height, width)) in enumerate(zip(strides, boxes.level_shapes(image_size, strides))):
        y = (tf.range(height, dtype=tf.float32) + 0.5) * stride
        x = (tf.range(width, dtype=tf.float32) + 0.5) * stride
        y, x = tf.meshgrid(y, x, indexing="ij")
        centers.append(tf.reshape(tf.stack([y, x], axis=-1), [-1, 2]))
        count = height * width
        location_strides.append(tf.fill([count], float(stride)))
        low = 0.0 if index == 0 else SIZE_RANGE_LOW * stride
        high = math.inf if index == len(strides) - 1 else SIZE_RANGE_HIGH * stride
        ranges.append(tf.tile(tf.constant([[low, high]], tf.float32), [count, 1]))
    return tf.concat(centers, 0), tf.concat(location_strides, 0), tf.concat(ranges, 0)


def level_counts(image_size: int, min_level: int, max_level: int) -> list[int]:
    """Locations per level, in :func:`locations`' order (ATSS picks its candidates level by level)."""
    strides = [2 ** level for level in range(min_level, max_level + 1)]
    return [height * width for height, width in boxes.level_shapes(image_size, strides)]


def side_distances(centers: tf.Tensor, box_corners: tf.Tensor) -> tf.Tensor:
    """``(l, t, r, b)`` from points ``[..., 2]`` (y, x) to the sides of boxes ``[..., 4]`` (shapes
    broadcast); all four are positive exactly when the point is inside the box."""
    y, x = centers[..., 0], centers[..., 1]
    ymin, xmin, ymax, xmax = tf.unstack(box_corners, axis=-1)
    return tf.stack([x - xmin, y - ymin, xmax - x, ymax - y], axis=-1)


def distances_to_boxes(centers: tf.Tensor, distances: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`side_distances`: locations ``[..., 2]`` and ``(l, t, r, b)`` -> yxyx corners."""
    y, x = centers[..., 0], centers[..., 1]
    left, top, right, bottom = tf.unstack(distances, axis=-1)
    return tf.stack([y - top, x - left, y + bottom, x + right], axis=-1)


def centerness(distances: tf.Tensor) -> tf.Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``: 1 at the box center,
    falling to 0 at its sides; 0 (not NaN) for degenerate distances."""
    left, top, right, bottom = tf.unstack(tf.maximum(distances, 0.0), axis=-1)
    horizontal = tf.math.divide_no_nan(tf.minimum(left, right), tf.maximum(left, right))
    vertical = tf.math.divide_no_nan(tf.minimum(top, bottom), tf.maximum(top, bottom))
    return tf.sqrt(horizontal * vertical)


def assign_targets(centers: tf.Tensor, strides: tf.Tensor, size_ranges: tf.Tensor, gt_boxes: tf.Tensor,
                   gt_classes: tf.Tensor, center_sampling_radius: float = 1.5) -> dict[str, tf.Tensor]:
    """Assign each location (from :func:`locations`) to at most one gt of ``[B, M, 4]`` / ``[B, M]``.

    A location is a candidate for a real gt (class >= 0) when it lies strictly inside the box and,
    with ``center_sampling_radius > 0``, also inside the box's center region of half-side
    ``radius * stride`` (clipped to the box), and when its largest side distance falls in its
    level's size range (both ends inclusive, as in the reference implementation). Center sampling
    drops the locations near a box's border, which see mostly background, and gives a small box at
    least the cells around its center. Among several candidates the gt of smallest area wins (the
    lower index on a tie).

    Returns ``labels [B, A]`` int32 (the class if positive, else -1), ``matched_boxes [B, A, 4]``
    (the assigned gt; padding for negatives) and ``centerness [B, A]`` (its target; 0 for negatives).
    """
    gt_boxes, gt_classes = _with_padded_gt(gt_boxes, gt_classes)
    points = centers[None, :, None, :]  # [1, A, 1, 2]
    gt = gt_boxes[:, None, :, :]  # [B, 1, M, 4]
    distances = side_distances(points, gt)  # [B, A, M, 4]
    candidate = tf.reduce_min(distances, axis=-1) > 0.0
    if center_sampling_radius > 0:
        cy, cx, _, _ = boxes.center_size(gt)
        radius = center_sampling_radius * strides[None, :, None]  # [1, A, 1]
        region = tf.stack([tf.maximum(cy - radius, gt[..., 0]), tf.maximum(cx - radius, gt[..., 1]),
                           tf.minimum(cy + radius, gt[..., 2]), tf.minimum(cx + radius, gt[..., 3])], axis=-1)
        candidate &= tf.reduce_min(side_distances(points, region), axis=-1) > 0.0
    largest = tf.reduce_max(distances, axis=-1)
    candidate &= (largest >= size_ranges[None, :, None, 0]) & (largest <= size_ranges[None, :, None, 1])
    candidate &= (gt_classes >= 0)[:, None, :]

    areas = tf.where(candidate, boxes.area(gt), math.inf)  # [B, A, M]
    gt_index = tf.argmin(areas, axis=-1, output_type=tf.int32)
    return _targets(centers, gt_boxes, gt_classes, gt_index, tf.reduce_any(candidate, axis=-1))


def assign_targets_atss(centers: tf.Tensor, strides: tf.Tensor, counts: Sequence[int], gt_boxes: tf.Tensor,
                        gt_classes: tf.Tensor, top_k: int = ATSS_TOP_K,
                        anchor_scale: float = ATSS_ANCHOR_SCALE) -> dict[str, tf.Tensor]:
    """ATSS (Zhang et al. 2020): :func:`assign_targets`' contract, with each gt's IoU threshold
    set by its own candidates instead of fixed size ranges and center regions.

    Each location stands for one square anchor of side ``anchor_scale * stride`` at its center.
    Per real gt and per level (`counts`: the levels' location counts, in order) the `top_k`
    locations nearest the gt's center are its candidates (the lower index first on a tie); the
    gt's threshold is the mean plus the sample standard deviation (n - 1, as the reference
    implementations' ``torch.std``) of its candidates' IoUs. A candidate is positive when its IoU
    reaches the threshold and it lies strictly inside the gt. A high mean says the candidates fit
    well, so the bar rises; a high deviation says one level fits much better than the others, and
    the bar keeps only that level's: no level needs a hand-set size range. A location positive for
    several gts takes the one of highest IoU (the lower index on a tie), as mmdetection's
    ``ATSSAssigner``.
    """
    gt_boxes, gt_classes = _with_padded_gt(gt_boxes, gt_classes)
    half = 0.5 * anchor_scale * strides[:, None]
    anchors = tf.concat([centers - half, centers + half], axis=-1)  # [A, 4]
    overlaps = boxes.iou(gt_boxes, anchors[None])  # [B, M, A]
    cy, cx, _, _ = boxes.center_size(gt_boxes)
    squared_distances = tf.square(cy[..., None] - centers[:, 0]) + tf.square(cx[..., None] - centers[:, 1])

    candidates, candidate_overlaps, start = [], [], 0
    for count in counts:
        level = slice(start, start + count)
        _, nearest = tf.math.top_k(-squared_distances[..., level], min(top_k, count))  # [B, M, k]
        candidates.append(tf.reduce_any(tf.one_hot(nearest, count, True, False, dtype=tf.bool), axis=-2))
        candidate_overlaps.append(tf.gather(overlaps[..., level], nearest, batch_dims=2))
        start += count
    candidate_overlaps = tf.concat(candidate_overlaps, axis=-1)  # [B, M, K]
    mean = tf.reduce_mean(candidate_overlaps, axis=-1, keepdims=True)
    variance = tf.reduce_sum(tf.square(candidate_overlaps - mean), axis=-1, keepdims=True) / max(
        candidate_overlaps.shape[-1] - 1, 1)
    inside = tf.reduce_min(side_distances(centers, gt_boxes[:, :, None, :]), axis=-1) > 0.0  # [B, M, A]
    positive = (tf.concat(candidates, axis=-1) & (overlaps >= mean + tf.sqrt(variance)) & inside
                & (gt_classes >= 0)[:, :, None])

    gt_index = tf.argmax(tf.where(positive, overlaps, -1.0), axis=1, output_type=tf.int32)  # [B, A]
    return _targets(centers, gt_boxes, gt_classes, gt_index, tf.reduce_any(positive, axis=1))


def _with_padded_gt(gt_boxes, gt_classes) -> tuple[tf.Tensor, tf.Tensor]:
    """One extra padded gt: keeps argmin / argmax over the gts well-defined when a batch has M = 0 boxes."""
    gt_boxes = tf.pad(tf.convert_to_tensor(gt_boxes, tf.float32), [[0, 0], [0, 1], [0, 0]], constant_values=-1.0)
    return gt_boxes, tf.pad(tf.cast(gt_classes, tf.int32), [[0, 0], [0, 1]], constant_values=-1)


def _targets(centers, gt_boxes, gt_classes, gt_index, positive) -> dict[str, tf.Tensor]:
    """The assigners' common result from each location's chosen gt ``[B, A]`` and whether it is positive."""
    matched_boxes = tf.gather(gt_boxes, gt_index, batch_dims=1)
    labels = tf.where(positive, tf.gather(gt_classes, gt_index, batch_dims=1), -1)
    targets = tf.where(positive, centerness(side_distances(centers[None], matched_boxes)), 0.0)
    return {"labels": labels, "matched_boxes": matched_boxes, "centerness": targets}
