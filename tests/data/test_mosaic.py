"""The mosaic: its geometry against hand-computed boxes and pixels, and its draws (deterministic, in range,
boxes on their objects)."""

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.data import augment, mosaic

PAD = (1.0, 2.0, 3.0)


def _ramp(height, width, start):
    """An image whose every pixel is different, so a window shows where it was cut."""
    values = start + np.arange(height * width, dtype=np.float32).reshape(height, width, 1)
    return np.repeat(values, 3, axis=-1)


@pytest.mark.parametrize("pad", [PAD, (0.0, 0.0, 0.0)])
def test_combine_places_each_window_against_the_centre_and_moves_clips_and_drops_boxes_by_hand(pad):
    size, centre = 20, [8, 12]  # quadrants: top-left 8x12, top-right 8x8, bottom-left 12x12, bottom-right 12x8
    contents = [_ramp(10, 16, 1000), np.full([6, 6, 3], 20.0, np.float32), _ramp(20, 20, 5000),
                np.full([12, 8, 3], 40.0, np.float32)]
    # offsets: image 0 has (10-8, 16-12) = (2, 4) free -> (1, 2); image 1 is smaller than its quadrant
    # (no free range); image 2 has (8, 8) free -> (2, 0); image 3 fits its quadrant exactly.
    fractions = tf.constant([[0.5, 0.5], [0.9, 0.9], [0.25, 0.0], [0.5, 0.5]])
    boxes = [
        [[2, 4, 6, 8],        # -> [1, 2, 5, 6]: inside
         [0, 10, 4, 16],      # -> [-1, 8, 3, 14] clipped [0, 8, 3, 12]: half visible, kept
         [8, 0, 10, 3],       # -> [7, -2, 9, 1] clipped [7, 0, 8, 1]: 1/6 visible, dropped
         [8, 4, 12, 8],       # -> [7, 2, 11, 6] clipped [7, 2, 8, 6]: exactly a quarter visible, kept
         [2, 2, 2, 5]],       # no height: dropped
        [[0, 0, 6, 6],        # placed at (8 - 6, 12) = (2, 12): [2, 12, 8, 18]
         [1, 1, 3, 3]],       # -> [3, 13, 5, 15]
        [[13, 10, 17, 14],    # -> (+8 - 2, +0) [19, 10, 23, 14] clipped [19, 10, 20, 12]: 1/8 visible, dropped
         [4, 4, 6, 6],        # -> [10, 4, 12, 6]
         [0, 0, 4, 4]],       # -> [6, 0, 10, 4] clipped [8, 0, 10, 4]: half visible, kept
        [[0, 0, 12, 8],       # placed at (8, 12): [8, 12, 20, 20]
         [1, 1, 2, 2]],       # visible, but the per-image transform had dropped it already
    ]
    keeps = [[True] * 5, [True, True], [True] * 3, [True, False]]
    canvas, out_boxes, keep = mosaic.combine(
        [tf.constant(c) for c in contents], [tf.constant(b, tf.float32) for b in boxes],
        [tf.constant(k) for k in keeps], size, tf.constant(centre), fractions, pad)

    np.testing.assert_array_equal(out_boxes.numpy(), [
        [1, 2, 5, 6], [0, 8, 3, 12], [7, 0, 8, 1], [7, 2, 8, 6], [1, 0, 1, 3],
        [2, 12, 8, 18], [3, 13, 5, 15],
        [19, 10, 20, 12], [10, 4, 12, 6], [8, 0, 10, 4],
        [8, 12, 20, 20], [9, 13, 10, 14]])
    assert keep.numpy().tolist() == [True, True, False, True, False, True, True, False, True, True, True, False]

    expected = np.broadcast_to(np.float32(pad), [size, size, 3]).copy()
    expected[0:8, 0:12] = contents[0][1:9, 2:14]
    expected[2:8, 12:18] = 20.0
    expected[8:20, 0:12] = contents[2][2:14, 0:12]
    expected[8:20, 12:20] = 40.0
    assert canvas.shape == (size, size, 3)
    np.testing.assert_array_equal(canvas.numpy(), expected)


