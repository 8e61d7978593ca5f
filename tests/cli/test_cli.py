"""The command line as a user meets it: help with examples, reports, exit codes, one-paragraph errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from detkeeper.cli.main import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_check_on_bccd_reports_the_two_zero_area_boxes(capsys, bccd_root):
    code, out, _ = run(capsys, "data", "check", str(bccd_root), "--quiet")
    assert code == 1  # boxes had to be dropped
    assert "364 images read, 364 usable, 4,886 usable boxes" in out
    assert "2  zero_area_box" in out
    assert "BloodImage_00338.xml" in out and "BloodImage_00343.xml" in out


def test_data_check_json_counts_per_split_and_class(capsys, bccd_root):
    code, out, _ = run(capsys, "data", "check", str(bccd_root), "--split", "val", "--json", "--quiet")
    summary = json.loads(out)
    assert code == 1 and summary["ok"] is False  # BloodImage_00338 is in val
    (split,) = summary["splits"]
    assert split["records_read"] == 87 and split["problems"] == {"zero_area_box": 1}
    assert set(split["boxes_per_class"]) == {"Platelets", "RBC", "WBC"}
    assert sum(split["boxes_per_class"].values()) == split["boxes_usable"]


def test_a_warm_data_check_counts_from_the_columns(capsys, bccd_root, monkeypatch):
    """The second check of a split reads the dataset index and counts boxes per class on the columns: the
    only record made is the one whose zero-area box is dropped."""
    from detkeeper.data import columns

    first = json.loads(run(capsys, "data", "check", str(bccd_root), "--split", "val", "--json", "--quiet")[1])
    made = []
    real = columns.DetectionRecord
    monkeypatch.setattr(columns, "DetectionRecord", lambda **fields: made.append(fields["image_id"]) or real(**fields))
    again = json.loads(run(capsys, "data", "check", str(bccd_root), "--split", "val", "--json", "--quiet")[1])
    assert again == first and made == ["BloodImage_00338"]


def test_data_check_of_a_config_checks_every_split(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("preset: demo\ndata:\n  synthetic: {num_train: 6, num_val: 3, num_test: 2, image_size: 64}\n"
                      "  train: {format: synthetic, path: shapes, split: train}\n"
                      "  val: {format: synthetic, path: shapes, split: val}\n"
                      "  test: {format: synthetic, path: shapes, split: test}\n")
    code, out, _ = run(capsys, "data", "check", str(config), "--quiet")
    assert code == 0
    assert "data.train: 6 images read" in out and "data.test: 2 images read" in out
    assert out.count("no problems found") == 3


def test_truncated_jpeg_is_counted_and_skipped_not_a_crash(capsys, tmp_path, bccd_root):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem in ["BloodImage_00000", "BloodImage_00001"]:
        (root / "Annotations" / f"{stem}.xml").write_bytes((bccd_root / "Annotations" / f"{stem}.xml").read_bytes())
        data = (bccd_root / "JPEGImages" / f"{stem}.jpg").read_bytes()
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(data if stem.endswith("0") else data[:5000])
    code, out, _ = run(capsys, "data", "check", str(root), "--quiet")
    assert code == 1
    assert "2 images read, 1 usable" in out and "corrupt_image" in out and "BloodImage_00001.jpg" in out


def test_config_typo_is_one_clear_paragraph_with_exit_2(capsys, tmp_path):
    config = tmp_path / "typo.yaml"
    config.write_text("preset: demo\ntrain:\n  optimizer:\n    learnig_rate: 0.1\n")
    code, out, err = run(capsys, "config", "show", str(config))
    assert code == 2 and out == ""
    assert "typo.yaml" in err and "train.optimizer.learnig_rate" in err and "learning_rate" in err
    assert "Traceback" not in err


def test_config_show_checks_what_train_checks_before_reading_data(capsys):
    """Names that registries resolve (model, backbone, monitor) too, not only the schema: `config show`
    once printed an unknown backbone and exited 0, where `train` refused it."""
    code, out, err = run(capsys, "config", "show", "demo", "--set", "model.backbone.name=tiny_x3",
                         "--set", "evaluation.monitor=val_mAP99")
    assert code == 2 and out == ""
    assert "unknown backbone 'tiny_x3'" in err and "tiny_x2" in err and "evaluation.monitor" in err, err


def test_convert_then_check_the_tfrecords(capsys, tmp_path, shapes_dataset):
    prefix = tmp_path / "records" / "train"
    code, out, _ = run(capsys, "data", "convert", str(shapes_dataset), "--split", "train", "--to", "tfrecord",
                       "--out", str(prefix), "--shards", "2", "--quiet")
    assert code == 0 and "wrote 24 images" in out
    shards = sorted(p.name for p in prefix.parent.glob("train-*"))
    assert shards == ["train-00000-of-00002", "train-00001-of-00002"]
    assert (prefix.parent / "label_map.pbtxt").exists()
    code, out, _ = run(capsys, "data", "check", f"{prefix}-*", "--format", "tfrecord",
                       "--label-map", str(prefix.parent / "label_map.pbtxt"), "--quiet")
    assert code == 0 and "24 images read, 24 usable" in out


def test_show_writes_a_png_of_the_pipeline_batch(capsys, tmp_path, shapes_dataset):
    out_file = tmp_path / "batch.png"
    code, out, _ = run(capsys, "data", "show", str(shapes_dataset), "--split", "val", "--count", "4",
                       "--image-size", "96", "--out", str(out_file), "--quiet")
    assert code == 0
    with Image.open(out_file) as picture:
        assert picture.size == (4 * 96 + 3 * 4, 96)


def test_unknown_split_of_a_config_is_a_clear_error(capsys):
    code, _, err = run(capsys, "data", "check", "mobilenetv2_fpn_320", "--quiet")
    assert code == 2 and "names no data split" in err


def test_console_script_exits_non_zero_without_traceback(tmp_path):
    """Through the installed entry point, as a user runs it."""
    script = Path(sys.executable).parent / "detkeeper"
    missing = tmp_path / "no_such_dataset"
    result = subprocess.run([str(script), "data", "check", str(missing)], capture_output=True, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=120)
    assert result.returncode == 2
    assert "no_such_dataset: no such file or folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_commands_import_tensorflow_frozen_and_leave_the_garbage_collector_on():
    """The import's 300,000 objects are no garbage: frozen, later collections skip them
    (benchmarks/start_cpu.py: a command's start-up CPU)."""
    probe = ("import gc; from detkeeper.cli.console import import_tensorflow_quietly; "
             "import_tensorflow_quietly(); import tensorflow; print(gc.isenabled(), gc.get_freeze_count())")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    enabled, frozen = result.stdout.split()
    assert enabled == "True" and int(frozen) > 100_000, result.stdout


TINY_DEMO = ["--set", "data.synthetic.num_train=32", "--set", "data.synthetic.num_val=8",
             "--set", "data.synthetic.num_test=8", "--set", "train.steps=40", "--set", "evaluation.every_steps=20",
             "--set", "train.schedule.warmup_steps=5",
             "--set", "data.synthetic.image_size=128", "--set", "model.image_size=128"]  # a quarter of the pixels


@pytest.mark.slow
def test_demo_trains_exports_evaluates_predicts_and_reports(tmp_path, monkeypatch, capsys):
    """The main job end to end (tiny), then rerun: training says it finished, the verified export is kept."""
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "demo", "--quiet", *TINY_DEMO)
    assert code == 0, out
    run_dir = tmp_path / "runs" / "demo"
    assert "train    32 images" in out and "no problems" in out
    ledger = json.loads((run_dir / "checkpoints" / "ledger.json").read_text())
    best = ledger["best"]
    export = run_dir / "exports" / best
    assert json.loads((export / "verification.json").read_text())["passed"] is True
    assert (export / "saved_model" / "saved_model.pb").is_file()
    metrics = json.loads((run_dir / "exports" / f"eval-{best}-test" / "metrics.json").read_text())
    assert metrics["model"]["kind"] == "export" and metrics["data"]["config_split"] == "test"
    assert f"test mAP {metrics['stats']['mAP']:.3f}" in out
    predictions = json.loads((run_dir / "predictions" / "predictions.json").read_text())
    assert len(predictions["images"]) == 8 and len(list((run_dir / "predictions" / "images").iterdir())) == 8
    assert (run_dir / "report.html").is_file()
    assert "report.html" in out and f"detkeeper predict {export}" in out

    code, out, _ = run(capsys, "demo", "--quiet", "--json", *TINY_DEMO)
    assert code == 0
    summary = json.loads(out)
    assert summary["training"]["status"] == "already_finished"
    assert summary["export"] == {"path": str(export), "verification": "verified earlier; kept"}
    assert summary["test"]["mAP"] == pytest.approx(metrics["stats"]["mAP"], abs=1e-12)
    assert summary["report"] == str(run_dir / "report.html")


def test_building_the_parser_does_not_import_tensorflow():
    """TensorFlow's start-up chatter is muted only when the CLI itself imports it, after parsing."""
    code = ("import sys; from detkeeper.cli.main import build_parser; build_parser(); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
