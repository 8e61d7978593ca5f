"""Image + box transforms for the input pipeline, in TensorFlow.

Every transform takes its randomness as explicit arguments (a flip flag, a scale, a crop offset)
so it can be tested against hand-computed boxes; the ``random_*`` wrappers draw those arguments
with stateless ops from a per-example seed, which is what makes the pipeline deterministic
however many threads decode in parallel. Boxes are ``[ymin, xmin, ymax, xmax]`` in pixels.
"""

from __future__ import annotations

import tensorflow as tf


def flip_horizontal(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror the image left-right; a box [y0, x0, y1, x1] becomes [y0, W - x1, y1, W - x0]."""
    width = tf.cast(tf.shape(image)[1], boxes.dtype)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    flipped = tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)
    return tf.image.flip_left_right(image), flipped


def scale_and_crop(image: tf.Tensor, boxes: tf.Tensor, output_size: int, scale: tf.Tensor,
                   offset_fraction: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resize keeping the aspect ratio so the long side is ``output_size * scale``, then crop.

    With ``scale = 1`` this is the plain aspect-preserving resize used for evaluation. With
    ``scale > 1`` the resized image is larger than the output and a window of
    ``output_size`` is cut at ``offset_fraction`` (in [0, 1]^2, y then x) of the free range.
    Returns the (unpadded) content, the boxes in its frame, a mask of boxes that survive the
    crop with positive area (clipped to the window), and the exact per-axis resize factors
    ``[fy, fx]`` (model pixels per original pixel, after rounding the resized size).
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(output_size, tf.float32) * tf.cast(scale, tf.float32)
    resize_factor = target / tf.reduce_max(shape)
    new_shape = tf.maximum(tf.round(shape * resize_factor), 1.0)
    image = tf.image.resize(image, tf.cast(new_shape, tf.int32), method="bilinear", antialias=True)
    axis_factor = new_shape / shape  # exact per-axis factors after rounding

    free = tf.maximum(new_shape - float(output_size), 0.0)
    offset = tf.floor(free * tf.cast(offset_fraction, tf.float32))
    window = tf.minimum(new_shape - offset, float(output_size))
    offset_int, window_int = tf.cast(offset, tf.int32), tf.cast(window, tf.int32)
    image = tf.slice(image, [offset_int[0], offset_int[1], 0], [window_int[0], window_int[1], -1])

    factors = tf.tile(axis_factor, [2])
    shifted = boxes * factors - tf.tile(offset, [2])
    limits = tf.tile(window, [2])
    clipped = tf.clip_by_value(shifted, 0.0, limits)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return image, clipped, keep, axis_factor


def pad_to_square(image: tf.Tensor, output_size: int) -> tf.Tensor:
    """Pad bottom and right with zeros; boxes are unchanged (the content stays at the top-left)."""
    return tf.image.pad_to_bounding_box(image, 0, 0, output_size, output_size)


def adjust_colour(image: tf.Tensor, strength: float, seeds: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue of strength in [0, 1] (0..255 floats in/out)."""
    unit = image / 255.0
    unit = tf.image.stateless_random_brightness(unit, 0.5 * strength, seed=seeds[0])
    unit = tf.image.stateless_random_contrast(unit, 1.0 - strength, 1.0 + strength, seed=seeds[1])
    unit = tf.image.stateless_random_saturation(unit, 1.0 - strength, 1.0 + strength, seed=seeds[2])
    unit = tf.image.stateless_random_hue(unit, min(0.5, 0.1 * strength), seed=seeds[3])
    return tf.clip_by_value(unit, 0.0, 1.0) * 255.0


def random_augment(image: tf.Tensor, boxes: tf.Tensor, output_size: int, *, seed: tf.Tensor,
                   horizontal_flip: bool, scale_range: tuple[float, float], colour_strength: float
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training transform: flip, scale jitter with crop, colour jitter, pad to a square.

    `seed` is a stateless seed (shape [2]) unique to this example and epoch. Returns the
    ``output_size`` square image, the boxes, the mask of boxes still on the image, and the
    resize factors ``[fy, fx]``.
    """
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    if horizontal_flip:
        flip = tf.random.stateless_uniform([], seed=seeds[0]) < 0.5
        image, boxes = tf.cond(flip, lambda: flip_horizontal(image, boxes), lambda: (image, boxes))
    low, high = scale_range
    scale = tf.random.stateless_uniform([], seed=seeds[1], minval=low, maxval=high) if high > low else low
    offset_fraction = tf.random.stateless_uniform([2], seed=seeds[2])
    image, boxes, keep, factors = scale_and_crop(image, boxes, output_size, scale, offset_fraction)
    if colour_strength > 0:
        image = adjust_colour(image, colour_strength, seeds[3:7])
    return pad_to_square(image, output_size), boxes, keep, factors


def resize_for_model(image: tf.Tensor, boxes: tf.Tensor, output_size: int
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Evaluation transform: aspect-preserving resize and pad; also returns ``[fy, fx]``."""
    image, boxes, keep, factors = scale_and_crop(image, boxes, output_size, 1.0, tf.zeros([2]))
    return pad_to_square(image, output_size), boxes, keep, factors
