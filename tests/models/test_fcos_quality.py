"""FCOS's quality options: the ATSS assigner and quality focal loss (``model.head.assigner`` /
``classification_loss``), against hand-worked cases and numpy re-implementations from the papers;
that the defaults are the plain FCOS; and that the options train, save and restore."""

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.models import losses
from detkeeper.models.fcos.assign import (assign_targets, assign_targets_atss, centerness, level_counts, locations,
                                          side_distances)

PAD = [-1.0, -1.0, -1.0, -1.0]
#: One pyramid level of four 8 px cells in a row: centers x = 4, 12, 20, 28 at y = 4.
ROW = [[4.0, 4.0], [4.0, 12.0], [4.0, 20.0], [4.0, 28.0]]


def _atss(gt_boxes, gt_classes, centers, strides, counts, **options):
    targets = assign_targets_atss(tf.constant(centers, tf.float32), tf.constant(strides, tf.float32), counts,
                                  tf.constant(gt_boxes, tf.float32), tf.constant(gt_classes, tf.int32), **options)
    return {key: value.numpy() for key, value in targets.items()}


def _row_labels(gt_box, top_k):
    """Labels of the four :data:`ROW` locations for one gt, each location a cell-sized anchor."""
    return _atss([[gt_box]], [[0]], ROW, [8.0] * 4, [4], top_k=top_k, anchor_scale=1.0)["labels"][0].tolist()


def test_atss_threshold_is_the_mean_plus_the_sample_deviation_of_the_candidates():
    # The box is cell 0: IoUs 1, 0, 0, 0; mean 0.25, sample std 0.5, threshold 0.75: only cell 0.
    assert _row_labels([0.0, 0.0, 8.0, 8.0], top_k=4) == [0, -1, -1, -1]
    # Cells 0 and 1: IoUs 0.5, 0.5, 0, 0; mean 0.25, sample std sqrt(1/12) = 0.289: threshold 0.539,
    # neither passes (the population std, 0.25, would let both through at exactly 0.5).
    assert _row_labels([0.0, 0.0, 8.0, 16.0], top_k=4) == [-1, -1, -1, -1]


def test_atss_candidates_are_the_k_nearest_lower_index_first_on_a_tie():
    # Cells 0-2, center x = 12: cell 1 is nearest, cells 0 and 2 tie at 8 px and k = 2 takes cell 0.
    # Both candidates have IoU 1/3 (std 0, threshold 1/3): positive; cell 2, as good, is no candidate.
    assert _row_labels([0.0, 0.0, 8.0, 24.0], top_k=2) == [0, 0, -1, -1]


def test_atss_candidates_come_from_every_level():
    # Level 1: the row (8 px anchors); level 2: 16 px cells at x = 8, 24 (16 px anchors); k = 2.
    # Box [0, 0, 16, 16]: candidates cells 0 and 1 (IoU 1/4 each), (8, 8) and (8, 24) (IoU 1, 0):
    # mean 0.375, sample std 0.433, threshold 0.808: only (8, 8), though cells 0 and 1 lie inside
    # the box too. The box goes to the level whose anchor fits it, with no size range.
    centers, strides = ROW + [[8.0, 8.0], [8.0, 24.0]], [8.0] * 4 + [16.0] * 2
    targets = _atss([[[0.0, 0.0, 16.0, 16.0]]], [[3]], centers, strides, [4, 2], top_k=2, anchor_scale=1.0)
    assert targets["labels"][0].tolist() == [-1, -1, -1, -1, 3, -1]
    # The centerness target of the box's exact center is 1, as with the FCOS assigner.
    assert targets["centerness"][0].tolist() == [0.0] * 4 + [1.0, 0.0]


