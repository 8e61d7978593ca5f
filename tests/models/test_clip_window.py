"""NMS with a clip window, as the TF OD API post-processes: checked against the API's own function.

``tests/fixtures/tfod/clip_window/clip_window.npz`` (``synthetic/*``) holds what the API's
``post_processing.batch_multiclass_non_max_suppression`` (TF OD API e3c7e300, as the zoo configs
build it) returned for random boxes on a 64 px canvas, two images with different windows, at most
4 per class and 6 in all: each class is suppressed on the boxes as they are, then its survivors are
clipped to the window and those left empty dropped (``_clip_window_prune_boxes``), and only then
are the best 6 taken. ``make_fixture.py`` beside it rebuilds it in the oracle environment.
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.data import augment
from detkeeper.models import boxes, build_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tfod" / "clip_window" / "clip_window.npz"


@pytest.fixture(scope="module")
def synthetic() -> dict:
    with np.load(FIXTURE) as npz:
        return {key[len("synthetic/"):]: npz[key] for key in npz.files if key.startswith("synthetic/")}


def _nms(case: dict, clip_window) -> dict:
    score_threshold, iou_threshold, per_class, total = case["settings"]
    found = boxes.batched_nms(case["boxes"], case["scores"], max_detections=int(total), iou_threshold=iou_threshold,
                              score_threshold=score_threshold, max_per_class=int(per_class), clip_window=clip_window)
    return {key: value.numpy() for key, value in found.items()}


def test_nms_with_a_clip_window_is_the_apis(synthetic):
    found = _nms(synthetic, synthetic["windows"])
    np.testing.assert_array_equal(found["num_detections"], synthetic["num_detections"])
    # The second image has 5, not 6: 3 of its class-0 survivors lay in the padding and used up that
    # class's 4 places, as in the API.
    assert synthetic["num_detections"].tolist() == [6, 5]
    real = np.arange(found["scores"].shape[1])[None, :] < found["num_detections"][:, None]
    np.testing.assert_array_equal(found["boxes"], synthetic["detection_boxes"])
    np.testing.assert_array_equal(found["scores"], synthetic["detection_scores"])
    np.testing.assert_array_equal(np.where(real, found["classes"], 0), synthetic["detection_classes"])
    assert (found["classes"][~real] == -1).all()


def test_without_the_window_the_padded_detections_would_stay(synthetic):
    """The fixture matters: with the whole canvas as window (what detkeeper did), the detections differ."""
    canvas = np.tile(np.array([[0.0, 0.0, 64.0, 64.0]], np.float32), [2, 1])
    found = _nms(synthetic, canvas)
    assert found["num_detections"].tolist() == [6, 6]
    inside = boxes.area(boxes.clip_to_windows(tf.constant(found["boxes"]), synthetic["windows"])).numpy() > 0
    assert not inside.all()  # some lie wholly outside their image's window


def test_content_windows_are_the_resized_photo_inside_its_canvas():
    photo = tf.zeros([480, 640, 3])
    _, _, _, padded = augment.resize_for_model(photo, tf.zeros([0, 4]), 512, augment.Resize("pad"))
    _, _, _, stretched = augment.resize_for_model(photo, tf.zeros([0, 4]), 300, augment.Resize("stretch"))
    odd = tf.zeros([333, 517, 3])  # 512 * 333 / 517 = 329.8: the resize rounds it to 330
    _, _, _, rounded = augment.resize_for_model(odd, tf.zeros([0, 4]), 512, augment.Resize("pad"))
    windows = boxes.content_windows(tf.stack([padded, stretched, rounded]), [[480, 640], [480, 640], [333, 517]])
    np.testing.assert_array_equal(windows.numpy(), [[0, 0, 384, 512], [0, 0, 300, 300], [0, 0, 330, 512]])


def test_only_the_tfod_api_families_clip_to_the_window():
    """detkeeper's own families clip to the canvas before NMS whatever the window; an SSD family clips
    its survivors to the window, the whole canvas when none is given."""
    windows = tf.constant([[0.0, 0.0, 64.0, 128.0]])
    own = build_model(ModelConfig(name="retinanet", image_size=128, backbone=BackboneConfig(name="tiny")), 3)
    assert own.nms_clipping(windows, 1) == {"clip_size": 128}
    ssd = build_model(ModelConfig(name="ssd_mobilenet_v2_fpnlite", image_size=128,
                                  backbone=BackboneConfig(name="tiny", weights="none")), 3)
    np.testing.assert_array_equal(ssd.nms_clipping(windows, 1)["clip_window"].numpy(), windows.numpy())
    np.testing.assert_array_equal(ssd.nms_clipping(None, 2)["clip_window"].numpy(), [[0, 0, 128, 128]] * 2)
