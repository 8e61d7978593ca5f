"""Box math shared by the detectors: overlap, anchors, box coding, matching and NMS.

Boxes are ``[ymin, xmin, ymax, xmax]`` float32 in absolute pixels of the model input image;
padded rows in a batch are ``-1`` with class ``-1``. Every function is plain TensorFlow so it
runs eagerly, inside ``tf.function`` and in a Keras ``compute_loss`` with an unknown batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

# Largest log-scale a decoded box may grow by (as torchvision's detection heads): exp() of an
# untrained head's output must not overflow to inf and poison NMS or the loss.
DECODE_CLIP = math.log(1000.0 / 16.0)
_EPSILON = 1e-8


def area(boxes: tf.Tensor) -> tf.Tensor:
    """Area of ``[..., 4]`` boxes; inverted and padded (-1) rows count as 0, never negative."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


def iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise IoU, ``[..., N, 4] x [..., M, 4] -> [..., N, M]`` (leading dims broadcast).

    Pairs with zero union (zero-area or padded boxes on both sides) give 0 instead of NaN, so
    padding can go through matching and losses without masking first.
    """
    return matched_iou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def matched_iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Elementwise IoU, ``[..., 4] x [..., 4] -> [...]`` (shapes broadcast); 0 for zero union."""
    intersection, union = _intersection_and_union(boxes1, boxes2)
    return tf.math.divide_no_nan(intersection, union)


def _intersection_and_union(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    top_left = tf.maximum(boxes1[..., :2], boxes2[..., :2])
    bottom_right = tf.minimum(boxes1[..., 2:], boxes2[..., 2:])
    size = tf.maximum(bottom_right - top_left, 0.0)
    intersection = size[..., 0] * size[..., 1]
    return intersection, area(boxes1) + area(boxes2) - intersection


def giou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Elementwise generalized IoU, ``[..., 4] x [..., 4] -> [...]``, in [-1, 1].

    Unlike IoU it still has a gradient for disjoint boxes (it falls as the enclosing box grows),
    which is why ``1 - giou`` works as a regression loss (Rezatofighi et al., 2019).
    """
    intersection, union = _intersection_and_union(boxes1, boxes2)
    enclosing = area(tf.concat([tf.minimum(boxes1[..., :2], boxes2[..., :2]),
                                tf.maximum(boxes1[..., 2:], boxes2[..., 2:])], axis=-1))
    return (tf.math.divide_no_nan(intersection, union)
            - tf.math.divide_no_nan(enclosing - union, enclosing))


def center_size(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Corners to ``(cy, cx, h, w)``, the form box coding and anchor generation work in."""
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) / 2.0, (xmin + xmax) / 2.0, ymax - ymin, xmax - xmin


