"""Export: the SavedModel answers like the checkpoint without detkeeper, describes itself, and is
published only once verified."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from detkeeper.cli.main import main
from detkeeper.data import augment
from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.evaluation.runner import original_detections
from detkeeper.export.serving import DetectionModule, ServingSettings
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.run.layout import RunDirectory

from inside_tf_data import raise_inside_tf_data

# Runs in a fresh interpreter (-I: no PYTHONPATH, no user site) with detkeeper made unimportable.
STANDALONE = textwrap.dedent('''
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "detkeeper":
                raise ImportError("detkeeper must not be needed")

    sys.meta_path.insert(0, Refuse())
    import numpy as np
    import tensorflow as tf

    saved_model, arrays, encoded = sys.argv[1], np.load(sys.argv[2]), sys.argv[3:]
    model = tf.saved_model.load(saved_model)

    def rows(outputs):
        return {key: value.numpy().tolist() for key, value in outputs.items()}

    print(json.dumps({
        "small": rows(model(tf.constant(arrays["small"]))),
        "wide": rows(model(tf.constant(arrays["wide"]))),
        "encoded": rows(model.signatures["encoded_image_string_tensor"](
            input_tensor=tf.constant([open(path, "rb").read() for path in encoded]))),
        "metadata": model.metadata()["metadata"].numpy().decode(),
        "label_map_asset": open(model.assets["label_map_pbtxt"].asset_path.numpy().decode()).read(),
        "detkeeper_loaded": any(name.split(".")[0] == "detkeeper" for name in sys.modules),
    }))
''')


def _keras_detections(model, label_map: LabelMap, image: np.ndarray) -> dict:
    """The in-process model on one uint8 image, through detkeeper's evaluation transform."""
    height, width = image.shape[:2]
    canvas, _, _, factors = augment.resize_for_model(tf.cast(image, tf.float32), tf.zeros([0, 4]), model.image_size,
                                                     augment.Resize.of(model))
    raw = {key: np.asarray(value) for key, value in model.detect(canvas[None]).items()}
    found = original_detections(raw, label_map, factors.numpy()[None], np.array([[height, width]]))
    count = int(found["num_detections"][0])
    return {"boxes": found["boxes"][0, :count] / np.array([height, width, height, width], np.float32),
            "scores": found["scores"][0, :count], "classes": found["classes"][0, :count]}


def _assert_same(exported: dict, row: int, expected: dict) -> None:
    count = int(exported["num_detections"][row])
    assert count == len(expected["scores"]) > 0
    np.testing.assert_allclose(np.array(exported["detection_boxes"][row])[:count], expected["boxes"], atol=1e-5)
    np.testing.assert_allclose(np.array(exported["detection_scores"][row])[:count], expected["scores"], atol=1e-6)
    np.testing.assert_array_equal(np.array(exported["detection_classes"][row])[:count], expected["classes"])


def test_the_serving_graph_resizes_images_as_the_model_was_built_to(trained_run, shapes_dataset):
    """``model.resize`` (here stretched, with TF1's bilinear resize, as a TF OD API fixed_shape_resizer
    model) is what the SavedModel's graph does to every image, so it answers like the checkpoint."""
    restored = restore_run_checkpoint(RunDirectory(trained_run))
    model, label_map = restored.model, restored.label_map
    image = np.asarray(Image.open(sorted((shapes_dataset / "JPEGImages").glob("*val*"))[0]).convert("RGB"))
    wide = np.asarray(Image.fromarray(image).resize((200, 100)))
    padded = _keras_detections(model, label_map, wide)
    model.resize_mode, model.resize_method = "stretch", "tf1_bilinear"
    module = DetectionModule(model, label_map, ServingSettings(0.05, 0.5, 100), "{}")
    answered = {key: value.numpy() for key, value in module(tf.constant(wide[None])).items()}
    stretched = _keras_detections(model, label_map, wide)
    _assert_same(answered, 0, stretched)
    assert len(padded["scores"]) != len(stretched["scores"]) or not np.allclose(padded["boxes"], stretched["boxes"])


def test_the_export_answers_like_the_checkpoint_in_a_process_without_detkeeper(exported, trained_run, shapes_dataset,
                                                                             tmp_path):
    restored = restore_run_checkpoint(RunDirectory(trained_run))
    image = np.asarray(Image.open(sorted((shapes_dataset / "JPEGImages").glob("*val*"))[0]).convert("RGB"))
    wide = np.asarray(Image.fromarray(image).resize((170, 90)))
    np.savez(tmp_path / "arrays.npz", small=np.stack([image, image[::-1]]), wide=wide[None])
    encoded = []
    for name, array in (("a.png", wide), ("b.png", image)):  # lossless: the same pixels as the arrays
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        (tmp_path / name).write_bytes(buffer.getvalue())
        encoded.append(str(tmp_path / name))
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(exported.saved_model_dir),
                           str(tmp_path / "arrays.npz"), *encoded], capture_output=True, text=True, env=environment,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    answered = json.loads(done.stdout.strip().splitlines()[-1])
    assert not answered["detkeeper_loaded"]

    model, label_map = restored.model, restored.label_map
    _assert_same(answered["small"], 0, _keras_detections(model, label_map, image))
    _assert_same(answered["small"], 1, _keras_detections(model, label_map, image[::-1]))
    _assert_same(answered["wide"], 0, _keras_detections(model, label_map, wide))
    _assert_same(answered["encoded"], 0, _keras_detections(model, label_map, wide))
    _assert_same(answered["encoded"], 1, _keras_detections(model, label_map, image))
    assert set(np.array(answered["small"]["detection_classes"]).ravel()) <= {0.0, *map(float, label_map.ids)}

    metadata = json.loads(answered["metadata"])
    assert LabelMap.from_pbtxt_text(answered["label_map_asset"]) == label_map
    assert metadata["model"] == {"name": "retinanet_tiny", "input_size": 128, "num_classes": label_map.num_classes,
                                 "custom_objects_module": None}
    assert metadata["source"]["step"] == restored.entry.step and metadata["source"]["checkpoint"] == restored.entry.name
    assert metadata["source"]["validation"]["val_mAP"] == pytest.approx(restored.entry.metrics["val_mAP"])
    assert metadata["thresholds"] == {"score_threshold": 0.05, "iou_threshold": 0.5, "max_detections": 100}
    assert metadata["class_id_offset"] == 1 and metadata["versions"]["tensorflow"] == tf.__version__
    assert {path.name for path in exported.out_dir.iterdir()} == {
        "saved_model", "model.keras", "label_map.pbtxt", "config.yaml", "metadata.json", "verification.json"}


