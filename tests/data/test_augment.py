"""Augmented boxes must stay on the objects: hand-computed cases and a pixel-level property."""

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.data import augment


def test_flip_moves_box_to_mirror_position():
    image = tf.zeros([6, 10, 3])
    _, boxes = augment.flip_horizontal(image, tf.constant([[1.0, 2.0, 3.0, 5.0]]))
    np.testing.assert_allclose(boxes.numpy(), [[1.0, 5.0, 3.0, 8.0]])


def test_flip_is_its_own_inverse_on_pixels_and_boxes():
    image = tf.random.stateless_uniform([7, 11, 3], seed=[1, 2])
    boxes = tf.constant([[0.5, 1.5, 4.0, 9.0], [2.0, 0.0, 7.0, 11.0]])
    twice_image, twice_boxes = augment.flip_horizontal(*augment.flip_horizontal(image, boxes))
    np.testing.assert_array_equal(twice_image.numpy(), image.numpy())
    np.testing.assert_allclose(twice_boxes.numpy(), boxes.numpy())


def test_resize_keeps_aspect_ratio_and_scales_boxes():
    image = tf.zeros([100, 200, 3])
    boxes = tf.constant([[10.0, 20.0, 30.0, 40.0]])
    padded, out_boxes, keep, factors = augment.resize_for_model(image, boxes, 50)
    assert padded.shape == (50, 50, 3)
    np.testing.assert_allclose(out_boxes.numpy(), [[2.5, 5.0, 7.5, 10.0]])
    np.testing.assert_allclose(factors.numpy(), [0.25, 0.25])
    assert keep.numpy().tolist() == [True]


def test_resize_pads_bottom_right_with_zeros():
    image = tf.ones([100, 200, 3]) * 200.0
    padded, _, _, _ = augment.resize_for_model(image, tf.zeros([0, 4]), 50)
    assert np.all(padded.numpy()[:25] > 199.0)
    assert np.all(padded.numpy()[25:] == 0.0)


def test_scale_and_crop_shifts_clips_and_drops_boxes():
    image = tf.zeros([100, 200, 3])
    boxes = tf.constant([
        [10.0, 20.0, 30.0, 40.0],   # -> [5, 10, 15, 20] - offset x 25: cropped away
        [10.0, 60.0, 30.0, 100.0],  # -> [5, 30, 15, 50] - 25: fully inside
        [0.0, 40.0, 20.0, 80.0],    # -> [0, 20, 10, 40] - 25: crosses the left edge, clipped
    ])
    content, out_boxes, keep, factors = augment.scale_and_crop(
        image, boxes, 50, scale=2.0, offset_fraction=tf.constant([0.5, 0.5]))
    assert content.shape == (50, 50, 3)
    np.testing.assert_allclose(factors.numpy(), [0.5, 0.5])
    assert keep.numpy().tolist() == [False, True, True]
    np.testing.assert_allclose(out_boxes.numpy()[1:], [[5.0, 5.0, 15.0, 25.0], [0.0, 0.0, 10.0, 15.0]])


def test_crop_takes_exactly_the_offset_window():
    image = tf.reshape(tf.range(40 * 80 * 3, dtype=tf.float32), [40, 80, 3])
    content, _, _, _ = augment.scale_and_crop(image, tf.zeros([0, 4]), 40, scale=2.0,
                                              offset_fraction=tf.constant([0.0, 0.25]))
    np.testing.assert_array_equal(content.numpy(), image.numpy()[:, 10:50])


def test_zoom_out_leaves_content_smaller_than_output():
    content, boxes, keep, _ = augment.scale_and_crop(
        tf.zeros([100, 100, 3]), tf.constant([[0.0, 0.0, 100.0, 100.0]]), 64, scale=0.5,
        offset_fraction=tf.constant([0.7, 0.7]))
    assert content.shape == (32, 32, 3)
    np.testing.assert_allclose(boxes.numpy(), [[0.0, 0.0, 32.0, 32.0]])
    assert keep.numpy().tolist() == [True]


def _scene():
    """A black image with three white rectangles at known boxes."""
    image = np.zeros([120, 160, 3], np.float32)
    boxes = np.array([[10, 10, 40, 50], [60, 90, 110, 150], [20, 100, 50, 130]], np.float32)
    for ymin, xmin, ymax, xmax in boxes.astype(int):
        image[ymin:ymax, xmin:xmax] = 255.0
    return tf.constant(image), tf.constant(boxes)


