"""A small trained run, exported once per session, for the export, load and predict tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def write_run_config(path: Path, shapes: Path, run_dir: Path, **model) -> Path:
    """The demo preset shrunk to 60 steps at 128 px, trained and validated on the 8 val images of the
    session's shapes dataset (mAP passes 0.5: the detections the tests compare are real ones)."""
    config = {
        "preset": "demo",
        "run_dir": str(run_dir),
        "data": {"train": {"format": "voc", "path": str(shapes), "split": "val"},
                 "val": {"format": "voc", "path": str(shapes), "split": "val"},
                 "test": {"format": "voc", "path": str(shapes), "split": "test"},
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "model": {"image_size": 128, **model},
        "train": {"batch_size": 8, "steps": 60, "optimizer": {"learning_rate": 0.003},
                  "schedule": {"name": "constant", "warmup_steps": 20}},
        "evaluation": {"every_steps": 20},
        "early_stopping": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="session")
def trained_run(shapes_dataset, tmp_path_factory) -> Path:
    from detkeeper.training.trainer import train

    root = tmp_path_factory.mktemp("export_run")
    result = train(write_run_config(root / "run.yaml", shapes_dataset, root / "run"))
    assert result.status == "finished"
    return result.run_dir


@pytest.fixture(scope="session")
def exported(trained_run):
    """The best checkpoint of `trained_run`, exported (and verified) to RUN/exports/<checkpoint>."""
    from detkeeper.export.exporter import export_model

    return export_model(trained_run)
