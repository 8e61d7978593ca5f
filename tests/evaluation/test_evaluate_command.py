"""`detkeeper evaluate`: a restored checkpoint scores exactly what training recorded for it, on its
config split and on the same images read as a dataset; the files it writes are what COCO tools read;
user mistakes are one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from detkeeper.cli.main import main
from detkeeper.data.coco import write_coco
from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.data.record import yxyx_to_xywh
from detkeeper.data.voc import read_voc
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.evaluation.evaluate import evaluate

from inside_tf_data import raise_inside_tf_data


@pytest.fixture(scope="module")
def run(shapes_dataset, tmp_path_factory):
    """A tiny run with EMA: 6 steps at 64 px, checkpoints at steps 3 and 6. Score threshold 0 keeps
    100 detections per image, so its barely trained mAP is non-zero and differs between checkpoints."""
    from detkeeper.training.trainer import train

    root = tmp_path_factory.mktemp("evaluate")
    config = {
        "preset": "demo", "run_dir": str(root / "run"),
        "data": {"train": {"format": "voc", "path": str(shapes_dataset), "split": "train"},
                 "val": {"format": "voc", "path": str(shapes_dataset), "split": "val"}, "test": None,
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "model": {"image_size": 64},
        "train": {"batch_size": 4, "steps": 6, "ema_decay": 0.9, "optimizer": {"learning_rate": 0.003},
                  "schedule": {"name": "constant", "warmup_steps": 0}},
        "evaluation": {"every_steps": 3, "score_threshold": 0.0},
        "early_stopping": {"enabled": False},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    result = train(root / "config.yaml")
    ledger = json.loads(result.ledger_path.read_text())
    recorded = {entry["step"]: entry["metrics"]["val_mAP"] for entry in ledger["checkpoints"]}
    assert sorted(recorded) == [3, 6] and all(entry["ema"] for entry in ledger["checkpoints"])
    assert recorded[3] != recorded[6] and min(recorded.values()) > 0, recorded
    return result.run_dir, result.best.step, recorded


@pytest.fixture(scope="module")
def best_report(run):
    run_dir, _, _ = run
    return evaluate(run_dir)


def _other_step(run):
    _, best, recorded = run
    return next(step for step in recorded if step != best)


def test_best_checkpoint_on_val_scores_the_val_map_the_ledger_recorded(run, best_report):
    run_dir, best, recorded = run
    assert best_report.checkpoint.step == best and best_report.checkpoint.ema
    assert abs(best_report.result.stats["mAP"] - recorded[best]) <= 1e-9
    assert best_report.out_dir == run_dir / "eval" / f"step-{best:07d}-val"
    assert best_report.num_images == 8 and best_report.latency_ms > 0


def test_metrics_json_detections_json_and_plots_are_readable(run, best_report, shapes_dataset):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    run_dir, best, _ = run
    metrics = json.loads(best_report.metrics_path.read_text())
    assert metrics["checkpoint"]["step"] == best and metrics["num_images"] == 8
    assert metrics["stats"]["mAP"] == best_report.result.stats["mAP"]
    assert metrics["tf_od_api"]["DetectionBoxes_Precision/mAP"] == metrics["stats"]["mAP"]
    assert metrics["data"]["config_split"] == "val" and metrics["latency_ms"] > 0
    assert set(metrics["per_class_ap"]) == {"circle", "cross", "square", "triangle"}

    # The detections file, scored by pycocotools against ground truth built from the records,
    # gives the same mAP: same boxes, same ids, original pixels.
    label_map = LabelMap.read(run_dir / "label_map.pbtxt")
    records = read_voc(shapes_dataset, split="val", label_map=label_map).records
    boxes = [(record, box, class_id) for record in records for box, class_id in zip(record.boxes, record.class_ids)]
    xywh = yxyx_to_xywh(np.array([box for _, box, _ in boxes]))
    ground_truth = COCO()
    ground_truth.dataset = {
        "images": [{"id": record.image_id} for record in records],
        "categories": [{"id": item.id, "name": item.name} for item in label_map.items],
        "annotations": [{"id": i + 1, "image_id": record.image_id, "category_id": int(class_id),
                         "bbox": xywh[i].tolist(), "area": float(xywh[i, 2] * xywh[i, 3]), "iscrowd": 0}
                        for i, (record, _, class_id) in enumerate(boxes)]}
    ground_truth.createIndex()
    detections = json.loads(best_report.detections_path.read_text())
    assert len(detections) == best_report.result.num_detections
    assert {d["image_id"] for d in detections} <= {r.image_id for r in records}
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), iouType="bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(metrics["stats"]["mAP"], abs=1e-12)

    assert len(best_report.plot_paths) == 5
    for path in best_report.plot_paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_a_coco_dataset_scores_what_pycocotools_gives_on_its_file_and_detections_json(run, shapes_dataset,
                                                                                    tmp_path):
    """A COCO file with integer ids of mixed digit counts and polygon areas below the box area:
    detections.json names images by those integers, so pycocotools loads it beside the file, and
    scores exactly what ``detkeeper evaluate`` reported (COCO's numeric image order, COCO's areas)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    run_dir, _, _ = run
    label_map = LabelMap.read(run_dir / "label_map.pbtxt")
    records = read_voc(shapes_dataset, split="val", label_map=label_map).records
    ids = [7, 1000, 139, 52, 100000, 3, 999, 20][:len(records)]
    records = [dataclasses.replace(record, image_id=str(image_id), original_id=image_id,
                                   area=0.6 * record.coco_areas()) for record, image_id in zip(records, ids)]
    coco = write_coco(records, label_map, tmp_path / "val.json", images_dir=shapes_dataset / "JPEGImages")
    assert [image["id"] for image in json.loads(coco.read_text())["images"]] == ids
    report = evaluate(run_dir, str(coco), images=str(shapes_dataset / "JPEGImages"), out_dir=tmp_path / "out")
    detections = json.loads(report.detections_path.read_text())
    assert {type(row["image_id"]) for row in detections} == {int}
    assert {row["image_id"] for row in detections} <= set(ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(coco))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(report.detections_path)), iouType="bbox")
        evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    for name, got, want in zip(report.result.stats, report.result.stats.values(), evaluation.stats):
        assert abs(got - want) <= 1e-12, (name, got, want)


