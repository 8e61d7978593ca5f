"""FCOS's quality options: the ATSS assigner and quality focal loss (``model.head.assigner`` /
``classification_loss``), against hand-worked cases and numpy re-implementations from the papers;
that the defaults are the plain FCOS; and that the options train, save and restore."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import ModelConfig
from detkeeper.config.validate import from_data
from detkeeper.errors import ConfigError
from detkeeper.models import boxes, build_model, losses
from detkeeper.models.archive import load_keras_archive, save_keras_archive
from detkeeper.models.fcos.assign import (assign_targets, assign_targets_atss, centerness, distances_to_boxes,
                                          level_counts, locations, side_distances)

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


IMAGE_SIZE = 64


def _config(**head):
    """A model config as the YAML loader builds it, so the keys are the documented ones."""
    data = {"name": "fcos_tiny", "image_size": IMAGE_SIZE, "backbone": {"name": "tiny", "weights": "none"},
            "head": head}
    config, problems = from_data(ModelConfig, data)
    assert not problems, problems
    return config


@pytest.fixture(scope="module")
def batch():
    """Two 64 px images, one with three objects (one padding row) and one with two."""
    rng = np.random.default_rng(3)
    images = tf.constant(rng.uniform(0, 255, [2, IMAGE_SIZE, IMAGE_SIZE, 3]), tf.float32)
    gt_boxes = tf.constant([[[4.0, 6.0, 30.0, 28.0], [20.0, 24.0, 60.0, 62.0], [40.0, 2.0, 56.0, 20.0], PAD],
                            [[10.0, 10.0, 50.0, 40.0], [30.0, 36.0, 44.0, 50.0], PAD, PAD]])
    gt_classes = tf.constant([[0, 1, 2, -1], [2, 0, -1, -1]])
    return images, {"boxes": gt_boxes, "classes": gt_classes}


def test_defaults_are_the_plain_fcos_bit_for_bit(batch):
    images, targets = batch
    keras.utils.set_random_seed(0)
    model = build_model(_config(), 3)
    assert (model.assigner, model.classification_loss) == ("fcos", "focal")
    outputs = model(images, training=False)
    assert set(outputs) == {"class_logits", "box_distances", "centerness_logits"}
    total = model.compute_loss(y=targets, y_pred=outputs)

    # The loss FCOS computed before the options existed, from its parts.
    assigned = assign_targets(model.centers, model.location_strides, model.size_ranges, targets["boxes"],
                              targets["classes"], 1.5)
    positive = tf.cast(assigned["labels"] >= 0, tf.float32)
    num_positive = tf.maximum(tf.reduce_sum(positive), 1.0)
    one_hot = tf.one_hot(tf.maximum(assigned["labels"], 0), 3) * positive[..., None]
    class_loss = tf.reduce_sum(losses.sigmoid_focal_loss(one_hot, outputs["class_logits"])) / num_positive
    weights = assigned["centerness"] * positive
    predicted = distances_to_boxes(model.centers[None], outputs["box_distances"])
    box_loss = tf.math.divide_no_nan(
        tf.reduce_sum((1.0 - boxes.giou(predicted, assigned["matched_boxes"])) * weights), tf.reduce_sum(weights))
    centerness_loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=assigned["centerness"],
                                                              logits=outputs["centerness_logits"])
    centerness_loss = tf.reduce_sum(centerness_loss * positive) / num_positive
    assert float(num_positive) > 10
    np.testing.assert_array_equal(total.numpy(), (class_loss + 1.0 * box_loss + centerness_loss).numpy())

    _, scores = model.decode_boxes_and_scores(outputs)
    np.testing.assert_array_equal(scores.numpy(), tf.sqrt(tf.sigmoid(outputs["class_logits"]) * tf.sigmoid(
        outputs["centerness_logits"])[..., None]).numpy())


def test_quality_focal_loss_targets_the_predicted_boxes_iou_without_a_centerness_branch(batch, monkeypatch):
    images, targets = batch
    keras.utils.set_random_seed(0)
    model = build_model(_config(classification_loss="quality_focal"), 3)
    outputs = model(images, training=False)
    assert set(outputs) == {"class_logits", "box_distances"}
    assert not [v.path for v in model.weights if "centerness" in v.path]
    assert model.LOSS_TERMS == ("class_loss", "box_loss") and list(model.loss_trackers) == list(model.LOSS_TERMS)

    # Where the logits are 0 (p = 1/2) the loss is known per location: positives at their class
    # target IoU(predicted box, gt), everything else 0.
    logits = tf.zeros_like(outputs["class_logits"])
    model.compute_loss(y=targets, y_pred={**outputs, "class_logits": logits})
    assigned = {key: value.numpy() for key, value in model.assign(targets["boxes"], targets["classes"]).items()}
    positive = assigned["labels"] >= 0
    predicted = distances_to_boxes(model.centers[None], outputs["box_distances"]).numpy()
    iou = np.array([_numpy_iou(box[None].astype(np.float64), gt.astype(np.float64))[0]
                    for box, gt in zip(predicted[positive], assigned["matched_boxes"][positive])])
    soft = np.zeros(logits.shape)
    soft[positive, assigned["labels"][positive]] = iou
    per_element = np.log(2.0) * np.abs(soft - 0.5) ** 2  # BCE at p = 1/2 is log 2 whatever the target
    np.testing.assert_allclose(model.loss_trackers["class_loss"].result().numpy(),
                               per_element.sum() / positive.sum(), rtol=1e-5)

    # The IoU target is a constant: with the box loss off, no gradient reaches the boxes.
    monkeypatch.setattr(model, "box_loss_weight", 0.0)
    box_distances = tf.Variable(outputs["box_distances"])
    with tf.GradientTape() as tape:
        loss = model.compute_loss(y=targets, y_pred={**outputs, "box_distances": box_distances})
    np.testing.assert_array_equal(tape.gradient(loss, box_distances).numpy(), 0.0)

    _, scores = model.decode_boxes_and_scores(outputs)
    np.testing.assert_array_equal(scores.numpy(), tf.sigmoid(outputs["class_logits"]).numpy())


def _outputs(model, images):
    """Raw head outputs and detections (every candidate: an untrained model scores low)."""
    model.score_threshold = 0.0
    return {**model(images, training=False), **model.detect(images)}


def test_both_options_train_save_and_restore(batch, tmp_path):
    images, targets = batch
    config = _config(assigner="atss", classification_loss="quality_focal")
    keras.utils.set_random_seed(0)
    model = build_model(config, 3)
    assert {key: model.get_config()[key] for key in ("assigner", "classification_loss")} == {
        "assigner": "atss", "classification_loss": "quality_focal"}
    atss = assign_targets_atss(model.centers, model.location_strides, model.level_counts, targets["boxes"],
                               targets["classes"])
    np.testing.assert_array_equal(model.assign(targets["boxes"], targets["classes"])["labels"].numpy(),
                                  atss["labels"].numpy())
    # Eager: tracing the training graph costs more than the steps; the assigners run in graph mode above.
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)
    model(images[:1])
    model.optimizer.build(model.trainable_variables)
    history = [model.train_on_batch(images, targets, return_dict=True) for _ in range(3)]
    assert all(np.isfinite(logs["loss"]) and np.isfinite(logs["class_loss"]) for logs in history), history
    assert set(history[-1]) >= {"loss", "class_loss", "box_loss"} and "centerness_loss" not in history[-1]

    expected = _outputs(model, images)
    checkpoint = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    keras.utils.set_random_seed(1)
    restored = build_model(config, 3)
    restored(images[:1])
    tf.train.Checkpoint(model=restored).read(checkpoint).expect_partial().assert_existing_objects_matched()
    loaded = load_keras_archive(save_keras_archive(model, tmp_path / "model.keras"))
    assert (loaded.assigner, loaded.classification_loss) == ("atss", "quality_focal")
    with pytest.raises(ValueError, match="FCOS assigner: expected one of fcos, atss, got 'simota'"):
        type(model).from_config({**model.get_config(), "assigner": "simota"})
    for other in (restored, loaded):
        got = _outputs(other, images)
        assert set(got) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


def test_the_options_are_checked_and_refused_by_families_that_do_not_read_them():
    _, problems = from_data(ModelConfig, {"name": "fcos_tiny", "head": {"assigner": "simota"}})
    assert [p.key for p in problems] == [("head", "assigner")]
    for key, value in (("assigner", "atss"), ("classification_loss", "quality_focal")):
        config = dataclasses.replace(_config(**{key: value}), name="retinanet_tiny")
        with pytest.raises(ConfigError, match=f"model.head.{key}: retinanet_tiny does not read it.*fcos, fcos_tiny"):
            build_model(config, 3)
