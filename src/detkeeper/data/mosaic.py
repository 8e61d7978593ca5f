"""Mosaic: four training images on one canvas, as YOLOv4 and YOLOv5 train (``data.augment.mosaic``).

A mosaic example shows its own record and three partner records on the ``S x S`` canvas, split at
a centre ``(cy, cx)`` into four quadrants: top-left ``cy x cx`` (the example's own image),
top-right ``cy x (S - cx)``, bottom-left ``(S - cy) x cx``, bottom-right ``(S - cy) x (S - cx)``.
Each image first goes through the per-image training transform
(:func:`detkeeper.data.augment.random_content`: flips and turn, scale jitter and crop, colour),
then its quadrant shows a window of it:

* the window is the quadrant's size (less where the image is smaller) at a random offset in the
  image (any part of an image can show, not only the corner nearest the centre);
* the window sits against the centre, so the four images meet there; where an image is smaller
  than its quadrant, the rest of the quadrant (towards the canvas's edges) is the resize's
  ``pad_value``, as padding is elsewhere;
* boxes move with their window and are clipped to it; a box is dropped when the clipped box keeps
  less than ``MIN_VISIBLE`` (a quarter) of its area, or has no width or height. Its area before
  clipping is the box as the per-image transform left it. A quarter of a cell at the cut still looks
  like a cell; a sliver does not (YOLOv5 keeps 10% and more, albumentations' ``min_visibility`` is
  commonly set to 0.25 to 0.3).

The geometry is :func:`combine`, a pure function of the centre and the windows' offsets, tested
against hand-computed boxes; :func:`random_mosaic` draws the partners, the centre (each coordinate
uniform over the middle half of the canvas, ``[S // 4, S - S // 4]``), the offsets and each
image's transform statelessly from the example's seed. The draws come from a stream of their own
(the seed folded with a salt), so the per-image draws of an example that is not a mosaic stay
those of a run without mosaic.

Four images carry up to four times the boxes of one (on average fewer: the quadrants together are
one canvas); ``data.max_boxes`` still truncates, the bottom-right image's boxes first.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

MIN_VISIBLE = 0.25
TILES = 4
_SALT = 0x4D05A1C


def _seeds(seed: tf.Tensor) -> tf.Tensor:
    """The mosaic's own seeds from an example's seed: [coin, partners, centre, offsets, 4 images]."""
    return tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, _SALT), num=8)


def chosen(seed: tf.Tensor, probability: float) -> tf.Tensor:
    """Whether the example of `seed` is a mosaic: a stateless uniform draw below `probability`."""
    return tf.random.stateless_uniform([], seed=_seeds(seed)[0]) < probability


def random_centre(seed: tf.Tensor, output_size: int) -> tf.Tensor:
    """``(cy, cx)``, each uniform over the whole pixels ``[S // 4, S - S // 4]``: no quadrant is
    thinner than a quarter of the canvas."""
    margin = output_size // 4
    return tf.random.stateless_uniform([2], seed=seed, minval=margin, maxval=output_size - margin + 1, dtype=tf.int32)


def quadrant_sizes(output_size: int, centre: tf.Tensor) -> list[tuple[tf.Tensor, tf.Tensor]]:
    """``(height, width)`` of the quadrants top-left, top-right, bottom-left, bottom-right."""
    cy, cx = centre[0], centre[1]
    return [(cy, cx), (cy, output_size - cx), (output_size - cy, cx), (output_size - cy, output_size - cx)]


def _area(boxes: tf.Tensor) -> tf.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def combine(contents: list[tf.Tensor], boxes: list[tf.Tensor], keeps: list[tf.Tensor], output_size: int,
            centre: tf.Tensor, offset_fractions: tf.Tensor, pad_value: tuple[float, float, float] = (0.0, 0.0, 0.0)
            ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Four images (``[h, w, 3]`` each, any size) and their boxes on one ``output_size`` canvas.

    `centre` is ``(cy, cx)`` in whole pixels (int), with ``0 < cy, cx < output_size``;
    `offset_fractions` ``[4, 2]`` (y then x, in [0, 1)) places each image's window in the free range
    ``max(h - quadrant height, 0)`` (and likewise for x), whole pixels rounded down. Returns the
    canvas, every image's boxes in canvas pixels (image 0's first), and which to keep: those `keeps`
    kept whose clipped box has positive width and height and at least ``MIN_VISIBLE`` of its area.
    """
    centre = tf.cast(centre, tf.int32)
    cy, cx = centre[0], centre[1]
    offset_fractions = tf.cast(offset_fractions, tf.float32)
    pad = tf.constant(pad_value, tf.float32)
    quadrants, moved_boxes, kept = [], [], []
    for tile, (height, width) in enumerate(quadrant_sizes(output_size, centre)):
        content = contents[tile]
        shape = tf.shape(content)[:2]
        piece = tf.stack([tf.minimum(height, shape[0]), tf.minimum(width, shape[1])])
        offset = tf.cast(tf.floor(tf.cast(shape - piece, tf.float32) * offset_fractions[tile]), tf.int32)
        window = tf.cast(tf.slice(content, [offset[0], offset[1], 0], [piece[0], piece[1], 3]), tf.float32)
        # Against the centre: the top quadrants' windows at their bottom, the left ones' at their right.
        top = height - piece[0] if tile < 2 else 0
        left = width - piece[1] if tile % 2 == 0 else 0
        paddings = [[top, height - top - piece[0]], [left, width - left - piece[1]], [0, 0]]
        quadrant = tf.pad(window, paddings)
        if any(pad_value):
            quadrant = tf.where(tf.pad(tf.ones_like(window[..., :1]), paddings) > 0, quadrant, pad)
        quadrants.append(quadrant)

        corner = tf.cast(tf.stack([top + (0 if tile < 2 else cy), left + (0 if tile % 2 == 0 else cx)]), tf.float32)
        moved = tf.cast(boxes[tile], tf.float32) + tf.tile(corner - tf.cast(offset, tf.float32), [2])
        clipped = tf.clip_by_value(moved, tf.tile(corner, [2]), tf.tile(corner + tf.cast(piece, tf.float32), [2]))
        visible = ((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
                   & (_area(clipped) >= MIN_VISIBLE * _area(moved)))
        moved_boxes.append(clipped)
        kept.append(keeps[tile] & visible)
    canvas = tf.concat([tf.concat(quadrants[:2], axis=1), tf.concat(quadrants[2:], axis=1)], axis=0)
    return tf.ensure_shape(canvas, [output_size, output_size, 3]), tf.concat(moved_boxes, 0), tf.concat(kept, 0)


def random_mosaic(first: tuple[tf.Tensor, tf.Tensor, tf.Tensor], load: Callable, count: int, output_size: int, *,
                  seed: tf.Tensor, transform: Callable, pad_value: tuple[float, float, float] = (0.0, 0.0, 0.0)
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The mosaic of the example of `seed`: its own image, boxes and classes (`first`) and three
    partner records drawn uniformly from the `count` records (``load(index)`` gives their image,
    boxes and classes; only a mosaic decodes them), each through ``transform(image, boxes,
    seed=...)`` (:func:`~detkeeper.data.augment.random_content` with the run's settings).

    Returns the canvas, boxes, classes, the mask of boxes kept and the resize factors ``[fy, fx]`` of
    the example's own image (a mosaic has no one original image; training reads neither the factors
    nor the original size, which evaluation uses to map detections back).
    """
    seeds = _seeds(seed)
    partners = tf.random.stateless_uniform([TILES - 1], seed=seeds[1], minval=0, maxval=count, dtype=tf.int64)
    tiles = [first] + [load(partners[i]) for i in range(TILES - 1)]
    contents, boxes, keeps, classes = [], [], [], []
    factors = None
    for tile, (image, tile_boxes, tile_classes) in enumerate(tiles):
        content, moved, keep, tile_factors = transform(image, tile_boxes, seed=seeds[4 + tile])
        factors = tile_factors if factors is None else factors
        contents.append(content)
        boxes.append(moved)
        keeps.append(keep)
        classes.append(tile_classes)
    centre = random_centre(seeds[2], output_size)
    offset_fractions = tf.random.stateless_uniform([TILES, 2], seed=seeds[3])
    canvas, boxes, keep = combine(contents, boxes, keeps, output_size, centre, offset_fractions, pad_value)
    return canvas, boxes, tf.concat(classes, 0), keep, factors
