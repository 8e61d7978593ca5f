"""The export's outputs are the TF OD API exporter's eight, with its dtypes, shapes and meanings:
checked against what the API's own export answered (``../shared/data/tfod-oracle``) and, for every
registered family, against the anchors the detections came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.models import list_models
from detkeeper.run.layout import RunDirectory
from quick_sizes import quick

ORACLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tfod-oracle"

#: Each output's shape in the TF OD API's terms: B batch, N max detections, A anchors, C score columns.
LAYOUT = {
    "detection_boxes": ("B", "N", 4),
    "detection_scores": ("B", "N"),
    "detection_classes": ("B", "N"),
    "num_detections": ("B",),
    "raw_detection_boxes": ("B", "A", 4),
    "raw_detection_scores": ("B", "A", "C"),
    "detection_multiclass_scores": ("B", "N", "C"),
    "detection_anchor_indices": ("B", "N"),
}


def _shape(layout: tuple, dims: dict) -> tuple:
    return tuple(dims.get(dim, dim) for dim in layout)


def _oracle_exports() -> dict[str, dict[str, np.ndarray]]:
    """Per oracle model: its ``export/*`` outputs, anchors and logits (the folders that have an export)."""
    if not ORACLE.is_dir():
        pytest.skip("../shared/data/tfod-oracle not found: the TF OD API's reference outputs sit beside the "
                    "repository in CI and developer checkouts")
    found = {}
    for path in sorted(ORACLE.glob("*/reference.npz")):
        with np.load(path) as arrays:
            if "export/detection_boxes" in arrays.files:
                found[path.parent.name] = {key: arrays[key] for key in arrays.files
                                           if key.startswith("export/") or key.startswith("raw/anchors")
                                           or key == "raw/class_predictions_with_background"}
    assert found, f"{ORACLE}: no reference.npz with export/* outputs"
    return found


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def test_the_layout_is_what_the_tfod_api_exporter_returns():
    """The API's serving_default outputs (exporter_lib_v2 on SSDMetaArch): every key float32, the
    shapes of LAYOUT; score columns include the background slot only where the model has one."""
    exports = _oracle_exports()
    seen = set()
    for name, arrays in exports.items():
        outputs = {key[len("export/"):]: value for key, value in arrays.items() if key.startswith("export/")}
        seen |= set(outputs)
        logits = arrays["raw/class_predictions_with_background"][0]
        dims = {"B": 1, "N": outputs["detection_scores"].shape[1], "A": len(arrays["raw/anchors"]),
                "C": logits.shape[-1]}
        for key, value in outputs.items():
            assert key in LAYOUT, f"{name}: the API returned {key}, which LAYOUT does not know"
            assert value.dtype == np.float32, (name, key, value.dtype)
            assert value.shape == _shape(LAYOUT[key], dims), (name, key, value.shape)
        # Meanings: the anchor's scores (sigmoid of its logits, background slot included when there is one),
        # the detection's score in its class's column, and integer anchor indices carried as float32.
        count = int(outputs["num_detections"][0])
        anchors = outputs["detection_anchor_indices"][0, :count]
        assert np.array_equal(anchors, np.round(anchors)) and anchors.min() >= 0 and anchors.max() < dims["A"]
        anchors = anchors.astype(np.int64)
        multiclass = outputs["detection_multiclass_scores"][0, :count]
        np.testing.assert_allclose(multiclass, _sigmoid(logits[anchors]), atol=1e-6)
        background = 1 if name != "ssd_efficientdet_d0_512" else 0  # add_background_class: false there
        columns = outputs["detection_classes"][0, :count].astype(np.int64) - 1 + background
        np.testing.assert_array_equal(multiclass[np.arange(count), columns], outputs["detection_scores"][0, :count])
        if "raw_detection_scores" in outputs:
            np.testing.assert_allclose(outputs["raw_detection_scores"][0], _sigmoid(logits), atol=1e-6)
        if name != "ssd_efficientdet_d0_512":  # stretched input: the model's frame is the image's
            raw = np.clip(outputs["raw_detection_boxes"][0, anchors], 0.0, 1.0)
            np.testing.assert_allclose(raw, outputs["detection_boxes"][0, :count], atol=1e-6)
    assert seen == set(LAYOUT)


