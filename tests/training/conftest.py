"""The uninterrupted reference run that training tests compare against."""

from __future__ import annotations

import pytest

from training_runs import write_config


@pytest.fixture(scope="session")
def reference_run(shapes_dataset, tmp_path_factory):
    """One uninterrupted training run (120 steps, 6 evaluations): the yardstick for the others."""
    from detkeeper.training.trainer import train

    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "config.yaml", shapes_dataset, root / "run")
    return config, train(config)
