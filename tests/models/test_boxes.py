"""Box math against hand-computed values, and in graph mode with an unknown batch size."""

import math

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.models import boxes as B

SQUARE = [0.0, 0.0, 10.0, 10.0]
PAD = [-1.0, -1.0, -1.0, -1.0]


@pytest.mark.parametrize("other, expected", [
    ([20.0, 20.0, 30.0, 30.0], 0.0),      # disjoint
    ([2.0, 2.0, 4.0, 4.0], 4.0 / 100.0),  # nested
    ([5.0, 5.0, 15.0, 15.0], 25.0 / 175.0),  # partial
    (SQUARE, 1.0),                        # identical
    ([5.0, 5.0, 5.0, 5.0], 0.0),          # zero area
    (PAD, 0.0),                           # padded row
])
def test_iou_hand_computed(other, expected):
    result = B.iou(tf.constant([SQUARE]), tf.constant([other]))
    assert result.shape == (1, 1)
    np.testing.assert_allclose(result.numpy()[0, 0], expected, rtol=1e-6)


def test_iou_of_degenerate_pairs_is_zero_not_nan():
    degenerate = tf.constant([PAD, [5.0, 5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(B.iou(degenerate, degenerate).numpy(), np.zeros([2, 2]))


def test_iou_broadcasts_a_batch_against_shared_boxes():
    batch = tf.constant([[SQUARE, PAD, [5.0, 5.0, 15.0, 15.0]], [PAD, PAD, SQUARE]])
    shared = tf.constant([SQUARE, [20.0, 20.0, 30.0, 30.0]])
    result = B.iou(batch, shared).numpy()
    assert result.shape == (2, 3, 2)
    np.testing.assert_allclose(result[:, :, 0], [[1.0, 0.0, 1.0 / 7.0], [0.0, 0.0, 1.0]],
                               rtol=1e-6)
    np.testing.assert_array_equal(result[:, :, 1], np.zeros([2, 3]))


def test_area_clamps_padded_and_inverted_boxes():
    np.testing.assert_array_equal(
        B.area(tf.constant([SQUARE, PAD, [10.0, 10.0, 0.0, 0.0]])).numpy(), [100.0, 0.0, 0.0])


def test_giou_hand_computed():
    boxes1 = tf.constant([SQUARE, SQUARE, SQUARE, PAD])
    boxes2 = tf.constant([SQUARE, [0.0, 20.0, 10.0, 30.0], [5.0, 5.0, 15.0, 15.0], PAD])
    expected = [1.0, -100.0 / 300.0, 1.0 / 7.0 - 50.0 / 225.0, 0.0]
    np.testing.assert_allclose(B.giou(boxes1, boxes2).numpy(), expected, rtol=1e-6)


def test_giou_gives_a_gradient_for_disjoint_boxes():
    predicted = tf.Variable([[0.0, 20.0, 10.0, 30.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(1.0 - B.giou(predicted, tf.constant([SQUARE])))
    gradient = tape.gradient(loss, predicted).numpy()
    assert np.all(np.isfinite(gradient)) and gradient[0, 1] > 0.0  # pulls xmin toward 0


def test_center_size_and_corners_round_trip():
    cy, cx, h, w = B.center_size(tf.constant([[2.0, 1.0, 12.0, 21.0]]))
    np.testing.assert_allclose([cy[0], cx[0], h[0], w[0]], [7.0, 11.0, 10.0, 20.0])
    np.testing.assert_allclose(B.corners(cy, cx, h, w).numpy(), [[2.0, 1.0, 12.0, 21.0]])


def test_level_shapes_round_up():
    assert B.level_shapes(100) == [(13, 13), (7, 7), (4, 4), (2, 2), (1, 1)]
    assert B.anchors_per_location() == 9
    assert B.anchors_per_location((1.0,), 2) == 2


@pytest.mark.parametrize("size", [64, 100, 512])
def test_anchor_count_is_cells_times_nine(size):
    cells = sum(math.ceil(size / s) ** 2 for s in (8, 16, 32, 64, 128))
    assert B.generate_anchors(size).shape == (cells * 9, 4)


def test_first_anchors_by_hand():
    anchors = B.generate_anchors(64).numpy()
    half_h, half_w = 16.0 * math.sqrt(2.0), 16.0 / math.sqrt(2.0)  # size 32, width/height 0.5
    np.testing.assert_allclose(anchors[0], [4 - half_h, 4 - half_w, 4 + half_h, 4 + half_w],
                               rtol=1e-6)
    np.testing.assert_allclose(anchors[1], [-12.0, -12.0, 20.0, 20.0])  # ratio 1
    cy, cx, h, w = (t.numpy() for t in B.center_size(tf.constant(anchors[:9])))
    np.testing.assert_allclose(w / h, [0.5, 1.0, 2.0] * 3, rtol=1e-6)  # ratio = width / height
    np.testing.assert_allclose(np.sqrt(h * w), np.repeat(32.0 * 2.0 ** (np.arange(3) / 3), 3),
                               rtol=1e-6)  # scale-major, ratio-minor; area kept
    np.testing.assert_allclose([cy, cx], np.full([2, 9], 4.0), atol=1e-5)
    np.testing.assert_allclose(anchors[64 * 9 + 1], [-24.0, -24.0, 40.0, 40.0])  # stride 16


def test_anchor_order_is_level_row_column_type():
    anchors = B.generate_anchors(64)
    cy, cx, _, _ = B.center_size(anchors[: 8 * 8 * 9])
    grid_y = tf.reshape(cy, [8, 8, 9]).numpy()  # the reshape a head output gets
    grid_x = tf.reshape(cx, [8, 8, 9]).numpy()
    centers = (np.arange(8) + 0.5) * 8
    np.testing.assert_allclose(grid_y, np.broadcast_to(centers[:, None, None], [8, 8, 9]),
                               atol=1e-5)
    np.testing.assert_allclose(grid_x, np.broadcast_to(centers[None, :, None], [8, 8, 9]),
                               atol=1e-5)


def test_encode_known_values_and_decode_back():
    anchor = tf.constant([SQUARE])
    box = tf.constant([[2.0, 1.0, 12.0, 21.0]])  # center (7, 11), size 10 x 20
    deltas = B.encode(box, anchor)
    np.testing.assert_allclose(deltas.numpy(), [[2.0, 6.0, 0.0, 5.0 * math.log(2.0)]],
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(B.decode(deltas, anchor).numpy(), box.numpy(), rtol=1e-6)


def test_encode_decode_are_inverses():
    anchors = B.generate_anchors(128)
    rng = np.random.default_rng(0)
    centers = rng.uniform(0, 128, [anchors.shape[0], 2])
    sizes = rng.uniform(2, 200, [anchors.shape[0], 2])
    boxes = tf.constant(np.concatenate([centers - sizes / 2, centers + sizes / 2], 1), tf.float32)
    np.testing.assert_allclose(B.decode(B.encode(boxes, anchors), anchors).numpy(),
                               boxes.numpy(), atol=1e-3)
    deltas = tf.constant(rng.normal(0, 2, [anchors.shape[0], 4]), tf.float32)
    np.testing.assert_allclose(B.encode(B.decode(deltas, anchors), anchors).numpy(),
                               deltas.numpy(), atol=1e-3)


def test_decode_clips_huge_deltas_and_encode_of_padding_is_finite():
    decoded = B.decode(tf.constant([[0.0, 0.0, 1e4, 1e4]]), tf.constant([SQUARE]))
    np.testing.assert_allclose(B.center_size(decoded)[2].numpy(), [10.0 * 1000.0 / 16.0],
                               rtol=1e-5)
    assert np.all(np.isfinite(B.encode(tf.constant([PAD]), tf.constant([SQUARE])).numpy()))


# a0 = gt g0 exactly; a1 overlaps g0 with IoU 60/140 (ignored); a2 far from g0;
# a3 has IoU 0.25 with g1 (forced); a4 overlaps g0 with IoU 80/120 (positive).
ANCHORS = tf.constant([SQUARE, [0.0, 4.0, 10.0, 14.0], [0.0, 20.0, 10.0, 30.0],
                       [50.0, 50.0, 60.0, 60.0], [0.0, 2.0, 10.0, 12.0]])
G1 = [50.0, 50.0, 70.0, 70.0]
GT_BOXES = tf.constant([[SQUARE, G1, PAD], [[0.0, 20.0, 10.0, 30.0], PAD, PAD]])
GT_CLASSES = tf.constant([[3, 1, -1], [0, -1, -1]])


def test_match_positives_ignored_negatives_and_forced():
    result = B.match_anchors(ANCHORS, GT_BOXES, GT_CLASSES)
    np.testing.assert_array_equal(result["labels"].numpy(),
                                  [[3, -2, -1, 1, 3], [-1, -1, 0, -1, -1]])
    np.testing.assert_array_equal(result["matched_gt_index"].numpy(),
                                  [[0, -1, -1, 1, 0], [-1, -1, 0, -1, -1]])
    anchors = ANCHORS.numpy()
    np.testing.assert_array_equal(
        result["matched_boxes"].numpy(),
        [[SQUARE, anchors[1], anchors[2], G1, SQUARE], anchors])
    assert result["labels"].dtype == tf.int32 and result["matched_gt_index"].dtype == tf.int32


def test_match_without_forcing_leaves_low_iou_gt_unmatched():
    result = B.match_anchors(ANCHORS, GT_BOXES, GT_CLASSES, force_match_each_gt=False)
    np.testing.assert_array_equal(result["labels"].numpy()[0], [3, -2, -1, -1, 3])


def test_padded_gt_never_matches_even_on_top_of_an_anchor():
    result = B.match_anchors(ANCHORS, tf.constant([[SQUARE]]), tf.constant([[-1]]))
    np.testing.assert_array_equal(result["labels"].numpy(), [[-1] * 5])


@pytest.mark.parametrize("gt_boxes, gt_classes", [
    (np.full([2, 3, 4], -1.0, np.float32), np.full([2, 3], -1, np.int32)),  # all padding
    (np.zeros([2, 0, 4], np.float32), np.zeros([2, 0], np.int32)),  # no gt rows at all
    (np.array([[[200.0, 200.0, 210.0, 210.0]]] * 2, np.float32), np.full([2, 1], 2)),  # far
])
def test_match_empty_images_are_all_negative(gt_boxes, gt_classes):
    result = B.match_anchors(ANCHORS, tf.constant(gt_boxes), tf.constant(gt_classes))
    np.testing.assert_array_equal(result["labels"].numpy(), np.full([2, 5], -1))
    np.testing.assert_array_equal(result["matched_gt_index"].numpy(), np.full([2, 5], -1))
    np.testing.assert_array_equal(result["matched_boxes"].numpy(), [ANCHORS.numpy()] * 2)


def test_match_rejects_inverted_thresholds():
    with pytest.raises(ValueError, match="negative_iou"):
        B.match_anchors(ANCHORS, GT_BOXES, GT_CLASSES, positive_iou=0.3, negative_iou=0.4)


def test_to_original_pixels_inverts_resize_for_model():
    from detkeeper.data.augment import resize_for_model

    original = tf.constant([[10.0, 20.0, 90.0, 150.0], [0.0, 0.0, 120.0, 200.0]])
    _, resized, _, factors = resize_for_model(tf.zeros([120, 200, 3]), original, 64)
    back = B.to_original_pixels(resized[None], factors[None], tf.constant([[120, 200]]))
    np.testing.assert_allclose(back.numpy()[0], original.numpy(), rtol=1e-5)


def test_to_original_pixels_is_bit_identical_to_the_numpy_mapping_it_replaced():
    """Evaluation used to map boxes out in numpy (``/ tile(scales)``, ``np.clip`` to the sizes):
    ledger metrics and export verification compare exactly, so the shared TF version must give
    the same float32 bits, padding (-1), zeros and out-of-image boxes included."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(-20.0, 300.0, [3, 50, 4]).astype(np.float32)
    boxes[0, :5] = -1.0
    boxes[1, :5] = 0.0
    scales = rng.uniform(0.1, 3.0, [3, 2]).astype(np.float32)
    sizes = np.array([[480, 640], [37, 1], [128, 128]], np.int32)
    unclipped = boxes / np.tile(scales, 2)[:, None, :]
    clipped = np.clip(unclipped, 0.0, np.tile(sizes, 2)[:, None, :].astype(np.float32))
    for got, want in ((B.to_original_pixels(boxes, scales, sizes), clipped),
                      (B.to_original_pixels(boxes, scales), unclipped)):
        assert got.dtype == tf.float32
        np.testing.assert_array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def _nms_inputs():
    boxes = tf.constant([[SQUARE, [0.0, 0.0, 10.0, 11.0], [20.0, 20.0, 30.0, 30.0],
                          [40.0, 40.0, 50.0, 50.0]]] * 2)
    scores = tf.constant([[[0.9, 0.0], [0.8, 0.0], [0.7, 0.6], [0.04, 0.0]],
                          [[0.0, 0.0], [0.0, 0.3], [0.0, 0.0], [0.0, 0.0]]])
    return boxes, scores


def test_nms_suppresses_duplicates_per_class_and_pads_with_class_minus_one():
    result = B.batched_nms(*_nms_inputs(), max_detections=5)
    np.testing.assert_array_equal(result["num_detections"].numpy(), [3, 1])
    np.testing.assert_allclose(result["scores"].numpy(),
                               [[0.9, 0.7, 0.6, 0, 0], [0.3, 0, 0, 0, 0]], rtol=1e-6)
    # the 0.8 duplicate of box 0 is suppressed, box 2 survives in both classes, 0.04 < threshold
    np.testing.assert_array_equal(result["classes"].numpy(),
                                  [[0, 0, 1, -1, -1], [1, -1, -1, -1, -1]])
    np.testing.assert_allclose(result["boxes"].numpy()[0, :3],
                               [SQUARE, [20.0, 20.0, 30.0, 30.0], [20.0, 20.0, 30.0, 30.0]])
    np.testing.assert_array_equal(result["boxes"].numpy()[0, 3:], np.zeros([2, 4]))
    assert result["classes"].dtype == tf.int32 and result["num_detections"].dtype == tf.int32


def test_nms_clips_to_the_image_and_limits_per_class():
    boxes = tf.constant([[[-5.0, -5.0, 10.0, 120.0], [60.0, 60.0, 70.0, 70.0]]])
    scores = tf.constant([[[0.9], [0.8]]])
    clipped = B.batched_nms(boxes, scores, max_detections=3, clip_size=100)
    np.testing.assert_allclose(clipped["boxes"].numpy()[0, 0], [0.0, 0.0, 10.0, 100.0])
    limited = B.batched_nms(boxes, scores, max_detections=3, max_per_class=1)
    np.testing.assert_array_equal(limited["num_detections"].numpy(), [1])


def _graph_calls_match_eager(function, signature, *inputs):
    graph = tf.function(function, input_signature=signature)
    for batch in (1, len(inputs[0])):
        sliced = [x[:batch] for x in inputs]
        got, want = graph(*sliced), function(*sliced)
        tf.nest.map_structure(  # graph rewrites may reorder float ops: allow rounding
            lambda g, w: np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5),
            got, want)


def test_every_function_runs_in_graph_mode_with_unknown_batch():
    boxes_spec = tf.TensorSpec([None, None, 4], tf.float32)
    boxes, scores = _nms_inputs()
    anchors = B.generate_anchors(32, strides=(8, 16))
    batched_anchors = tf.tile(anchors[None], [2, 1, 1])
    deltas = tf.random.stateless_normal(batched_anchors.shape, seed=[1, 2])
    _graph_calls_match_eager(B.iou, [boxes_spec, boxes_spec], boxes, GT_BOXES)
    _graph_calls_match_eager(B.giou, [boxes_spec] * 2, boxes, boxes[::-1])
    _graph_calls_match_eager(B.area, [boxes_spec], boxes)
    pairs_spec = tf.TensorSpec([None, 2], tf.float32)
    _graph_calls_match_eager(B.to_original_pixels, [boxes_spec, pairs_spec, pairs_spec], boxes,
                             tf.fill([2, 2], 0.5), tf.fill([2, 2], 30.0))
    _graph_calls_match_eager(lambda b: B.corners(*B.center_size(b)), [boxes_spec], boxes)
    _graph_calls_match_eager(B.encode, [boxes_spec] * 2, batched_anchors, batched_anchors + 1.0)
    _graph_calls_match_eager(lambda d: B.decode(d, anchors), [boxes_spec], deltas)
    _graph_calls_match_eager(lambda b, c: B.match_anchors(ANCHORS, b, c),
                             [boxes_spec, tf.TensorSpec([None, None], tf.int32)],
                             GT_BOXES, GT_CLASSES)
    _graph_calls_match_eager(lambda b, s: B.batched_nms(b, s, max_detections=5, clip_size=32),
                             [boxes_spec, tf.TensorSpec([None, None, 2], tf.float32)],
                             boxes, scores)
    np.testing.assert_array_equal(tf.function(lambda: B.generate_anchors(32))().numpy(),
                                  B.generate_anchors(32).numpy())


def test_training_side_functions_compile_with_xla():
    """Keras turns on XLA for ``fit`` on a GPU (``jit_compile="auto"``); NMS is exempt."""
    anchors = B.generate_anchors(32, strides=(8, 16))

    @tf.function(jit_compile=True)
    def targets(gt_boxes, gt_classes):
        matched = B.match_anchors(anchors, gt_boxes, gt_classes)
        deltas = B.encode(matched["matched_boxes"], anchors)
        return matched["labels"], B.giou(B.decode(deltas, anchors), matched["matched_boxes"])

    labels, overlap = targets(GT_BOXES * 0.5, GT_CLASSES)
    eager = B.match_anchors(anchors, GT_BOXES * 0.5, GT_CLASSES)["labels"]
    np.testing.assert_array_equal(labels.numpy(), eager.numpy())
    np.testing.assert_allclose(overlap.numpy(), np.ones(overlap.shape), atol=1e-5)