def test_atss_positives_lie_inside_their_box():
    # P3 only (64 px anchors): the anchors of a 32 x 6 box's nine candidates all hold it whole, so
    # every IoU is 3/64 and so is the threshold: whether a candidate lies inside alone decides.
    centers, strides, _ = locations(64, 3, 3)
    # Between the location columns x = 4 and 12: no positive.
    between = _atss([[[16.0, 5.0, 48.0, 11.0]]], [[0]], centers, strides, [64])["labels"][0]
    assert np.all(between == -1)
    # Moved 2 px right, it takes in column 12: its candidates there (rows 20-44) are positive, the
    # ones in columns 4 and 20 are not.
    covering = _atss([[[16.0, 7.0, 48.0, 13.0]]], [[0]], centers, strides, [64])["labels"][0]
    positive = centers.numpy()[covering >= 0].tolist()
    assert sorted(positive) == [[20.0, 12.0], [28.0, 12.0], [36.0, 12.0], [44.0, 12.0]]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_atss_location_in_two_boxes_takes_the_higher_iou_not_the_smaller_box(order):
    # The whole 64 px image and a 16 px box at its center: the four central P3 locations are
    # positive for both, and their 64 px anchors fit the big box (IoU 0.78) better than the small
    # one (0.0625). The FCOS assigner gives them to the smaller box.
    centers, strides, ranges = locations(64, 3, 4)
    gt = [([0.0, 0.0, 64.0, 64.0], 0), ([24.0, 24.0, 40.0, 40.0], 1)]
    gt = [gt[i] for i in order]
    gt_boxes, gt_classes = tf.constant([[box for box, _ in gt]]), tf.constant([[label for _, label in gt]])
    central = [27, 28, 35, 36]  # P3 (28, 28), (28, 36), (36, 28), (36, 36)
    atss = assign_targets_atss(centers, strides, level_counts(64, 3, 4), gt_boxes, gt_classes)["labels"][0]
    fcos = assign_targets(centers, strides, ranges, gt_boxes, gt_classes)["labels"][0]
    assert np.nonzero(atss.numpy() >= 0)[0].tolist() == central and np.all(atss.numpy()[central] == 0)
    assert np.nonzero(fcos.numpy() >= 0)[0].tolist() == central and np.all(fcos.numpy()[central] == 1)


def test_atss_padded_gts_never_match_and_empty_images_work_in_graph_mode():
    centers, strides, _ = locations(128, 3, 6)
    counts = level_counts(128, 3, 6)
    padded = _atss([[PAD, [8.0, 8.0, 40.0, 40.0]]], [[-1, -1]], centers, strides, counts)
    assert np.all(padded["labels"] == -1) and np.all(padded["centerness"] == 0.0)
    assign = tf.function(lambda b, c: assign_targets_atss(centers, strides, counts, b, c),
                         input_signature=[tf.TensorSpec([None, None, 4]), tf.TensorSpec([None, None], tf.int32)])
    for gt_count in (3, 0):
        targets = assign(tf.fill([2, gt_count, 4], -1.0), tf.fill([2, gt_count], -1))
        np.testing.assert_array_equal(targets["labels"].numpy(), -np.ones([2, sum(counts)]))
        np.testing.assert_array_equal(targets["centerness"].numpy(), np.zeros([2, sum(counts)]))