def test_cli_evaluates_a_step_number_and_prints_json(run, tmp_path, capsys):
    run_dir, _, recorded = run
    step = _other_step(run)
    code = main(["evaluate", "--model", str(run_dir), "--checkpoint", str(step), "--out", str(tmp_path / "out"),
                 "--json", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    metrics = json.loads(out)
    assert metrics["checkpoint"]["step"] == step
    assert abs(metrics["stats"]["mAP"] - recorded[step]) <= 1e-9
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"metrics.json", "detections.json", "pr_curves"}


def test_a_dataset_path_is_read_like_data_check_and_classes_are_matched_by_name(run, shapes_dataset, tmp_path):
    run_dir, best, recorded = run
    checkpoint = run_dir / "checkpoints" / f"step-{best:07d}" / "ckpt"
    # The val images as a VOC folder with a split: the same number as the config split.
    report = evaluate(checkpoint, str(shapes_dataset), split="val")
    assert report.out_dir == run_dir / "eval" / f"step-{best:07d}-shapes-val"
    assert abs(report.result.stats["mAP"] - recorded[best]) <= 1e-9
    # The same images as COCO JSON whose category ids are the model's in reverse: matched by name.
    model_map = LabelMap.read(run_dir / "label_map.pbtxt")
    reversed_map = LabelMap([LabelMapItem(5 - item.id, item.name, item.name) for item in model_map.items])
    records = [dataclasses.replace(r, class_ids=5 - r.class_ids)
               for r in read_voc(shapes_dataset, split="val", label_map=model_map).records]
    coco = write_coco(records, reversed_map, tmp_path / "val.json", images_dir=shapes_dataset / "JPEGImages")
    report = evaluate(run_dir, str(coco), images=str(shapes_dataset / "JPEGImages"), out_dir=tmp_path / "coco")
    assert abs(report.result.stats["mAP"] - recorded[best]) <= 1e-9


def test_a_class_the_model_does_not_know_is_a_clear_error(run, shapes_dataset, tmp_path, capsys):
    run_dir, _, _ = run
    root = tmp_path / "voc"
    shutil.copytree(shapes_dataset, root)
    name = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{name}.xml"
    text = xml.read_text()
    first = text.split("<name>")[1].split("</name>")[0]
    xml.write_text(text.replace(f"<name>{first}</name>", "<name>hexagon</name>", 1))
    with pytest.raises(DataError, match="hexagon"):
        evaluate(run_dir, str(root), split="val")
    code = main(["evaluate", "--model", str(run_dir), "--data", str(root), "--split", "val", "--quiet"])
    err = capsys.readouterr().err
    assert code == DataError.exit_code
    assert "'hexagon'" in err and "'circle', 'cross', 'square', 'triangle'" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["saved_model", "step", "missing", "split"])