@pytest.mark.parametrize("seed", range(12))
def test_random_augment_keeps_every_box_on_its_object(seed):
    image, boxes = _scene()
    out, out_boxes, keep, _ = augment.random_augment(
        image, boxes, 96, seed=tf.constant([seed, 7], tf.int64), horizontal_flip=True,
        scale_range=(0.6, 1.8), colour_strength=0.0)
    out = out.numpy()
    for (ymin, xmin, ymax, xmax) in out_boxes.numpy()[keep.numpy()]:
        if (ymax - ymin) < 3 or (xmax - xmin) < 3:
            continue  # slivers at the crop border: too thin to sample
        inner = out[int(np.ceil(ymin)) + 1:int(ymax) - 1, int(np.ceil(xmin)) + 1:int(xmax) - 1]
        assert inner.size and inner.mean() > 200.0, (seed, ymin, xmin, ymax, xmax)
    # Pixels bright enough to be an object lie inside some kept box.
    bright = np.argwhere(out.mean(axis=-1) > 250.0)
    inside = np.zeros(len(bright), bool)
    for (ymin, xmin, ymax, xmax) in out_boxes.numpy()[keep.numpy()]:
        inside |= ((bright[:, 0] >= ymin - 1) & (bright[:, 0] < ymax + 1)
                   & (bright[:, 1] >= xmin - 1) & (bright[:, 1] < xmax + 1))
    assert inside.all(), seed


def test_colour_jitter_changes_colours_not_geometry():
    image, boxes = _scene()
    plain = augment.random_augment(image, boxes, 96, seed=tf.constant([3, 4], tf.int64),
                                   horizontal_flip=True, scale_range=(0.8, 1.2), colour_strength=0.0)
    jittered = augment.random_augment(image, boxes, 96, seed=tf.constant([3, 4], tf.int64),
                                      horizontal_flip=True, scale_range=(0.8, 1.2), colour_strength=0.5)
    np.testing.assert_array_equal(plain[1].numpy(), jittered[1].numpy())
    assert not np.array_equal(plain[0].numpy(), jittered[0].numpy())
    assert jittered[0].numpy().min() >= 0.0 and jittered[0].numpy().max() <= 255.0


def test_stretch_scales_each_side_to_the_output_and_boxes_with_it():
    image = tf.zeros([100, 200, 3])
    boxes = tf.constant([[10.0, 20.0, 30.0, 40.0]])
    canvas, out_boxes, keep, factors = augment.resize_for_model(image, boxes, 50, augment.Resize("stretch"))
    assert canvas.shape == (50, 50, 3)
    np.testing.assert_allclose(factors.numpy(), [0.5, 0.25])
    np.testing.assert_allclose(out_boxes.numpy(), [[5.0, 5.0, 15.0, 10.0]])
    assert keep.numpy().tolist() == [True]


def test_padding_takes_the_resize_pad_value_and_leaves_the_content():
    image = tf.fill([100, 200, 3], 200.0)
    value = (123.675, 116.28, 103.53)
    padded, _, _, _ = augment.resize_for_model(image, tf.zeros([0, 4]), 50, augment.Resize(pad_value=value))
    padded = padded.numpy()
    np.testing.assert_allclose(padded[:25], 200.0, atol=1e-4)  # the resize's own rounding
    np.testing.assert_array_equal(padded[25:], np.broadcast_to(np.float32(value), padded[25:].shape))


def test_tf1_bilinear_is_tf1_resize_images():
    image = tf.random.stateless_uniform([37, 53, 3], seed=[5, 6], maxval=255.0)
    canvas, _, _, _ = augment.resize_for_model(image, tf.zeros([0, 4]), 64, augment.Resize("stretch", "tf1_bilinear"))
    expected = tf.compat.v1.image.resize_images(image, [64, 64], method=tf.compat.v1.image.ResizeMethod.BILINEAR)
    np.testing.assert_array_equal(canvas.numpy(), expected.numpy())


def test_a_resize_outside_the_known_modes_and_methods_is_refused():
    with pytest.raises(ValueError, match="resize mode: expected one of pad, stretch, got 'crop'"):
        augment.Resize("crop")
    with pytest.raises(ValueError, match="resize method: expected one of antialias, tf1_bilinear, got 'area'"):
        augment.Resize(method="area")


@pytest.mark.parametrize("model,resize,normalise", [
    # fixed_shape_resizer 320x320, MobileNet's x / 127.5 - 1
    ("ssd_mobilenet_v2_fpnlite_320", augment.Resize("stretch", "tf1_bilinear"), lambda x: x / 127.5 - 1.0),
    # fixed_shape_resizer 300x300
    ("ssd_mobilenet_v2_320", augment.Resize("stretch", "tf1_bilinear"), lambda x: x / 127.5 - 1.0),
    # keep_aspect_ratio_resizer 512, padded: EfficientNet's ImageNet mean and std; the API pads after
    # normalising, i.e. with the pixel value that normalises to zero
    ("ssd_efficientdet_d0_512",
     augment.Resize("pad", "tf1_bilinear", tuple(255.0 * np.array([0.485, 0.456, 0.406]))),
     lambda x: (x / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)),
])
def test_the_tfod_api_resizers_give_the_api_s_own_model_input(tfod_oracle_dir, model, resize, normalise):
    """The TF OD API's preprocessed input of the same photo (its image_resizer, then its model's
    normalisation) equals detkeeper's resize followed by the same normalisation, to 1e-6."""
    reference = np.load(tfod_oracle_dir / model / "reference.npz")
    expected = reference["preprocessed_inputs"][0]
    image = tf.constant(reference["input_image"], tf.float32)
    canvas, _, _, factors = augment.resize_for_model(image, tf.zeros([0, 4]), expected.shape[0], resize)
    np.testing.assert_allclose(normalise(canvas.numpy()), expected, rtol=0, atol=1e-6)
    height, width = reference["true_image_shapes"][0][:2]  # the resized content, before padding
    np.testing.assert_allclose(factors.numpy(), [height / image.shape[0], width / image.shape[1]])


