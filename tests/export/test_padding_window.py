"""A padded photo through an exported SavedModel: a TF OD API family drops the detections that lie
wholly in the padding, as ``Detector.detect`` does with the photo's content window (and as the API's
exporter does, tests/models/test_efficientdet_zoo.py), the next ones taking their places.

The SavedModel is saved as exports save it, and EfficientDet's is the one worth looking into: its
swish (``tf.nn.silu``) has a custom gradient, and saving traced a gradient function for each, 354
of a zoo D0 export's 392 functions. An export serves inference and fine-tuning reads its variables
as a checkpoint, so it saves none; nor Keras' own serving function of the detector, which nothing
calls. A quick-size EfficientDet has the same swishes in its pyramid and head."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from detkeeper.config.schema import BackboneConfig, ModelConfig
from detkeeper.data.label_map import LabelMap
from detkeeper.export.exporter import _save_saved_model
from detkeeper.export.serving import DetectionModule, ServingSettings
from detkeeper.models import boxes, build_model
from quick_sizes import quick

DETECTIONS = 50


def _wide_photo() -> np.ndarray:
    """170 x 90, so the 128 px canvas is mostly padding (content 128 x 68)."""
    rows, columns = np.mgrid[0:90, 0:170]
    noise = np.random.default_rng(0).uniform(0, 60, [90, 170, 3])
    return np.clip(np.stack([columns * 1.5, rows * 2.8, 128 + 100 * np.sin(rows / 7.0)], -1) + noise,
                   0, 255).astype(np.uint8)


def test_the_saved_model_drops_what_lies_wholly_in_the_padding_as_detect_does(tmp_path):
    keras.utils.set_random_seed(0)
    config = quick(ModelConfig(name="ssd_efficientdet", image_size=128, backbone=BackboneConfig(name="tiny",
                                                                                                weights="none")))
    model = build_model(config, 3)
    model(tf.zeros([1, 128, 128, 3]), training=False)  # never checkpointed: the SavedModel must track every layer
    model.score_threshold, model.iou_threshold, model.max_detections = 0.0, 0.5, DETECTIONS
    module = DetectionModule(model, LabelMap.from_names(["a", "b", "c"]),
                             ServingSettings(score_threshold=0.0, iou_threshold=0.5, max_detections=DETECTIONS), "{}")
    _save_saved_model(module, tmp_path / "saved_model")
    saved = saved_model_pb2.SavedModel.FromString((tmp_path / "saved_model" / "saved_model.pb").read_bytes())
    assert not saved.meta_graphs[0].graph_def.library.registered_gradients
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    detector = nodes[next(child.node_id for child in nodes[0].children if child.local_name == "model")]
    assert "_default_save_signature" not in {child.local_name for child in detector.children}
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    photo = _wide_photo()
    exported = {key: value.numpy()[0] for key, value in
                loaded.signatures["serving_default"](input_tensor=tf.constant(photo[None])).items()}

    canvas, factors, size = module._preprocess_one(tf.constant(photo))
    factors, sizes = factors[None], size[None]
    windows = boxes.content_windows(factors, sizes)
    np.testing.assert_array_equal(windows.numpy(), [[0, 0, 68, 128]])
    detected = model.detect(canvas[None], windows)
    on_canvas = model.detect(canvas[None])  # the whole canvas as window: what detkeeper exported before

    def normalized(found):
        return (boxes.to_original_pixels(found["boxes"], factors, sizes) / tf.tile(sizes, [1, 2])[:, None]).numpy()[0]

    # Untrained, the padding's anchors score high: on the canvas some detections lie wholly in it.
    assert (boxes.area(tf.constant(normalized(on_canvas))).numpy() == 0).any()
    assert int(exported["num_detections"]) == int(detected["num_detections"][0]) == DETECTIONS
    assert (boxes.area(tf.constant(exported["detection_boxes"])).numpy() > 0).all()
    # The same detections, up to float32 rounding between the traced and the eager graph (which may
    # swap detections whose scores tie within it).
    scores = detected["scores"][0].numpy()
    np.testing.assert_allclose(exported["detection_scores"], scores, rtol=1e-6, atol=0)
    tied = (np.abs(scores[:, None] - scores[None, :]) <= 1e-6 * scores[:, None]).sum(axis=1) > 1
    same = exported["detection_classes"] == detected["classes"][0].numpy() + 1
    assert (same | tied).all(), np.flatnonzero(~(same | tied))
    np.testing.assert_allclose(exported["detection_boxes"][~tied], normalized(detected)[~tied], rtol=0, atol=1e-5)
