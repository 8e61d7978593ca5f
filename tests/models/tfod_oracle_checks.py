"""Comparing a TF OD API family against the oracle (``../shared/data/tfod-oracle``): its input, its
NMS settings, and the detection and serving-graph checks every family's zoo test makes.

Frames: detkeeper's boxes are in model-input pixels; the API's detections are clipped to the resized
content (``true_image_shapes``, the window detkeeper clips to as well) and normalised to it, and its
raw boxes are normalised to the model input. Where the model stretches the photo the three frames coincide.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from detkeeper.data import augment
from detkeeper.data.label_map import LabelMap
from detkeeper.export.serving import DetectionModule, ServingSettings
from detkeeper.models import Postprocess
from detkeeper.models.ssd.zoo_checkpoint import restore_zoo_checkpoint
from detkeeper.tfod.pbtxt import parse_text_format

DETECTION_TOLERANCE = 1e-4  # normalised boxes and scores; order may differ only among scores this close


def checkpoint_prefix(folder) -> str:
    return str(folder / "checkpoint" / "ckpt-0")


def read_reference(folder) -> dict:
    with np.load(folder / "reference.npz") as npz:
        return {key: npz[key] for key in npz.files}


def model_input(model, photo: np.ndarray) -> tf.Tensor:
    """``[1, S, S, 3]`` float32 0..255: the photo as detkeeper's pipeline resizes it for `model` (the
    family's own resize and padding)."""
    canvas, _, _, _ = augment.resize_for_model(tf.constant(photo, tf.float32), tf.zeros([0, 4]), model.image_size,
                                               augment.Resize.of(model))
    return canvas[None]


@dataclasses.dataclass
class ZooRun:
    """A family's model with the fixture's checkpoint restored, and what it computed on the photo."""

    model: object
    reference: dict
    outcomes: list
    images: tf.Tensor
    feature_maps: list
    box_encodings: np.ndarray
    class_logits: np.ndarray


def run_restored(model, folder) -> ZooRun:
    """Restore `folder`'s checkpoint into `model` (all of it) and run it once on the fixture's photo."""
    outcomes = restore_zoo_checkpoint(model, checkpoint_prefix(folder))
    reference = read_reference(folder)
    images = model_input(model, reference["input_image"])
    feature_maps = model.feature_maps(images)
    box_encodings, class_logits = model.head(feature_maps)
    return ZooRun(model, reference, outcomes, images, [f.numpy() for f in feature_maps], box_encodings.numpy(),
                  class_logits.numpy())


def nms_settings(folder) -> Postprocess:
    """The fixture config's ``batch_non_max_suppression``."""
    config = parse_text_format((folder / "pipeline.config").read_text(), "pipeline.config")
    nms = config["model"][0]["ssd"][0]["post_processing"][0]["batch_non_max_suppression"][0]
    assert nms["max_detections_per_class"] == nms["max_total_detections"]  # what batched_nms takes
    return Postprocess(float(nms["score_threshold"][0]), float(nms["iou_threshold"][0]),
                       int(nms["max_total_detections"][0]))


def _content(reference: dict) -> np.ndarray:
    """``[h, w, h, w]``: the resized photo inside the model input, the API's clip window."""
    height, width = reference["true_image_shapes"][0][:2]
    return np.array([height, width, height, width], np.float32)


def anchor_tolerances(tolerance, anchor_indices: np.ndarray) -> np.ndarray:
    """The tolerance of each of the API's detections, by the anchor it came from: `tolerance` is one
    number, or one per anchor (a family whose last maps only agree to float32's spread there)."""
    tolerance = np.asarray(tolerance, np.float64)
    indices = anchor_indices.astype(int)
    return tolerance[indices] if tolerance.ndim else np.full(indices.shape, float(tolerance))


def assert_within(got, expected, tolerances, what: str) -> None:
    """``|got - expected| <= tolerances`` everywhere (`tolerances` broadcast), naming `what` otherwise."""
    difference = np.abs(np.asarray(got, np.float64) - np.asarray(expected, np.float64))
    beyond = difference > tolerances
    assert not beyond.any(), f"{what}: {beyond.sum()} values beyond tolerance, max difference {difference.max():.3g}"