def _check_outputs(outputs: dict, label_map: LabelMap, dims: dict, background: bool = False) -> None:
    """`outputs` (numpy) have LAYOUT's keys, dtypes and shapes (C + 1 score columns, the background's
    first, with `background`), and each detection is its anchor's."""
    assert set(outputs) == set(LAYOUT)
    for key, value in outputs.items():
        assert value.dtype == np.float32, (key, value.dtype)
        assert value.shape == _shape(LAYOUT[key], {**dims, "C": dims["C"] + background}), (key, value.shape, dims)
    columns_of_ids = {class_id: column + background for column, class_id in enumerate(label_map.ids)}
    for row in range(dims["B"]):
        count = int(outputs["num_detections"][row])
        anchors = outputs["detection_anchor_indices"][row]
        assert np.array_equal(anchors, np.round(anchors)) and (anchors >= 0).all() and (anchors < dims["A"]).all()
        kept = anchors[:count].astype(np.int64)
        multiclass = outputs["detection_multiclass_scores"][row]
        np.testing.assert_array_equal(multiclass[:count], outputs["raw_detection_scores"][row, kept])
        columns = [columns_of_ids[int(class_id)] for class_id in outputs["detection_classes"][row, :count]]
        np.testing.assert_array_equal(multiclass[np.arange(count), columns], outputs["detection_scores"][row, :count])
        raw = np.clip(outputs["raw_detection_boxes"][row, kept], 0.0, 1.0)
        np.testing.assert_allclose(raw, outputs["detection_boxes"][row, :count], atol=2e-6)
        assert not anchors[count:].any() and not multiclass[count:].any()  # padding rows are 0, as the API's


def _anchors_of(model) -> int:
    boxes, _ = model.decode_boxes_and_scores(model(tf.zeros([1, model.image_size, model.image_size, 3]),
                                                   training=False))
    return int(boxes.shape[1])