def test_vertical_flip_moves_box_to_mirror_position_and_is_its_own_inverse():
    image = tf.random.stateless_uniform([6, 10, 3], seed=[3, 4])
    boxes = tf.constant([[1.0, 2.0, 3.0, 5.0]])
    flipped_image, flipped = augment.flip_vertical(image, boxes)
    np.testing.assert_allclose(flipped.numpy(), [[3.0, 2.0, 5.0, 5.0]])
    np.testing.assert_array_equal(flipped_image.numpy()[0], image.numpy()[5])
    twice_image, twice_boxes = augment.flip_vertical(flipped_image, flipped)
    np.testing.assert_array_equal(twice_image.numpy(), image.numpy())
    np.testing.assert_allclose(twice_boxes.numpy(), boxes.numpy())


def test_quarter_turn_is_counter_clockwise_for_pixels_and_boxes_and_four_make_none():
    image = tf.random.stateless_uniform([6, 10, 3], seed=[5, 6])
    boxes = tf.constant([[1.0, 2.0, 3.0, 5.0]])
    turned_image, turned = augment.rotate90(image, boxes)
    assert turned_image.shape == (10, 6, 3)
    np.testing.assert_allclose(turned.numpy(), [[5.0, 1.0, 8.0, 3.0]])  # [W - x1, y0, W - x0, y1]
    # counter-clockwise: the original's top-right pixel is the new top-left one
    np.testing.assert_array_equal(turned_image.numpy()[0, 0], image.numpy()[0, 9])
    for _ in range(3):
        turned_image, turned = augment.rotate90(turned_image, turned)
    np.testing.assert_array_equal(turned_image.numpy(), image.numpy())
    np.testing.assert_allclose(turned.numpy(), boxes.numpy())


def _orientation(image: np.ndarray) -> tuple:
    """Where the scene's marker corner went: which quadrant of the output holds the red pixels."""
    red = np.argwhere((image[..., 0] > 200) & (image[..., 1] < 50))
    return tuple((red.mean(axis=0) > image.shape[0] / 2).tolist())


def test_flips_and_quarter_turn_reach_all_eight_symmetries_and_keep_boxes_on_objects():
    """An asymmetric scene (a red corner marker, white objects): over 48 seeds every symmetry of the
    square appears, and every kept box still lies on a white object."""
    image, boxes = _scene()
    image = image.numpy().copy()
    image[:12, :12] = [255.0, 0.0, 0.0]  # the marker, top-left
    # The marker alone says the corner; whether the image was transposed shows in the white shape at [10:40, 10:50].
    seen = set()
    for seed in range(48):
        out, out_boxes, keep, _ = augment.random_augment(
            tf.constant(image), boxes, 160, seed=tf.constant([seed, 9], tf.int64), horizontal_flip=True,
            vertical_flip=True, rotate_90=True, scale_range=(1.0, 1.0), colour_strength=0.0)
        out = out.numpy()
        kept = out_boxes.numpy()[keep.numpy()]
        assert len(kept) == 3
        first = kept[0]  # the 30x40 object next to the marker: wider than tall unless the image was transposed
        transposed = (first[2] - first[0]) > (first[3] - first[1])
        seen.add((_orientation(out), bool(transposed)))
        for ymin, xmin, ymax, xmax in kept:
            inner = out[int(np.ceil(ymin)) + 1:int(ymax) - 1, int(np.ceil(xmin)) + 1:int(xmax) - 1]
            assert inner.size and inner.mean() > 200.0, (seed, ymin, xmin, ymax, xmax)
    assert len(seen) == 8, seen


def test_the_symmetries_leave_the_other_draws_as_they_were():
    """Their coins come from a seed of their own: where both land on 'no', the output is the one
    without them (scale, crop and colour draws unchanged), so turning them on changes nothing else."""
    image, boxes = _scene()
    common = dict(horizontal_flip=True, scale_range=(0.7, 1.4), colour_strength=0.3)
    matched = 0
    for seed in range(16):
        seed_tensor = tf.constant([seed, 11], tf.int64)
        without = augment.random_augment(image, boxes, 96, seed=seed_tensor, **common)
        with_them = augment.random_augment(image, boxes, 96, seed=seed_tensor, vertical_flip=True, rotate_90=True,
                                           **common)
        if with_them[0].shape == without[0].shape and np.array_equal(with_them[1].numpy(), without[1].numpy()):
            np.testing.assert_array_equal(with_them[0].numpy(), without[0].numpy())
            matched += 1
    assert 1 <= matched < 16  # about a quarter of the seeds leave both off; the others turn or flip
