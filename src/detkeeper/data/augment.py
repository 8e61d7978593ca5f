"""Image + box transforms for the input pipeline, in TensorFlow.

Every transform takes its randomness as explicit arguments (a flip flag, a scale, a crop offset)
so it can be tested against hand-computed boxes; the ``random_*`` wrappers draw those arguments
with stateless ops from a per-example seed, which is what makes the pipeline deterministic
however many threads decode in parallel. Boxes are ``[ymin, xmin, ymax, xmax]`` in pixels.
"""

from __future__ import annotations

import dataclasses
from typing import get_args

import tensorflow as tf

from detkeeper.config.schema import ResizeMethod, ResizeMode

RESIZE_MODES, RESIZE_METHODS = get_args(ResizeMode), get_args(ResizeMethod)


@dataclasses.dataclass(frozen=True)
class Resize:
    """How an image becomes a model's square input, the same in training, evaluation and export.

    ``mode``: ``pad`` keeps the aspect ratio (long side to the model's size, content at the
    top-left, the rest ``pad_value``); ``stretch`` scales each side to the model's size, as the TF
    OD API's ``fixed_shape_resizer`` does. ``method``: ``antialias`` is bilinear with antialiasing
    (detkeeper's own models); ``tf1_bilinear`` is TF1's ``resize_images`` (no antialiasing, no
    half-pixel centres), which TF OD API models were trained and exported with, so their
    checkpoints see the pixels they were trained on. ``pad_value`` is an RGB value in 0..255: a
    model that normalises its input pads with the value that normalises to zero, as the TF OD API
    (which pads after normalising) does.
    """

    mode: str = "pad"
    method: str = "antialias"
    pad_value: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode: expected one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")
        if self.method not in RESIZE_METHODS:
            raise ValueError(f"resize method: expected one of {', '.join(RESIZE_METHODS)}, got {self.method!r}")
        object.__setattr__(self, "pad_value", tuple(float(value) for value in self.pad_value))

    @classmethod
    def of(cls, model) -> "Resize":
        """The resize a detector was built with (its ``resize_mode``, ``resize_method`` and ``pad_value``)."""
        return cls(model.resize_mode, model.resize_method, tuple(model.pad_value))

    def describe(self, size: int) -> str:
        """What a caller must do to an RGB 0..255 image to make the model's `size` square input."""
        how = ("bilinear with antialiasing" if self.method == "antialias"
               else "bilinear as TF1's resize_images, no antialiasing, no half-pixel centres")
        if self.mode == "stretch":
            return f"each side resized to {size} ({how})"
        fill = "zeros" if not any(self.pad_value) else f"RGB {list(self.pad_value)}"
        return (f"resized keeping its aspect ratio so its long side is {size} (new size rounded to whole "
                f"pixels, {how}), at the top-left, padded bottom/right with {fill}")

    def image(self, image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        """`image` ``[H, W, C]`` float resized to `size` ``[h, w]`` (int32) by ``method``."""
        if self.method == "tf1_bilinear":
            resized = tf.raw_ops.ResizeBilinear(images=image[None], size=size, align_corners=False,
                                                half_pixel_centers=False)
            return resized[0]
        return tf.image.resize(image, size, method="bilinear", antialias=True)


def flip_horizontal(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror the image left-right; a box [y0, x0, y1, x1] becomes [y0, W - x1, y1, W - x0]."""
    width = tf.cast(tf.shape(image)[1], boxes.dtype)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    flipped = tf.stack([ymin, width - xmax, ymax, width - xmin], axis=-1)
    return tf.image.flip_left_right(image), flipped


def flip_vertical(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror the image top-bottom; a box [y0, x0, y1, x1] becomes [H - y1, x0, H - y0, x1]."""
    height = tf.cast(tf.shape(image)[0], boxes.dtype)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    flipped = tf.stack([height - ymax, xmin, height - ymin, xmax], axis=-1)
    return tf.image.flip_up_down(image), flipped


def rotate90(image: tf.Tensor, boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotate the image 90 degrees counter-clockwise (an H x W image becomes W x H), as the TF OD
    API's ``random_rotation90`` does; a box [y0, x0, y1, x1] becomes [W - x1, y0, W - x0, y1]."""
    width = tf.cast(tf.shape(image)[1], boxes.dtype)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    rotated = tf.stack([width - xmax, ymin, width - xmin, ymax], axis=-1)
    return tf.image.rot90(image), rotated


def scale_and_crop(image: tf.Tensor, boxes: tf.Tensor, output_size: int, scale: tf.Tensor,
                   offset_fraction: tf.Tensor, resize: Resize = Resize()
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Resize so the long side (``stretch``: each side) is ``output_size * scale``, then crop.

    With ``scale = 1`` this is the plain resize used for evaluation. With ``scale > 1`` the resized
    image is larger than the output and a window of ``output_size`` is cut at
    ``offset_fraction`` (in [0, 1]^2, y then x) of the free range. Returns the (unpadded)
    content, the boxes in its frame, a mask of boxes that survive the crop with positive area
    (clipped to the window), and the exact per-axis resize factors ``[fy, fx]`` (model pixels per
    original pixel, after rounding the resized size).
    """
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(output_size, tf.float32) * tf.cast(scale, tf.float32)
    if resize.mode == "stretch":
        new_shape = tf.fill([2], tf.round(target))
    else:
        new_shape = tf.maximum(tf.round(shape * (target / tf.reduce_max(shape))), 1.0)
    image = resize.image(image, tf.cast(new_shape, tf.int32))
    axis_factor = new_shape / shape  # exact per-axis factors after rounding

    free = tf.maximum(new_shape - float(output_size), 0.0)
    offset = tf.floor(free * tf.cast(offset_fraction, tf.float32))
    window = tf.minimum(new_shape - offset, float(output_size))
    offset_int, window_int = tf.cast(offset, tf.int32), tf.cast(window, tf.int32)
    channels = image.shape[-1]
    image = tf.slice(image, [offset_int[0], offset_int[1], 0], [window_int[0], window_int[1], -1])
    # The slice keeps every channel, but its size is a tensor, so TensorFlow forgets how many: a model fed
    # images of unknown channels builds its first convolution as Keras' XLA fallback for grouped ones.
    image.set_shape([None, None, channels])

    factors = tf.tile(axis_factor, [2])
    shifted = boxes * factors - tf.tile(offset, [2])
    limits = tf.tile(window, [2])
    clipped = tf.clip_by_value(shifted, 0.0, limits)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return image, clipped, keep, axis_factor


def pad_to_square(image: tf.Tensor, output_size: int, value: tuple[float, float, float] = (0.0, 0.0, 0.0)
                  ) -> tf.Tensor:
    """Pad bottom and right with `value` (RGB); boxes are unchanged (the content stays at the top-left)."""
    padded = tf.image.pad_to_bounding_box(image, 0, 0, output_size, output_size)
    if not any(value):
        return padded
    inside = tf.image.pad_to_bounding_box(tf.ones_like(image[..., :1]), 0, 0, output_size, output_size) > 0
    return tf.where(inside, padded, tf.constant(value, padded.dtype))


def adjust_colour(image: tf.Tensor, strength: float, seeds: tf.Tensor) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue of strength in [0, 1] (0..255 floats in/out)."""
    unit = image / 255.0
    unit = tf.image.stateless_random_brightness(unit, 0.5 * strength, seed=seeds[0])
    unit = tf.image.stateless_random_contrast(unit, 1.0 - strength, 1.0 + strength, seed=seeds[1])
    unit = tf.image.stateless_random_saturation(unit, 1.0 - strength, 1.0 + strength, seed=seeds[2])
    unit = tf.image.stateless_random_hue(unit, min(0.5, 0.1 * strength), seed=seeds[3])
    return tf.clip_by_value(unit, 0.0, 1.0) * 255.0


def random_augment(image: tf.Tensor, boxes: tf.Tensor, output_size: int, *, seed: tf.Tensor,
                   horizontal_flip: bool, scale_range: tuple[float, float], colour_strength: float,
                   resize: Resize = Resize(), vertical_flip: bool = False, rotate_90: bool = False
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Training transform: flips and a quarter turn (each with probability 1/2), scale jitter with
    crop (after `resize`), colour jitter, pad to a square. With all three of the first, each of the
    square's eight symmetries is equally likely (for subjects with no up, such as cells).

    `seed` is a stateless seed (shape [2]) unique to this example and epoch. Returns the
    ``output_size`` square image, the boxes, the mask of boxes still on the image, and the
    resize factors ``[fy, fx]``.
    """
    image, boxes, keep, factors = random_content(
        image, boxes, output_size, seed=seed, horizontal_flip=horizontal_flip, scale_range=scale_range,
        colour_strength=colour_strength, resize=resize, vertical_flip=vertical_flip, rotate_90=rotate_90)
    return pad_to_square(image, output_size, resize.pad_value), boxes, keep, factors


def random_content(image: tf.Tensor, boxes: tf.Tensor, output_size: int, *, seed: tf.Tensor,
                   horizontal_flip: bool, scale_range: tuple[float, float], colour_strength: float,
                   resize: Resize = Resize(), vertical_flip: bool = False, rotate_90: bool = False
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """:func:`random_augment` before its padding: the content (at most ``output_size`` on each
    side), the boxes in its frame, the mask of boxes still on it and the factors ``[fy, fx]``.
    The mosaic (:mod:`detkeeper.data.mosaic`) cuts its tiles from this."""
    seeds = tf.random.experimental.stateless_split(seed, num=8)
    # The vertical flip and the turn draw from the eighth seed, so the other draws stay those of a
    # run without them.
    symmetry_seeds = tf.random.experimental.stateless_split(seeds[7], num=2)
    for wanted, transform, transform_seed in ((horizontal_flip, flip_horizontal, seeds[0]),
                                              (vertical_flip, flip_vertical, symmetry_seeds[0]),
                                              (rotate_90, rotate90, symmetry_seeds[1])):
        if wanted:
            chosen = tf.random.stateless_uniform([], seed=transform_seed) < 0.5
            image, boxes = tf.cond(chosen, lambda: transform(image, boxes), lambda: (image, boxes))
    low, high = scale_range
    scale = tf.random.stateless_uniform([], seed=seeds[1], minval=low, maxval=high) if high > low else low
    offset_fraction = tf.random.stateless_uniform([2], seed=seeds[2])
    image, boxes, keep, factors = scale_and_crop(image, boxes, output_size, scale, offset_fraction, resize)
    if colour_strength > 0:
        image = adjust_colour(image, colour_strength, seeds[3:7])
    return image, boxes, keep, factors


def resize_for_model(image: tf.Tensor, boxes: tf.Tensor, output_size: int, resize: Resize = Resize()
                     ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Evaluation transform: `resize` to the model's square input; also returns ``[fy, fx]``."""
    image, boxes, keep, factors = scale_and_crop(image, boxes, output_size, 1.0, tf.zeros([2]), resize)
    return pad_to_square(image, output_size, resize.pad_value), boxes, keep, factors
