"""TFLite export (``detkeeper export --tflite``): float32 and int8 dynamic-range models written into the
export before it is published, run by ``tf.lite.Interpreter`` as their ``tflite.json`` says, scored by
mAP against the checkpoint; a model that fails is reported with the reason and the export goes on.

One export here (about 40 s on 2 cores, 8-40 s of it TFLite with the load); the failure tests
convert without exporting."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.cli.main import main
from detkeeper.data import augment
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.run.layout import RunDirectory


def _interpreter(path):
    """The interpreter as a user has it, straight from TensorFlow (not detkeeper's helper)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its deprecation notice in favour of ai_edge_litert
        interpreter = tf.lite.Interpreter(model_path=str(path))
    return interpreter.get_signature_runner("serving_default")


def test_export_with_tflite_writes_verified_float32_and_int8_models(trained_run, shapes_dataset, tmp_path, capsys,
                                                                    monkeypatch):
    from detkeeper.export import exporter

    in_staging = {}
    publish = exporter._publish

    def spy(staging, out_dir):  # what the hidden staging folder held at the moment of the rename
        in_staging["tflite"] = sorted(path.name for path in (staging / "tflite").iterdir())
        in_staging["out_existed"] = out_dir.exists()
        publish(staging, out_dir)

    monkeypatch.setattr(exporter, "_publish", spy)
    out = tmp_path / "export"
    assert main(["export", str(trained_run), "--out", str(out), "--tflite"]) == 0
    printed = capsys.readouterr().out
    assert in_staging == {"tflite": ["model_float32.tflite", "model_int8_dynamic.tflite", "tflite.json"],
                          "out_existed": False}
    assert "float32 (not quantized): tflite/model_float32.tflite" in printed
    assert "dynamic-range int8 (int8 weights, float32 activations): tflite/model_int8_dynamic.tflite" in printed
    assert "tflite/" in printed and "did not" not in printed

    report = json.loads((out / "verification.json").read_text())["tflite"]
    assert report == json.loads((out / "tflite" / "tflite.json").read_text())
    float32, int8 = report["models"]["float32"], report["models"]["int8_dynamic"]
    assert float32["status"] == int8["status"] == "verified"
    assert int8["quantization"] == "dynamic-range int8 (int8 weights, float32 activations)"
    assert report["contract"]["int8_dynamic"].startswith("dynamic-range quantization: weights int8, activations float32")
    assert report["map_checkpoint"] == pytest.approx(
        json.loads((out / "verification.json").read_text())["map_checkpoint"], abs=1e-9)
    # Measured: drop 0.0, boxes within 2e-7 of the input size, scores within 1e-6; bound = the
    # SavedModel's own mAP tolerance.
    assert report["map_checkpoint"] > 0.3 and abs(float32["map_drop"]) <= 1e-3
    assert float32["first_difference"] is None and float32["max_score_difference"] <= 1e-4
    # int8 dynamic range: measured drop -0.004 (mAP went up); a broken quantization lands far below.
    assert math.isfinite(int8["map"]) and int8["map_drop"] < 0.1
    assert int8["size_bytes"] < 0.5 * float32["size_bytes"]

    contract = report["contract"]
    restored = restore_run_checkpoint(RunDirectory(trained_run))
    model, label_map = restored.model, restored.label_map
    assert contract["inputs"]["images"]["shape"] == [1, 128, 128, 3]
    assert contract["classes"] == {str(item.id): item.display_name for item in label_map.items}
    assert contract["postprocessing"]["score_threshold"] == model.score_threshold

    # The float32 file, run as the contract says, gives the checkpoint's detections on a canvas.
    image = np.asarray(Image.open(sorted((shapes_dataset / "JPEGImages").glob("*val*"))[0]).convert("RGB"))
    wide = np.asarray(Image.fromarray(image).resize((170, 90)))
    canvas, _, _, _ = augment.resize_for_model(tf.cast(wide, tf.float32), tf.zeros([0, 4]), 128)
    canvas = canvas.numpy()[None]
    expected = {key: value.numpy()[0] for key, value in model.detect(canvas).items()}
    count = int(expected["num_detections"])
    assert count > 0
    found = _interpreter(out / "tflite" / "model_float32.tflite")(images=canvas)
    assert {key: value.shape for key, value in found.items()} == {
        "detection_boxes": (1, 100, 4), "detection_scores": (1, 100), "detection_classes": (1, 100),
        "num_detections": (1,)}
    assert int(found["num_detections"][0]) == count
    np.testing.assert_allclose(found["detection_boxes"][0, :count], expected["boxes"][:count], atol=1e-3)
    np.testing.assert_allclose(found["detection_scores"][0, :count], expected["scores"][:count], atol=1e-5)
    np.testing.assert_array_equal(found["detection_classes"][0, :count],
                                  label_map.indices_to_ids(expected["classes"][:count]).astype(np.float32))
    assert not found["detection_scores"][0, count:].any() and not found["detection_classes"][0, count:].any()

    quantized = _interpreter(out / "tflite" / "model_int8_dynamic.tflite")(images=canvas)
    assert quantized["detection_boxes"].shape == (1, 100, 4) and 0 < quantized["num_detections"][0] <= 100
    assert set(quantized["detection_classes"][0]) <= {0.0, *map(float, label_map.ids)}


@pytest.fixture
def verification_inputs(trained_run):
    """The restored best checkpoint of `trained_run` and 4 of the images an export verifies on."""
    from detkeeper.export import exporter

    run = RunDirectory(trained_run)
    restored = restore_run_checkpoint(run, keep_split="val")
    return restored, exporter._verification_records(restored.config, run, "val", 4)


def test_a_graph_that_does_not_convert_is_reported_not_raised(verification_inputs, tmp_path, monkeypatch):
    """The detector's own NMS (combined_non_max_suppression) has no TFLite builtin: a real converter
    failure, reported with the op's name for both models; nothing but tflite.json is written."""
    from detkeeper.export import tflite

    restored, records = verification_inputs
    monkeypatch.setattr(tflite, "canvas_detect_function", lambda model, label_map: model.detect)
    report = tflite.export_tflite(restored.model, restored.label_map, records, tmp_path / "tflite",
                                  max_boxes=restored.config.data.max_boxes)

    for model in report.models:
        assert (model.status, model.file) == ("did not convert", None)
        assert model.reason.startswith("ConverterError: 'tf.CombinedNonMaxSuppression' op is neither a custom op "
                                       "nor a flex op"), model.reason
    assert sorted(path.name for path in (tmp_path / "tflite").iterdir()) == ["tflite.json"]
    written = json.loads((tmp_path / "tflite" / "tflite.json").read_text())
    assert {name: model["status"] for name, model in written["models"].items()} == {
        "float32": "did not convert", "int8_dynamic": "did not convert"}
    assert report.summary_lines()[1].startswith("  float32 (not quantized): did not convert: ConverterError: "
                                                "'tf.CombinedNon")


def test_a_float32_model_that_does_not_answer_like_the_checkpoint_is_not_written(verification_inputs, tmp_path,
                                                                                 monkeypatch):
    from detkeeper.export import verify
    from detkeeper.export.tflite import export_tflite

    restored, records = verification_inputs
    monkeypatch.setitem(verify.TOLERANCE, "box", -1.0)  # no detection can match now
    report = export_tflite(restored.model, restored.label_map, records, tmp_path / "tflite",
                           max_boxes=restored.config.data.max_boxes)

    float32, int8 = report.model("float32"), report.model("int8_dynamic")
    assert float32.status == "did not verify" and float32.file is None
    assert "does not answer like the checkpoint" in float32.reason and "no counterpart" in float32.reason
    assert int8.status == "verified" and int8.first_difference is not None  # int8 is scored, never matched
    assert sorted(path.name for path in (tmp_path / "tflite").iterdir()) == ["model_int8_dynamic.tflite",
                                                                            "tflite.json"]