def test_verification_compared_every_entry_point_and_the_map(exported):
    report = json.loads((exported.out_dir / "verification.json").read_text())
    assert report["passed"] and report["problems"] == []
    assert report["checked"] == ["loaded object (uint8)", "serving_default", "encoded_image_string_tensor",
                                 "tf_example", "metadata", "TF OD API outputs and anchors", ".keras archive"]
    assert report["keras_archive_difference"] <= 1e-4
    assert report["num_images"] == 8 and report["detections_compared"] > 0
    assert report["max_box_difference"] <= report["tolerance"]["box"]
    assert report["map_checkpoint"] == pytest.approx(report["map_export"], abs=1e-3)


def test_the_saved_model_holds_each_serving_function_once(exported):
    """Signatures passed to ``tf.saved_model.save`` as concrete functions traced before it were traced
    again in its save context and both kept: every serving function twice, twice the graph to load."""
    saved = saved_model_pb2.SavedModel.FromString((exported.out_dir / "saved_model" / "saved_model.pb").read_bytes())
    names = [function.signature.name for function in saved.meta_graphs[0].graph_def.library.function]
    for name in ("__call__", "_detect", "detect_encoded_images", "detect_tf_examples", "metadata"):
        assert len([found for found in names if found.startswith(f"__inference_{name}_")]) == 1, (name, names)


def _digests(folder):
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_failed_verification_publishes_nothing_and_keeps_the_previous_export(exported, trained_run, monkeypatch):
    from detkeeper.export import verify
    from detkeeper.export.exporter import ExportVerificationFailed, export_model

    before = _digests(exported.out_dir)
    monkeypatch.setitem(verify.TOLERANCE, "box", -1.0)  # no detection can match now
    with pytest.raises(ExportVerificationFailed, match="does not answer as the checkpoint does") as raised:
        export_model(trained_run, out=exported.out_dir, overwrite=True, verify_images=2)
    assert raised.value.exit_code == 1  # the run was usable; the export did not pass
    assert _digests(exported.out_dir) == before
    exports = exported.out_dir.parent
    assert not [path for path in exports.iterdir() if path.name.startswith(".partial-")]
    failed = json.loads((exports / f"{exported.out_dir.name}.verification-failed.json").read_text())
    assert failed["passed"] is False and "no counterpart" in failed["problems"][0]


def test_export_command_refuses_to_replace_an_export_without_overwrite(exported, trained_run, capsys):
    code = main(["export", str(trained_run), "--out", str(exported.out_dir), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "already exists" in err and "--overwrite" in err and "Traceback" not in err


def test_export_command_overrides_thresholds_and_records_them(trained_run, tmp_path, capsys):
    out = tmp_path / "strict"
    # 10, the usual mobile setting: verification's COCO mAP runs with maxDets [1, 10, 10] (issue 15).
    code = main(["export", str(trained_run), "--checkpoint", "latest", "--out", str(out), "--score-threshold", "0.3",
                 "--max-detections", "10", "--verify-images", "3", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verification"]["passed"] and printed["verification"]["num_images"] == 3
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["thresholds"] == {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 10}
    loaded = tf.saved_model.load(str(out / "saved_model"))
    found = loaded(tf.zeros([1, 64, 64, 3], tf.uint8) + 128)
    assert found["detection_boxes"].shape == (1, 10, 4)
    scores = found["detection_scores"].numpy()[0][: int(found["num_detections"][0])]
    assert (scores >= 0.3).all()


def test_bad_thresholds_are_user_errors(trained_run, tmp_path, capsys):
    code = main(["export", str(trained_run), "--out", str(tmp_path / "x"), "--iou-threshold", "0", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "IoU threshold: expected 0 < value <= 1, got 0.0" in err
    assert not (tmp_path / "x").exists()


def test_a_shard_that_changed_under_verification_is_the_data_error_and_nothing_is_published(
        trained_run, tmp_path, monkeypatch):
    """From Python as from the command line: the DataError naming the shard, not TensorFlow's error."""
    from detkeeper.export import exporter

    def changed_shard(*args, **kwargs):
        raise_inside_tf_data(DataError("/data/val.record-00000-of-00001: bytes 10-90 are not the image they held"))

    monkeypatch.setattr(exporter, "verify_saved_model", changed_shard)
    with pytest.raises(DataError, match=r"^/data/val.record-00000-of-00001: bytes 10-90 are not the image"):
        exporter.export_model(trained_run, out=tmp_path / "export")
    assert list(tmp_path.iterdir()) == []  # nothing published, the staging folder removed


def test_exporting_a_missing_run_is_a_clear_error(tmp_path):
    from detkeeper.export.exporter import export_model

    with pytest.raises(DetkeeperError, match="no such run directory"):
        export_model(tmp_path / "nothing")