def _numpy_iou(anchors, box):
    top_left, bottom_right = np.maximum(anchors[:, :2], box[:2]), np.minimum(anchors[:, 2:], box[2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=-1)
    union = np.prod(anchors[:, 2:] - anchors[:, :2], axis=-1) + np.prod(box[2:] - box[:2]) - intersection
    return intersection / union


def _numpy_atss(centers, strides, counts, gt_boxes, gt_classes, top_k=9, anchor_scale=8.0):
    """ATSS (Zhang et al. 2020, Algorithm 1) for one image, one gt at a time, in float64: each
    location's gt index, -1 for negatives."""
    half = anchor_scale * strides[:, None] / 2.0
    anchors = np.concatenate([centers - half, centers + half], axis=-1)
    best_iou, assigned = np.full(len(centers), -np.inf), np.full(len(centers), -1)
    for index, (box, label) in enumerate(zip(gt_boxes, gt_classes)):
        if label < 0:
            continue
        overlaps = _numpy_iou(anchors, box)
        distances = np.sum((centers - (box[:2] + box[2:]) / 2.0) ** 2, axis=-1)
        candidates, start = [], 0
        for count in counts:
            candidates += list(start + np.argsort(distances[start:start + count], kind="stable")[:top_k])
            start += count
        threshold = overlaps[candidates].mean() + overlaps[candidates].std(ddof=1)
        for i in candidates:
            inside = min(centers[i, 1] - box[1], centers[i, 0] - box[0], box[3] - centers[i, 1],
                         box[2] - centers[i, 0]) > 0
            if overlaps[i] >= threshold and inside and overlaps[i] > best_iou[i]:  # the first gt on a tie
                best_iou[i], assigned[i] = overlaps[i], index
    return assigned


@pytest.mark.parametrize("image_size,min_level,max_level", [(128, 3, 6), (96, 3, 5)])
def test_atss_matches_a_numpy_implementation_of_the_paper_on_random_crowded_images(image_size, min_level,
                                                                                 max_level):
    rng = np.random.default_rng(7)
    batch, gt_count = 6, 12
    corner = rng.integers(0, image_size - 8, [batch, gt_count, 2])
    size = rng.integers(4, image_size // 2, [batch, gt_count, 2])
    gt_boxes = np.concatenate([corner, np.minimum(corner + size, image_size)], -1).astype(np.float64)
    gt_classes = rng.integers(0, 3, [batch, gt_count])
    gt_boxes[:, -3:], gt_classes[:, -3:] = -1.0, -1  # padding rows
    gt_boxes[0], gt_classes[0] = -1.0, -1  # an image without objects
    centers, strides, _ = locations(image_size, min_level, max_level)
    counts = level_counts(image_size, min_level, max_level)
    got = _atss(gt_boxes, gt_classes, centers, strides, counts)
    total = 0
    for b in range(batch):
        expected = _numpy_atss(centers.numpy().astype(np.float64), strides.numpy().astype(np.float64), counts,
                               gt_boxes[b], gt_classes[b])
        positive = expected >= 0
        total += positive.sum()
        np.testing.assert_array_equal(got["labels"][b], np.where(positive, gt_classes[b][expected], -1))
        np.testing.assert_array_equal(got["matched_boxes"][b][positive], gt_boxes[b][expected[positive]])
        distances = side_distances(centers.numpy()[positive], gt_boxes[b][expected[positive]].astype(np.float32))
        np.testing.assert_allclose(got["centerness"][b][positive], centerness(distances).numpy(), rtol=1e-6)
    assert total > 100  # crowded: many positives, many locations claimed by several boxes


def test_quality_focal_loss_matches_its_formula():
    rng = np.random.default_rng(0)
    targets = rng.choice([0.0, 0.3, 0.9, 1.0], size=[64]).astype(np.float32)
    logits = rng.normal(0.0, 3.0, [64]).astype(np.float32)
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    cross_entropy = -(targets * np.log(p) + (1.0 - targets) * np.log(1.0 - p))
    got = losses.quality_focal_loss(tf.constant(targets), tf.constant(logits)).numpy()
    np.testing.assert_allclose(got, cross_entropy * np.abs(targets - p) ** 2, rtol=1e-4, atol=1e-7)
    # It is sigmoid cross-entropy scaled by |target - p| ** beta; beta = 0 leaves the cross-entropy.
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    np.testing.assert_allclose(got, (bce * tf.abs(targets - tf.sigmoid(logits)) ** 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(losses.quality_focal_loss(targets, logits, beta=0.0).numpy(), bce.numpy(), rtol=1e-6)
    # A perfect soft prediction costs nothing, unlike plain cross-entropy against a soft target.
    assert losses.quality_focal_loss(tf.constant([0.3]), tf.constant([np.log(0.3 / 0.7)], tf.float32)).numpy()[0] < 1e-12