def assert_detections_match(model, outputs: dict, reference: dict, settings: Postprocess, monkeypatch,
                            tolerance=DETECTION_TOLERANCE) -> None:
    """``det/*`` of ``model.postprocess`` with the photo's content window: sigmoid scores without the
    background slot, the config's NMS, boxes in the API's frame, classes 0-based; each detection is
    the API's at its rank, or one tied with it."""
    monkeypatch.setattr(model, "score_threshold", settings.score_threshold)
    monkeypatch.setattr(model, "iou_threshold", settings.iou_threshold)
    monkeypatch.setattr(model, "max_detections", settings.max_detections)
    content = _content(reference)
    window = tf.constant([[0.0, 0.0, *content[:2]]])
    detections = model.postprocess({key: tf.constant(value) for key, value in outputs.items()}, window)
    count = int(detections["num_detections"][0])
    assert count == int(reference["det/num_detections"][0])
    boxes = detections["boxes"][0, :count].numpy() / content
    scores = detections["scores"][0, :count].numpy()
    classes = detections["classes"][0, :count].numpy()
    expected_boxes = reference["det/detection_boxes"][0, :count]
    expected_scores = reference["det/detection_scores"][0, :count]
    expected_classes = reference["det/detection_classes"][0, :count].astype(int)
    tolerances = anchor_tolerances(tolerance, reference["det/detection_anchor_indices"][0, :count])
    assert_within(scores, expected_scores, tolerances, "detection scores")
    unmatched = list(range(count))
    for rank in range(count):
        candidates = [j for j in unmatched if abs(expected_scores[j] - scores[rank]) <= tolerances[j]
                      and expected_classes[j] == classes[rank]
                      and np.abs(expected_boxes[j] - boxes[rank]).max() <= tolerances[j]]
        assert candidates, (rank, classes[rank], scores[rank], boxes[rank])
        unmatched.remove(rank if rank in candidates else candidates[0])


def assert_serving_graph_matches(model, reference: dict, settings: Postprocess,
                                 tolerance=DETECTION_TOLERANCE) -> None:
    """detkeeper's SavedModel graph (``DetectionModule``: resize, model, NMS in the graph) on the
    uint8 photo gives the API exporter's ``serving_default`` outputs (``export/*``): the same
    detections with label-map ids (1-based), boxes normalised to the photo, and the anchor each
    came from. `tolerance` as :func:`assert_detections_match`'s."""
    labels = LabelMap.from_names([str(class_id) for class_id in range(1, model.num_classes + 1)])
    module = DetectionModule(model, labels, ServingSettings(settings.score_threshold, settings.iou_threshold,
                                                            settings.max_detections), "{}")
    answered = {key: value.numpy()[0] for key, value in module(tf.constant(reference["input_image"][None])).items()}
    expected = {key[len("export/"):]: value[0] for key, value in reference.items() if key.startswith("export/")}
    count = int(answered["num_detections"])
    assert count == int(expected["num_detections"])
    tolerances = anchor_tolerances(tolerance, expected["detection_anchor_indices"][:count])
    per_anchor = anchor_tolerances(tolerance, np.arange(len(expected["raw_detection_boxes"])))[:, None]
    assert_within(answered["detection_scores"][:count], expected["detection_scores"][:count], tolerances,
                  "detection_scores")
    # The API's raw boxes are normalised to the model input, detkeeper's to the photo.
    assert_within(answered["raw_detection_boxes"], expected["raw_detection_boxes"] * model.image_size
                  / _content(reference), per_anchor, "raw_detection_boxes")
    # Score columns as the API's: the background first where the model has one, then the classes.
    if "raw_detection_scores" in expected:  # not kept in every fixture
        assert_within(answered["raw_detection_scores"], expected["raw_detection_scores"], per_anchor,
                      "raw_detection_scores")
    same_rank = (answered["detection_classes"][:count] == expected["detection_classes"][:count])
    close = np.abs(answered["detection_scores"][:count, None] - expected["detection_scores"][None, :count])
    ties = (close <= tolerances[None, :]).sum(axis=1) > 1  # ranks whose order NMS may swap
    assert (same_rank | ties).all(), np.flatnonzero(~(same_rank | ties))
    keep = same_rank & ~ties
    assert_within(answered["detection_boxes"][:count][keep], expected["detection_boxes"][:count][keep],
                  tolerances[keep, None], "detection_boxes")
    assert_within(answered["detection_multiclass_scores"][:count][keep],
                  expected["detection_multiclass_scores"][:count][keep], tolerances[keep, None],
                  "detection_multiclass_scores")
    np.testing.assert_array_equal(answered["detection_anchor_indices"][:count][keep],
                                  expected["detection_anchor_indices"][:count][keep])
