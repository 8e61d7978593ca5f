"""A small trained run, exported once per session, for the export, load and predict tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from export_runs import write_run_config


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