def _images(shapes_dataset: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two shapes images as one batch, and one 170x90 image (its canvas is mostly zero padding)."""
    paths = sorted((shapes_dataset / "JPEGImages").glob("*val*"))[:2]
    pair = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in paths])
    wide = np.asarray(Image.fromarray(pair[0]).resize((170, 90)))[None]
    return pair, wide


def test_the_exported_signatures_return_the_tfod_api_outputs(exported, trained_run, shapes_dataset):
    restored = restore_run_checkpoint(RunDirectory(trained_run))
    loaded = tf.saved_model.load(str(exported.saved_model_dir))
    dims = {"N": exported.metadata["thresholds"]["max_detections"], "A": _anchors_of(restored.model),
            "C": restored.label_map.num_classes}
    assert exported.metadata["outputs"] == list(LAYOUT)
    assert exported.metadata["score_columns"] == restored.label_map.ids
    assert "0: the background, first, for TF OD API models" in exported.metadata["anchor_convention"]
    pair, wide = _images(shapes_dataset)
    for images in (pair, wide):
        outputs = {key: value.numpy() for key, value in
                   loaded.signatures["serving_default"](input_tensor=tf.constant(images)).items()}
        _check_outputs(outputs, restored.label_map, {**dims, "B": len(images)})
        assert outputs["num_detections"].min() > 0  # the trained run's detections are real ones
    encoded = [tf.io.encode_png(image).numpy() for image in pair]
    outputs = {key: value.numpy() for key, value in
               loaded.signatures["encoded_image_string_tensor"](input_tensor=tf.constant(encoded)).items()}
    _check_outputs(outputs, restored.label_map, {**dims, "B": 2})
    for name in ("serving_default", "encoded_image_string_tensor", "tf_example"):
        assert set(loaded.signatures[name].structured_outputs) == set(LAYOUT), name


def _family_config(name: str):
    from detkeeper.config.schema import BackboneConfig, ModelConfig

    config = ModelConfig(name=name, image_size=128, backbone=BackboneConfig(name="tiny", weights="none"))
    if name.startswith("hub_"):
        pytest.importorskip("keras_hub", reason=f"{name} needs keras-hub: pip install 'detkeeper[hub]'")
        config = dataclasses.replace(config, head=dataclasses.replace(config.head, convs=2))
    return quick(config)


@pytest.mark.parametrize("name", list_models())
def test_every_family_says_which_anchor_each_detection_came_from(name, shapes_dataset):
    """Untrained, with score threshold 0: NMS keeps the full 50 per image, among many equal scores
    (the padding's anchors all score alike), and the detections are still the ones ``detect`` keeps
    with the image's content window."""
    import keras

    from detkeeper.export.serving import DetectionModule, ServingSettings
    from detkeeper.models import boxes as box_ops
    from detkeeper.models import build_model

    keras.utils.set_random_seed(0)
    label_map = LabelMap([LabelMapItem(2, "a", "a"), LabelMapItem(5, "b", "b"), LabelMapItem(9, "c", "c")])
    model = build_model(_family_config(name), label_map.num_classes)
    settings = ServingSettings(score_threshold=0.0, iou_threshold=0.5, max_detections=50)
    module = DetectionModule(model, label_map, settings, "{}")
    dims = {"N": 50, "A": _anchors_of(model), "C": 3}
    pair, wide = _images(shapes_dataset)
    for images in (pair, wide):
        outputs = {key: value.numpy() for key, value in module(tf.constant(images)).items()}
        _check_outputs(outputs, label_map, {**dims, "B": len(images)}, background=model.BACKGROUND_CLASS)
        assert (outputs["num_detections"] == 50).all()
    # The detections themselves are batched_nms's, unchanged: the same scores and classes in the same
    # order, up to float32 rounding: the traced graph may fuse operations eager mode runs apart
    # (oneDNN's swish, in EfficientDet, differs from x * sigmoid(x) in the last bit), which may
    # swap detections whose scores tie within it.
    canvas, factors, size = module._preprocess_one(tf.constant(wide[0]))
    model.score_threshold, model.iou_threshold, model.max_detections = 0.0, 0.5, 50
    found = model.detect(canvas[None], box_ops.content_windows(factors[None], size[None]))
    scores = found["scores"][0].numpy()
    np.testing.assert_allclose(outputs["detection_scores"][0], scores, rtol=1e-6, atol=0)
    same = outputs["detection_classes"][0] == np.array(label_map.ids, np.float32)[found["classes"][0].numpy()]
    tied = (np.abs(scores[:, None] - scores[None, :]) <= 1e-6 * scores[:, None]).sum(axis=1) > 1
    assert (same | tied).all(), np.flatnonzero(~(same | tied))


def _row(**changes) -> dict:
    """One image's detections as the fresh process reports them: two, from anchors 3 and 1 of 5."""
    row = {"num_detections": 2.0, "boxes": [[0.0, 0.1, 0.5, 0.6], [0.2, 0.2, 0.4, 1.0]], "scores": [0.75, 0.5],
           "classes": [5.0, 2.0], "anchor_indices": [3.0, 1.0], "multiclass_scores": [[0.25, 0.75], [0.5, 0.125]],
           "raw_scores_of_anchors": [[0.25, 0.75], [0.5, 0.125]],
           "raw_boxes_of_anchors": [[-0.1, 0.1, 0.5, 0.6], [0.2, 0.2, 0.4, 1.3]], "padding_zero": True}
    return {**row, **changes}


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"anchor_indices": [3.0, 5.0]}, "not whole anchor numbers below 5"),
    ({"anchor_indices": [3.5, 1.0]}, "not whole anchor numbers"),
    ({"raw_scores_of_anchors": [[0.25, 0.75], [0.5, 0.25]]}, "not the raw_detection_scores of the detections' anchors"),
    ({"classes": [2.0, 5.0]}, "not the detections' anchors' scores for their classes"),
    ({"classes": [7.0, 2.0]}, "class id 7 is not in the label map"),
    ({"raw_boxes_of_anchors": [[0.0, 0.1, 0.5, 0.6], [0.3, 0.2, 0.4, 1.0]]}, "differ from their anchors' raw"),
    ({"padding_zero": False}, "not 0 past num_detections"),
])
def test_verification_finds_detections_that_are_not_their_anchors(changes, problem):
    from detkeeper.export.verify import _anchor_problem

    label_map = LabelMap([LabelMapItem(2, "a", "a"), LabelMapItem(5, "b", "b")])
    found = _anchor_problem(_row(**changes), label_map, num_anchors=5, background_columns=0)
    assert found is None if problem is None else problem in found, found


