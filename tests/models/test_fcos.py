"""FCOS target assignment, centerness and decoding against hand-worked cases.

Locations of a 128 px input with P3-P6: P3 centers at 4, 12, 20, ... (stride 8), P4 at 8, 24, ...
(16), P5 at 16, 48, 80, 112 (32), P6 at 32, 96 (64); size ranges P3 [0, 64], P4 [64, 128],
P5 [128, 256], P6 [256, inf]; center sampling radius 1.5 strides.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.models import build_model
from detkeeper.models.fcos.assign import assign_targets, centerness, distances_to_boxes, locations, side_distances
from detkeeper.models.group_norm import GroupNormalization

PAD = [-1.0, -1.0, -1.0, -1.0]


def _assign(boxes, classes, image_size=128, min_level=3, max_level=6, radius=1.5):
    """Targets for one image, and the positive locations as a sorted list of (stride, y, x)."""
    centers, strides, ranges = locations(image_size, min_level, max_level)
    targets = assign_targets(centers, strides, ranges, tf.constant([boxes], tf.float32),
                             tf.constant([classes], tf.int32), radius)
    targets = {key: value.numpy()[0] for key, value in targets.items()}
    positive = np.nonzero(targets["labels"] >= 0)[0]
    where = [(int(strides[i]), float(centers[i, 0]), float(centers[i, 1])) for i in positive]
    return targets, positive, sorted(where)


def _grid(stride, ys, xs):
    return sorted((stride, float(y), float(x)) for y in ys for x in xs)


def test_locations_are_level_major_cell_centers_with_open_ended_ranges():
    centers, strides, ranges = locations(128, 3, 6)
    assert centers.shape == (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2, 2)
    np.testing.assert_array_equal(centers[:3].numpy(), [[4, 4], [4, 12], [4, 20]])  # row 0, columns 0..2
    np.testing.assert_array_equal(centers[16].numpy(), [12, 4])  # row 1 starts after 16 columns
    np.testing.assert_array_equal(centers[256].numpy(), [8, 8])  # then P4
    np.testing.assert_array_equal(np.unique(strides.numpy()), [8, 16, 32, 64])
    np.testing.assert_array_equal(ranges.numpy()[[0, 256, 320, 336]],
                                  [[0, 64], [64, 128], [128, 256], [256, math.inf]])
    # P4-P5 only: P4 starts at 0 and P5 takes every larger object.
    np.testing.assert_array_equal(np.unique(locations(128, 4, 5)[2].numpy(), axis=0), [[0, 128], [128, math.inf]])


def test_small_box_gets_exactly_the_locations_near_its_center():
    # Center (24, 24), P3 center region 24 +- 12 -> locations at 20 and 28 on both axes.
    targets, positive, where = _assign([[8.0, 8.0, 40.0, 40.0], PAD], [2, -1])
    assert where == _grid(8, [20, 28], [20, 28])
    np.testing.assert_array_equal(targets["labels"][positive], [2, 2, 2, 2])
    np.testing.assert_array_equal(targets["matched_boxes"][positive], [[8.0, 8.0, 40.0, 40.0]] * 4)
    # Corner locations of the region: l = t = 12, r = b = 20 -> sqrt(12/20 * 12/20).
    np.testing.assert_allclose(targets["centerness"][positive], [0.6] * 4, rtol=1e-6)


def test_without_center_sampling_every_location_inside_the_box_is_positive():
    _, _, where = _assign([[8.0, 8.0, 40.0, 40.0]], [0], radius=0.0)
    assert where == _grid(8, [12, 20, 28, 36], [12, 20, 28, 36])


def test_size_ranges_route_a_large_box_to_a_coarse_level():
    # The whole 256 px image: at P5 the locations at 112 and 144 are within 48 px of the center
    # and see a largest distance of 144, inside P5's [128, 256]; finer levels' central locations
    # see about 128 or less and P6's (96, 160) see 160 < 256.
    _, _, where = _assign([[0.0, 0.0, 256.0, 256.0]], [1], image_size=256)
    assert where == _grid(32, [112, 144], [112, 144])
    # With P3-P4 only, P4 is the last level and takes it.
    _, _, where = _assign([[0.0, 0.0, 256.0, 256.0]], [1], image_size=256, max_level=4)
    assert where == _grid(16, [120, 136], [120, 136])


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_location_in_two_boxes_takes_the_smaller_one(order):
    big, small = [0.0, 0.0, 64.0, 64.0], [16.0, 16.0, 40.0, 40.0]
    gt = [(big, 0), (small, 1)]
    gt = [gt[i] for i in order]
    targets, positive, where = _assign([box for box, _ in gt], [label for _, label in gt])
    shared = _grid(8, [28, 36], [28, 36])  # the big box's positives all lie in the small box too
    assert set(shared) < set(where) == set(_grid(8, [20, 28, 36], [20, 28, 36]))
    np.testing.assert_array_equal(targets["labels"][positive], 1)
    np.testing.assert_array_equal(targets["matched_boxes"][positive], [small] * len(positive))


def test_padded_gt_never_matches_even_with_real_looking_coordinates():
    targets, positive, _ = _assign([PAD, [8.0, 8.0, 40.0, 40.0]], [-1, -1])
    assert positive.size == 0
    np.testing.assert_array_equal(targets["centerness"], 0.0)


def test_empty_image_is_all_negative_in_graph_mode_with_unknown_sizes():
    centers, strides, ranges = locations(128, 3, 6)
    assign = tf.function(lambda b, c: assign_targets(centers, strides, ranges, b, c),
                         input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)])
    for gt_count in (3, 0):
        targets = assign(tf.fill([2, gt_count, 4], -1.0), tf.fill([2, gt_count], -1))
        np.testing.assert_array_equal(targets["labels"].numpy(), -np.ones([2, 340]))
        np.testing.assert_array_equal(targets["centerness"].numpy(), np.zeros([2, 340]))


def test_centerness_target_at_the_box_center_is_one():
    # Box centered on the P3 location (12, 12); 16 px wide so it stays on P3.
    targets, positive, where = _assign([[4.0, 4.0, 20.0, 20.0]], [0])
    center = where.index((8, 12.0, 12.0))
    assert targets["centerness"][positive[center]] == pytest.approx(1.0)
    np.testing.assert_allclose(centerness(tf.constant([[5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 3.0, 8.0], [0.0] * 4])),
                               [1.0, math.sqrt(1 / 3 * 2 / 8), 0.0], rtol=1e-6)


def test_side_distances_and_distances_to_boxes_are_inverse():
    box = tf.constant([10.0, 20.0, 50.0, 35.0])
    point = tf.constant([30.0, 25.0])
    distances = side_distances(point, box)
    np.testing.assert_array_equal(distances.numpy(), [5.0, 20.0, 10.0, 20.0])  # l, t, r, b
    np.testing.assert_array_equal(distances_to_boxes(point, distances).numpy(), box.numpy())


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)  # the prior check below reads random head weights: the same ones in any test order
    return build_model(ModelConfig(name="fcos_tiny", image_size=128,
                                   backbone=BackboneConfig(name="tiny", weights="none")), 3)


def test_decode_known_distances_gives_the_known_box_clipped_to_the_image(model):
    distances = np.ones([1, 340, 4], np.float32)
    distances[0, 0] = [2.0, 3.0, 10.0, 20.0]  # location (4, 4): l, t, r, b
    distances[0, 339] = [500.0, 500.0, 500.0, 500.0]  # P6 location (96, 96)
    outputs = {"class_logits": tf.zeros([1, 340, 3]), "box_distances": tf.constant(distances),
               "centerness_logits": tf.fill([1, 340], math.log(3.0))}  # centerness probability 0.75
    decoded, scores = model.decode_boxes_and_scores(outputs)
    np.testing.assert_allclose(decoded[0, 0].numpy(), [1.0, 2.0, 24.0, 14.0])
    np.testing.assert_allclose(decoded[0, 339].numpy(), [0.0, 0.0, 128.0, 128.0])
    assert scores.shape == (1, 340, 3)
    np.testing.assert_allclose(scores.numpy(), math.sqrt(0.5 * 0.75), rtol=1e-6)


def test_loss_is_finite_without_any_object_and_tracks_its_parts(model):
    images = tf.zeros([2, 128, 128, 3])
    outputs = model(images)
    empty = {"boxes": tf.fill([2, 2, 4], -1.0), "classes": tf.fill([2, 2], -1)}
    loss = model.compute_loss(y=empty, y_pred=outputs)
    assert np.isfinite(loss.numpy())
    assert model.loss_trackers["box_loss"].result().numpy() == 0.0
    assert model.loss_trackers["centerness_loss"].result().numpy() == 0.0
    # Initial class probability is the focal prior, so the loss starts small, not at ~log(2) per cell.
    np.testing.assert_allclose(tf.sigmoid(outputs["class_logits"]).numpy().mean(), 0.01, rtol=0.05)


def test_config_round_trip_keeps_every_option(model):
    config = model.get_config()
    assert {key: config[key] for key in ("min_level", "max_level", "center_sampling_radius", "head_convs")} == {
        "min_level": 3, "max_level": 6, "center_sampling_radius": 1.5, "head_convs": 2}
    rebuilt = type(model).from_config(config)
    assert rebuilt.get_config() == config
    assert type(model).from_config(config).get_config() == config  # the config is not consumed


def test_head_towers_normalize_with_the_fused_group_norm(model):
    """FCOS's towers are most of its GroupNormalization layers: each is detkeeper's (a fused training step)."""
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(norms) == 4 and all(isinstance(layer, GroupNormalization) for layer in norms)
