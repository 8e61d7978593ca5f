"""TensorBoard's pictures: the sample images drawn with the detections the validation pass scored."""

from __future__ import annotations

import io
import types
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from detkeeper.data.label_map import LabelMap
from detkeeper.training.tensorboard import TensorBoardLogger
from detkeeper.visualize import class_colour

LABELS = LabelMap.from_names(["cell", "platelet"])


class _NoDetector:
    """A model whose detector must not run: the pictures come from the evaluation."""

    optimizer = types.SimpleNamespace(iterations=tf.Variable(40, dtype=tf.int64))

    def detect(self, *args, **kwargs):
        raise AssertionError("TensorBoard ran the detector again")


def _sample_batch() -> dict:
    """Two 64 px model inputs of 128 x 96 originals (factor 0.5), black."""
    return {"images": tf.zeros([2, 64, 64, 3]), "image_ids": tf.constant([b"a", b"b"]),
            "image_scales": tf.constant([[0.5, 0.5], [0.5, 0.5]])}


def _detections(boxes, scores, classes) -> dict:
    return {"boxes": np.array(boxes, np.float32), "scores": np.array(scores, np.float32),
            "classes": np.array(classes, np.int64), "num_detections": np.int32(len(scores))}


def logged_pictures(log_dir: Path) -> dict[int, list[np.ndarray]]:
    """step -> the decoded "predictions" images of the validation writer."""
    found = {}
    for path in (log_dir / "validation").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "predictions":
                    encoded = tf.make_ndarray(value.tensor)[2:]  # width, height, then one PNG per image
                    found[event.step] = [np.asarray(Image.open(io.BytesIO(data))) for data in encoded]
    return found


def _log_one_evaluation(log_dir: Path, kept: dict) -> None:
    logger = TensorBoardLogger(log_dir, sample_batch=_sample_batch(), label_map=LABELS, detections=lambda: kept)
    logger.set_model(_NoDetector())
    logger.on_train_begin()
    logger.on_epoch_end(0, {"val_mAP": 0.5, "loss": 1.0})
    logger.on_train_end()


def test_pictures_show_the_scored_detections_in_model_pixels_without_running_the_detector(tmp_path):
    kept = {  # original pixels: the model input is half their size
        "a": _detections([[20, 10, 60, 50], [0, 0, 100, 100]], [0.9, 0.1], [2, 1]),
        "b": _detections(np.zeros([0, 4]), [], []),
    }
    _log_one_evaluation(tmp_path, kept)
    pictures = logged_pictures(tmp_path)
    assert list(pictures) == [40] and len(pictures[40]) == 2
    first, second = pictures[40]
    platelet = class_colour(LABELS, 2)
    # The 0.9 platelet box [20, 10, 60, 50] is [10, 5, 30, 25] in model pixels: its left edge at x = 5.
    assert tuple(first[27, 5]) == platelet and not first[27, 2].any() and not first[27, 15].any()
    # The 0.1 candidate covering the whole image is below 0.3, not drawn: its bottom edge would be at y = 49.
    assert not first[49, 35:45].any()
    assert not second.any()  # no detections: the image as it is


def test_an_image_this_process_did_not_score_is_left_out_and_none_writes_no_picture(tmp_path):
    _log_one_evaluation(tmp_path / "one", {"b": _detections([[20, 10, 60, 50]], [0.9], [1])})
    assert [len(images) for images in logged_pictures(tmp_path / "one").values()] == [1]
    _log_one_evaluation(tmp_path / "none", {})  # a worker that is not the chief scores nothing
    assert logged_pictures(tmp_path / "none") == {}