def test_verification_finds_missing_outputs_and_wrong_shapes():
    from detkeeper.export.verify import _output_problems

    label_map = LabelMap([LabelMapItem(2, "a", "a"), LabelMapItem(5, "b", "b")])
    dims = {"B": 1, "N": 2, "A": 5, "C": 2}
    layout = {key: ["float32", list(_shape(shape, dims))] for key, shape in LAYOUT.items()}
    answered = {"output_layouts": {"call": layout}, "call": [_row()]}
    assert _output_problems(answered, label_map, max_detections=2, background_columns=0) == []
    four = {key: value for key, value in layout.items() if key in ("detection_boxes", "detection_scores",
                                                                    "detection_classes", "num_detections")}
    wrong = {**layout, "detection_anchor_indices": ["int32", [1, 2]], "raw_detection_scores": ["float32", [1, 5, 3]]}
    answered.update(output_layouts={"call": four, "tf_example": wrong}, tf_example=[_row(anchor_indices=[0.0, 9.0])])
    problems = _output_problems(answered, label_map, max_detections=2, background_columns=0)
    assert problems[0].startswith("call returns detection_boxes, detection_classes, detection_scores, num_detections;")
    assert "tf_example: detection_anchor_indices not float32" in problems[1]
    assert "tf_example: raw_detection_scores has shape [1, 5, 3], expected [1, 5, 2] (B, A, C)" in problems[2]
    assert problems[3].startswith("tf_example, image 0: detection_anchor_indices [0.0, 9.0]") and len(problems) == 4


class _FourOutputExport(tf.Module):
    """A SavedModel shaped like detkeeper exports made before the raw and per-anchor outputs: one box."""

    def _detections(self, batch):
        return {"detection_boxes": tf.tile([[[0.1, 0.2, 0.5, 0.6]]], [batch, 1, 1]),
                "detection_scores": tf.fill([batch, 1], 0.9), "detection_classes": tf.fill([batch, 1], 2.0),
                "num_detections": tf.ones([batch])}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")])
    def __call__(self, input_tensor):
        return self._detections(tf.shape(input_tensor)[0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="input_tensor")])
    def encoded(self, input_tensor):
        return self._detections(tf.shape(input_tensor)[0])


def test_exports_with_only_the_four_detection_outputs_still_load_and_predict(tmp_path):
    import detkeeper

    module = _FourOutputExport()
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={
        "serving_default": module.__call__.get_concrete_function(),
        "encoded_image_string_tensor": module.encoded.get_concrete_function()})
    predictor = detkeeper.load(tmp_path / "saved_model")
    raw = predictor(np.zeros([2, 32, 48, 3], np.uint8))
    assert sorted(raw) == ["detection_boxes", "detection_classes", "detection_scores", "num_detections"]
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros([40, 80, 3], np.uint8)).save(image)
    [found] = predictor.detect_files([image])
    np.testing.assert_allclose(found.boxes, [[4.0, 16.0, 20.0, 48.0]], rtol=1e-6)
    assert found.class_ids.tolist() == [2]
