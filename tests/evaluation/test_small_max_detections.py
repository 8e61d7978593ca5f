"""evaluation.max_detections below COCO's 100, down to the 10 mobile exports use: training evaluates
with it from the first evaluation on, and ``detkeeper evaluate`` scores the run's checkpoint with it
(COCO's maxDets [1, 10, 10]); the evaluator's own numbers are checked against pycocotools in
test_coco_datasets.py."""

from __future__ import annotations

import json

import yaml

from detkeeper.cli.main import main


def test_a_tiny_run_with_max_detections_10_trains_evaluates_and_is_evaluated(shapes_dataset, tmp_path, capsys):
    from detkeeper.training.trainer import train

    config = {
        "preset": "demo", "run_dir": str(tmp_path / "run"),
        "data": {"train": {"format": "voc", "path": str(shapes_dataset), "split": "train"},
                 "val": {"format": "voc", "path": str(shapes_dataset), "split": "val"}, "test": None,
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "model": {"image_size": 64},
        "train": {"batch_size": 4, "steps": 2, "schedule": {"name": "constant", "warmup_steps": 0}},
        "evaluation": {"every_steps": 2, "score_threshold": 0.0, "max_detections": 10},
        "early_stopping": {"enabled": False},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = train(tmp_path / "config.yaml")
    assert result.status == "finished"
    (entry,) = json.loads(result.ledger_path.read_text())["checkpoints"]
    assert entry["step"] == 2 and entry["metrics"]["val_AR10"] == entry["metrics"]["val_AR100"] >= 0

    code = main(["evaluate", "--model", str(result.run_dir), "--out", str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    assert code == 0 and "Traceback" not in printed
    assert "| area=   all | maxDets= 10 ]" in printed and "maxDets=100" not in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["max_detections"] == 10
    assert abs(metrics["stats"]["mAP"] - entry["metrics"]["val_mAP"]) <= 1e-9  # what training recorded
