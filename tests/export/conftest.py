"""A small trained run, exported once per session, for the export, load and predict tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


def write_run_config(path: Path, shapes: Path, run_dir: Path, **model) -> Path:
    """The demo preset on the session's shapes dataset, shrunk to a 40-step run at 128 px."""
    config = {
        "preset": "demo",
        "run_dir": str(run_dir),
        "data": {"train": {"format": "voc", "path": str(shapes), "split": "train"},
                 "val": {"format": "voc", "path": str(shapes), "split": "val"},
                 "test": {"format": "voc", "path": str(shapes), "split": "test"}},
        "model": {"image_size": 128, **model},
        "train": {"batch_size": 8, "steps": 40, "schedule": {"name": "constant", "warmup_steps": 10}},
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
