"""detkeeper.load, `detkeeper predict` and `detkeeper evaluate` of an export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

import detkeeper
from detkeeper.cli.main import main
from detkeeper.errors import DetkeeperError
from detkeeper.export.predictor import SkippedImage


def _val_images(shapes_dataset, count=3):
    return sorted((shapes_dataset / "JPEGImages").glob("*val*"))[:count]


def test_load_gives_labels_and_the_same_answers_as_the_run_it_came_from(exported, trained_run, shapes_dataset):
    from_export = detkeeper.load(exported.out_dir)
    from_run = detkeeper.load(trained_run)
    assert from_export.labels == from_run.labels == {1: "circle", 2: "cross", 3: "square", 4: "triangle"}
    assert from_export.metadata["source"]["step"] == from_run.metadata["source"]["step"]
    files = _val_images(shapes_dataset)
    exported_found, run_found = from_export.detect_files(files), from_run.detect_files(files)
    for a, b in zip(exported_found, run_found):
        assert a.image == b.image and (a.height, a.width) == (128, 128)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)  # pixels
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
        assert set(a.labels) <= {"circle", "cross", "square", "triangle"}
    image = tf.io.decode_jpeg(files[0].read_bytes()).numpy()
    raw = from_export(image)
    assert raw["detection_boxes"].shape[0] == 1 and raw["detection_boxes"].max() <= 1.0


def test_predict_writes_coco_json_and_drawn_images_and_skips_broken_files(exported, shapes_dataset, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in _val_images(shapes_dataset, 4):
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"not an image")
    (images / "empty.png").write_bytes(b"")
    (images / "notes.txt").write_text("not an image name, not read")
    out = tmp_path / "out"
    code = main(["predict", str(exported.out_dir), str(images), "--out", str(out), "--min-score", "0.2", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped" in printed and "broken.jpg: not a readable image (Unknown image file format" in printed
    assert "empty.png: empty file" in printed
    document = json.loads((out / "predictions.json").read_text())
    assert [image["file_name"].rsplit("/", 1)[1] for image in document["images"]] == sorted(
        path.name for path in _val_images(shapes_dataset, 4))
    assert [category["name"] for category in document["categories"]] == ["circle", "cross", "square", "triangle"]
    assert document["annotations"] and all(a["score"] >= 0.2 for a in document["annotations"])
    assert all(len(a["bbox"]) == 4 and a["bbox"][2] > 0 for a in document["annotations"])
    assert sorted(path.name for path in (out / "images").iterdir()) == sorted(
        path.name for path in _val_images(shapes_dataset, 4))


def test_evaluating_an_export_scores_what_the_checkpoint_scores(exported, trained_run):
    from_export = detkeeper.evaluate(exported.out_dir, "val")
    from_run = detkeeper.evaluate(trained_run, "val")
    assert from_export.result.stats["mAP"] > 0
    for name, value in from_run.result.stats.items():
        assert from_export.result.stats[name] == pytest.approx(value, abs=1e-4), name
    assert from_export.metrics["model"]["kind"] == "export"
    assert from_export.checkpoint.step == from_run.checkpoint.step
    assert from_export.out_dir == exported.out_dir.parent / f"eval-{exported.out_dir.name}-val"


def test_a_truncated_export_is_a_clear_error(exported, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(exported.out_dir, copy)
    data = next((copy / "saved_model" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DetkeeperError, match="cannot load the SavedModel, is it complete"):
        detkeeper.load(copy)
    code = main(["evaluate", "--model", str(copy), "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "cannot load the SavedModel" in err and "Traceback" not in err


def test_a_savedmodel_that_is_not_a_detector_is_refused(tmp_path):
    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return {"y": 2 * x}

    module = Doubler()
    tf.saved_model.save(module, str(tmp_path / "doubler"), signatures={"serving_default": module.__call__})
    with pytest.raises(DetkeeperError, match="not a detection SavedModel.*found serving_default"):
        detkeeper.load(tmp_path / "doubler")


def test_detect_files_raises_on_a_broken_image_unless_asked_to_skip(exported, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    predictor = detkeeper.load(exported.saved_model_dir)
    with pytest.raises(DetkeeperError, match="broken.png: not a readable image"):
        predictor.detect_files([broken])
    skipped: list[SkippedImage] = []
    assert predictor.detect_files([broken], skipped=skipped) == []
    assert skipped[0].image == str(broken)