def test_user_errors_are_one_line_with_a_non_zero_exit(run, tmp_path, capsys, case):
    run_dir, _, _ = run
    argv = ["evaluate", "--model", str(run_dir), "--quiet"]
    if case == "saved_model":
        (tmp_path / "export").mkdir()
        (tmp_path / "export" / "saved_model.pb").write_bytes(b"")
        argv[2], expected = str(tmp_path / "export"), "cannot load the SavedModel, is it complete?"
    elif case == "step":
        argv += ["--checkpoint", "999"]
        expected = "no kept checkpoint at step 999; kept steps: 3, 6"
    elif case == "missing":
        argv[2], expected = str(tmp_path / "nothing"), "no such run directory, checkpoint or SavedModel"
    else:
        argv += ["--data", "test"]
        expected = "sets no data.test (it sets data.train, data.val)"
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0 and expected in err and "Traceback" not in err
    assert err.startswith("detkeeper evaluate: error:") and err.count("\n") == 1


def test_a_config_that_no_longer_fits_the_checkpoint_is_refused(run, tmp_path):
    """One conv fewer per head tower still fills every variable of the smaller model (Keras keys layers
    by position); the checkpoint's leftover variables give it away."""
    run_dir, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval"))
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("    convs: null", "    convs: 1", 1))
    with pytest.raises(DetkeeperError, match="does not fit the model"):  # the EMA list's shapes
        evaluate(copy)
    from detkeeper.config import load_config
    from detkeeper.run.restore import restore_model

    with pytest.raises(DetkeeperError, match=r"holds \d+ model variables, .* has \d+"):  # without EMA
        restore_model(load_config(config), LabelMap.read(copy / "label_map.pbtxt"),
                       str(copy / "checkpoints" / "step-0000003" / "ckpt"), ema=False)


def test_model_only_restore_equals_restoring_everything_training_saved(run):
    """Only the model is read from the checkpoint (through its object graph, although the optimizer
    holds the trainable weights' keys); its weights are those a restore of everything training saved
    (model, optimizer, EMA, early stopping) gives."""
    import tensorflow as tf

    from detkeeper.config import load_config
    from detkeeper.run.restore import restore_model
    from detkeeper.models import build_model
    from detkeeper.training.early_stopping import EarlyStoppingState
    from detkeeper.models.ema import WeightAverage
    from detkeeper.training.optimizers import build_optimizer

    run_dir, best, _ = run
    config = load_config(run_dir / "config.yaml")
    label_map = LabelMap.read(run_dir / "label_map.pbtxt")
    path = str(run_dir / "checkpoints" / f"step-{best:07d}" / "ckpt")
    full = build_model(config.model, label_map.num_classes)
    full.compile(optimizer=build_optimizer(config.train))
    full(tf.zeros([1, 64, 64, 3]), training=False)
    full.optimizer.build(full.trainable_variables)
    average = WeightAverage(full, 0.9)
    tf.train.Checkpoint(model=full, optimizer=full.optimizer, ema=average,
                        early_stopping=EarlyStoppingState()).read(path).assert_consumed()
    raw = restore_model(config, label_map, path, ema=False)
    assert len(raw.weights) == len(full.weights)
    for mine, theirs in zip(raw.weights, full.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    # With EMA (as this run has) the averages replace them: the val_mAP equality above covers that.
    assert any(not np.array_equal(np.asarray(w), a.numpy()) for w, a in zip(raw.weights, average.averages))


def _changed_shard(*args, **kwargs):
    """What a pass meets when a shard changed under it: the DataError, raised inside tf.data."""
    raise_inside_tf_data(DataError("/data/val.record-00000-of-00001: bytes 10-90 are not the image they held"))


def test_a_shard_that_changed_under_the_pass_is_the_data_error_naming_it(run, monkeypatch, tmp_path):
    """From Python as from the command line: the DataError, not TensorFlow's error carrying it."""
    from detkeeper.evaluation import evaluate as evaluate_module

    run_dir, _, _ = run
    monkeypatch.setattr(evaluate_module, "run_validation", _changed_shard)
    with pytest.raises(DataError, match=r"^/data/val.record-00000-of-00001: bytes 10-90 are not the image"):
        evaluate(run_dir, out_dir=tmp_path / "out")