def test_random_centre_stays_in_the_middle_half_and_reaches_both_ends():
    centres = np.array([mosaic.random_centre(tf.constant([seed, 3], tf.int64), 32).numpy() for seed in range(200)])
    assert centres.min() == 8 and centres.max() == 24  # [32 // 4, 32 - 32 // 4], whole pixels


def _scene(seed):
    """A black image with white rectangles at known boxes (a different layout per seed)."""
    rng = np.random.default_rng(seed)
    height, width = rng.integers(60, 140, size=2)
    image = np.zeros([height, width, 3], np.float32)
    boxes = []
    for _ in range(4):
        ymin, xmin = rng.integers(0, height - 20), rng.integers(0, width - 20)
        ymax, xmax = ymin + rng.integers(10, 20), xmin + rng.integers(10, 20)
        image[ymin:ymax, xmin:xmax] = 255.0
        boxes.append([ymin, xmin, ymax, xmax])
    return tf.constant(image), tf.constant(boxes, tf.float32), tf.constant([seed] * 4, tf.int32)


SCENES = [_scene(seed) for seed in range(6)]


def _mosaic(seed, scenes=SCENES, size=96):
    transform = lambda image, boxes, seed: augment.random_content(  # noqa: E731
        image, boxes, size, seed=seed, horizontal_flip=True, vertical_flip=True, rotate_90=True,
        scale_range=(0.7, 1.4), colour_strength=0.0)
    return mosaic.random_mosaic(scenes[0], lambda index: _pick(scenes, index), len(scenes), size,
                                seed=tf.constant(seed, tf.int64), transform=transform)


def _pick(scenes, index):
    """Scene `index` (a tensor) as the pipeline's loader gives a record: by a graph switch on the index."""
    return tf.switch_case(tf.cast(index, tf.int32), [lambda scene=scene: scene for scene in scenes])


@pytest.mark.parametrize("seed", range(8))
def test_mosaic_boxes_stay_on_their_objects(seed):
    canvas, boxes, classes, keep, factors = _mosaic([seed, 5])
    canvas, kept = canvas.numpy(), boxes.numpy()[keep.numpy()]
    assert canvas.shape == (96, 96, 3) and len(classes) == len(boxes)
    assert len(kept) > 0 and np.all(kept[:, 2:] > kept[:, :2]) and np.all(kept >= 0) and np.all(kept <= 96)
    for ymin, xmin, ymax, xmax in kept:
        if (ymax - ymin) < 3 or (xmax - xmin) < 3:
            continue  # too thin to sample
        inner = canvas[int(np.ceil(ymin)) + 1:int(ymax) - 1, int(np.ceil(xmin)) + 1:int(xmax) - 1]
        assert inner.size and inner.mean() > 200.0, (seed, ymin, xmin, ymax, xmax)
    # The classes follow their boxes: each scene's boxes carry the scene's number.
    assert set(classes.numpy().tolist()) <= set(range(len(SCENES)))


def test_the_same_seed_gives_the_same_mosaic_and_another_seed_another():
    first, again, other = _mosaic([1, 2]), _mosaic([1, 2]), _mosaic([2, 2])
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_chosen_draws_the_coin_from_the_seed():
    coins = [bool(mosaic.chosen(tf.constant([seed, 1], tf.int64), 0.5)) for seed in range(100)]
    assert coins == [bool(mosaic.chosen(tf.constant([seed, 1], tf.int64), 0.5)) for seed in range(100)]
    assert 30 < sum(coins) < 70
    assert all(mosaic.chosen(tf.constant([seed, 1], tf.int64), 1.0) for seed in range(20))
    assert not any(mosaic.chosen(tf.constant([seed, 1], tf.int64), 0.0) for seed in range(20))