def corners(cy: tf.Tensor, cx: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`center_size`: ``(cy, cx, h, w)`` back to ``[..., 4]`` corners."""
    return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def to_original_pixels(boxes, factors, sizes=None) -> tf.Tensor:
    """Model-input boxes ``[B, N, 4]`` back to pixels of each original image: the inverse of
    :func:`detkeeper.data.augment.resize_for_model`, whose resize `factors` ``[B, 2]`` ``(fy, fx)``
    (model pixels per original pixel) it divides by; clipped to ``[0, size]`` when the images'
    `sizes` ``[B, 2]`` ``(height, width)`` are given. float32; evaluation, export verification and
    the serving graph all map boxes out through here (eagerly or in a graph)."""
    boxes = tf.cast(boxes, tf.float32)
    original = boxes / tf.tile(tf.cast(factors, tf.float32), [1, 2])[:, None, :]
    if sizes is None:
        return original
    limits = tf.tile(tf.cast(sizes, tf.float32), [1, 2])[:, None, :]
    return tf.clip_by_value(original, 0.0, limits)


def level_shapes(image_size: int, strides: Sequence[int] = (8, 16, 32, 64, 128)
                 ) -> list[tuple[int, int]]:
    """Feature-map ``(h, w)`` per stride, ``ceil(image_size / s)``, as "same"-padded convs give."""
    return [(-(-image_size // s), -(-image_size // s)) for s in strides]


def anchors_per_location(aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                         scales_per_octave: int = 3) -> int:
    """Anchors per feature-map cell, ``K``; a head predicts ``K * ...`` channels per cell."""
    return len(aspect_ratios) * scales_per_octave


def generate_anchors(image_size: int, strides: Sequence[int] = (8, 16, 32, 64, 128),
                     anchor_size_multiple: float = 4.0,
                     aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                     scales_per_octave: int = 3) -> tf.Tensor:
    """RetinaNet anchors for a square ``image_size`` input, ``[A, 4]`` float32 corners.

    Per level with stride ``s``: a ``ceil(image_size / s)`` grid, cell ``(i, j)`` centered at
    ``((i + 0.5) s, (j + 0.5) s)``; base size ``anchor_size_multiple * s``; scales
    ``2 ** (k / scales_per_octave)``; an aspect ratio ``r`` is **width / height** with the area
    kept: ``h = size / sqrt(r)``, ``w = size * sqrt(r)`` (as ``tile_anchors`` in the TF OD API's
    ``anchor_generators/grid_anchor_generator.py``, used by its multiscale RetinaNet generator).

    Order: level (in ``strides`` order), then row y, then column x, then scale, then ratio
    (``anchor = ((y * W + x) * scales_per_octave + k) * len(aspect_ratios) + r``). So a head
    output ``[B, H, W, K * D]`` reshaped to ``[B, H * W * K, D]`` lines up with this level's
    anchors, and levels concatenate along axis 1. (The TF OD API orders ratio before scale,
    and drops the half-stride offset when ``image_size`` is not a multiple of ``s``.)
    """
    scales = [2.0 ** (k / scales_per_octave) for k in range(scales_per_octave)]
    sqrt_ratios = tf.sqrt(tf.constant(aspect_ratios, tf.float32))
    levels = []
    for stride, (height, width) in zip(strides, level_shapes(image_size, strides)):
        sizes = tf.constant(scales, tf.float32)[:, None] * (anchor_size_multiple * stride)
        h = tf.reshape(sizes / sqrt_ratios, [1, 1, -1])  # [1, 1, K], scale-major
        w = tf.reshape(sizes * sqrt_ratios, [1, 1, -1])
        cy = (tf.range(height, dtype=tf.float32) + 0.5) * stride
        cx = (tf.range(width, dtype=tf.float32) + 0.5) * stride
        cy, cx = tf.meshgrid(cy, cx, indexing="ij")  # [H, W]
        cy, cx = cy[..., None], cx[..., None]
        shape = tf.broadcast_static_shape(cy.shape, h.shape)
        level = corners(*(tf.broadcast_to(t, shape) for t in (cy, cx, h, w)))
        levels.append(tf.reshape(level, [-1, 4]))
    return tf.concat(levels, axis=0)


def encode(boxes: tf.Tensor, anchors: tf.Tensor,
           scale_factors: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> tf.Tensor:
    """Regression targets ``[ty, tx, th, tw]`` of boxes against anchors (shapes broadcast).

    The TF OD API's FasterRcnnBoxCoder: ``ty = (y - ya) / ha * sy``, ``th = log(h / ha) * sh``.
    Sizes are floored at 1e-8 so degenerate rows encode to finite (large) values, not -inf.
    """
    cy, cx, h, w = center_size(boxes)
    cya, cxa, ha, wa = center_size(anchors)
    ha, wa = tf.maximum(ha, _EPSILON), tf.maximum(wa, _EPSILON)
    sy, sx, sh, sw = scale_factors
    return tf.stack([(cy - cya) / ha * sy, (cx - cxa) / wa * sx,
                     tf.math.log(tf.maximum(h, _EPSILON) / ha) * sh,
                     tf.math.log(tf.maximum(w, _EPSILON) / wa) * sw], axis=-1)


def decode(deltas: tf.Tensor, anchors: tf.Tensor,
           scale_factors: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> tf.Tensor:
    """Inverse of :func:`encode`; log-sizes are clipped at ``DECODE_CLIP`` so exp() stays finite."""
    cya, cxa, ha, wa = center_size(anchors)
    sy, sx, sh, sw = scale_factors
    ty, tx, th, tw = tf.unstack(deltas, axis=-1)
    h = tf.exp(tf.minimum(th / sh, DECODE_CLIP)) * ha
    w = tf.exp(tf.minimum(tw / sw, DECODE_CLIP)) * wa
    return corners(ty / sy * ha + cya, tx / sx * wa + cxa, h, w)


def match_anchors(anchors: tf.Tensor, gt_boxes: tf.Tensor, gt_classes: tf.Tensor,
                  positive_iou: float = 0.5, negative_iou: float = 0.4,
                  force_match_each_gt: bool = True) -> dict[str, tf.Tensor]:
    """Assign each anchor ``[A, 4]`` to a ground-truth box of ``[B, M, 4]`` / ``[B, M]``.

    An anchor is positive when its best IoU with a real gt (class >= 0) is >= ``positive_iou``,
    negative (background) below ``negative_iou``, ignored in between. With
    ``force_match_each_gt`` (the TF OD API's ``force_match_for_each_row``) each real gt's best
    anchor is positive even below the threshold, so small or odd-shaped objects still get a
    training signal; if two gts pick the same anchor the lower gt index wins. A gt with IoU 0
    to every anchor is not forced.

    Returns ``matched_gt_index [B, A]`` int32 (-1 unless positive), ``labels [B, A]`` int32
    (class index if positive, -1 negative, -2 ignored) and ``matched_boxes [B, A, 4]`` (the gt
    box if positive, else the anchor itself, which :func:`encode` maps to zero targets).
    """
    if negative_iou > positive_iou:
        raise ValueError(f"negative_iou {negative_iou} > positive_iou {positive_iou}")
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    # One extra padded gt row keeps argmax well-defined when a batch has M = 0 boxes.
    gt_boxes = tf.pad(tf.convert_to_tensor(gt_boxes, tf.float32), [[0, 0], [0, 1], [0, 0]],
                      constant_values=-1.0)
    gt_classes = tf.pad(tf.cast(gt_classes, tf.int32), [[0, 0], [0, 1]], constant_values=-1)
    valid = gt_classes >= 0  # [B, M]
    overlaps = tf.where(valid[..., None], iou(gt_boxes, anchors), -1.0)  # [B, M, A]

    best_iou = tf.reduce_max(overlaps, axis=1)  # [B, A]
    gt_index = tf.argmax(overlaps, axis=1, output_type=tf.int32)
    positive = best_iou >= positive_iou
    negative = best_iou < negative_iou
    if force_match_each_gt:
        num_anchors = tf.shape(anchors)[0]
        best_anchor = tf.argmax(overlaps, axis=2, output_type=tf.int32)  # [B, M]
        forcing = valid & (tf.reduce_max(overlaps, axis=2) > 0.0)
        forced = tf.one_hot(best_anchor, num_anchors, dtype=tf.int32) * tf.cast(
            forcing, tf.int32)[..., None]  # [B, M, A]
        forced_mask = tf.reduce_max(forced, axis=1) > 0
        gt_index = tf.where(forced_mask, tf.argmax(forced, axis=1, output_type=tf.int32),
                            gt_index)
        positive |= forced_mask

    classes = tf.gather(gt_classes, gt_index, batch_dims=1)
    labels = tf.where(positive, classes, tf.where(negative, -1, -2))
    boxes = tf.where(positive[..., None], tf.gather(gt_boxes, gt_index, batch_dims=1),
                     anchors[None])
    return {"matched_gt_index": tf.where(positive, gt_index, -1), "labels": labels,
            "matched_boxes": boxes}


def content_windows(factors, sizes) -> tf.Tensor:
    """Where each image lies in its model input, ``[B, 4]`` ``(0, 0, height, width)`` in model pixels:
    the resized image before padding (``sizes`` ``[B, 2]`` original ``(height, width)`` times the
    resize `factors` ``[B, 2]``, rounded back to the whole pixels the resize made), i.e. the TF OD
    API's clip window from ``true_image_shapes``. A stretched image fills its canvas."""
    content = tf.round(tf.cast(sizes, tf.float32) * tf.cast(factors, tf.float32))
    return tf.concat([tf.zeros_like(content), content], axis=-1)


def clip_to_windows(boxes: tf.Tensor, windows: tf.Tensor) -> tf.Tensor:
    """Boxes ``[B, N, 4]`` clipped to their image's window ``[B, 4]``, as the TF OD API's
    ``box_list_ops.clip_to_window`` clips (a box wholly outside ends with zero area)."""
    windows = tf.cast(windows, tf.float32)[:, None, :]
    return tf.maximum(tf.minimum(boxes, tf.tile(windows[..., 2:], [1, 1, 2])), tf.tile(windows[..., :2], [1, 1, 2]))


def clipped_as_nms_returns(boxes: tf.Tensor, clip_size: float | None = None,
                           clip_window: tf.Tensor | None = None) -> tf.Tensor:
    """`boxes` clipped as :func:`batched_nms` with the same arguments returns them (bit for bit)."""
    if clip_size is not None:
        boxes = tf.clip_by_value(boxes, 0.0, float(clip_size))
    if clip_window is not None:
        boxes = clip_to_windows(boxes, clip_window)
    return boxes


def batched_nms(boxes: tf.Tensor, scores: tf.Tensor, max_detections: int = 100,
                iou_threshold: float = 0.5, score_threshold: float = 0.05,
                max_per_class: int | None = None, clip_size: float | None = None,
                clip_window: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """Per-class NMS over ``boxes [B, A, 4]`` and probabilities ``scores [B, A, C]``.

    Boxes are clipped to ``[0, clip_size]`` first when given, so overlap is measured on the
    visible part. With ``clip_window`` ``[B, 4]`` (each image's ``ymin, xmin, ymax, xmax``) NMS
    works as the TF OD API's ``multiclass_non_max_suppression`` with a clip window: each class
    keeps up to ``max_per_class`` boxes suppressed as they are, then the survivors are clipped to
    the window and those left with zero area (wholly outside it, e.g. in the padding) are dropped
    (``_clip_window_prune_boxes``), so the next ones take their places in the best
    ``max_detections``; a dropped box has still suppressed its neighbours.

    Returns ``boxes [B, D, 4]`` (pixels), ``scores [B, D]``, ``classes [B, D]`` int32 and
    ``num_detections [B]`` int32 with ``D = max_detections``; rows past ``num_detections`` have
    box 0, score 0 and class -1, so padding cannot pass for class 0.
    ``combined_non_max_suppression`` has no XLA kernel: keep this out of ``jit_compile``.
    """
    boxes = clipped_as_nms_returns(tf.convert_to_tensor(boxes, tf.float32), clip_size)
    scores = tf.convert_to_tensor(scores, tf.float32)
    per_class = max_per_class or max_detections
    # Behind a window every class's survivors are candidates: any of the best may be dropped.
    kept = max_detections if clip_window is None else max(per_class * int(scores.shape[-1]), max_detections)
    nmsed_boxes, nmsed_scores, nmsed_classes, num = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_output_size_per_class=per_class, max_total_size=kept,
        iou_threshold=iou_threshold, score_threshold=score_threshold, clip_boxes=False)
    real = tf.range(kept)[None, :] < tf.cast(num, tf.int32)[:, None]
    if clip_window is not None:
        nmsed_boxes = clip_to_windows(nmsed_boxes, clip_window)
        real &= area(nmsed_boxes) > 0.0
        # The survivors in their order (score, as NMS ranked them), the dropped ones after them.
        order = tf.argsort(tf.where(real, tf.range(kept)[None, :], kept), axis=1, stable=True)[:, :max_detections]
        nmsed_boxes, nmsed_scores, nmsed_classes, real = (
            tf.gather(values, order, batch_dims=1) for values in (nmsed_boxes, nmsed_scores, nmsed_classes, real))
        nmsed_boxes = tf.where(real[..., None], nmsed_boxes, 0.0)
        nmsed_scores = tf.where(real, nmsed_scores, 0.0)
    num = tf.reduce_sum(tf.cast(real, tf.int32), axis=1)
    classes = tf.where(real, tf.cast(nmsed_classes, tf.int32), -1)
    return {"boxes": nmsed_boxes, "scores": nmsed_scores, "classes": classes,
            "num_detections": num}
