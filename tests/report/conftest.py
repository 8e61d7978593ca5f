"""One small trained run per session for the report tests, then the same run exported twice: once
failing verification, once verified."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from export_runs import write_run_config  # noqa: E402  (the export tests' small run config)


@pytest.fixture(scope="session")
def report_run(shapes_dataset, tmp_path_factory):
    """60 steps, evaluated every 20, keeping the best one and the latest one: three evaluations, so at
    least one checkpoint is pruned. Returns the train result and the report as training wrote it."""
    from detkeeper.api import train  # writes the report at the end, as `detkeeper train` does

    root = tmp_path_factory.mktemp("report_run")
    config = write_run_config(root / "run.yaml", shapes_dataset, root / "run")
    result = train(config, ["checkpoint.keep_best=1", "checkpoint.keep_last=1"])
    assert result.status == "finished"
    return result, (result.run_dir / "report.html").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def exported_run(report_run):
    """`report_run` after an export whose verification failed (every box tolerance impossible), then a
    verified one of the same checkpoint (2 verification images each: the fresh process dominates)."""
    from detkeeper.export import verify
    from detkeeper.export.exporter import ExportVerificationFailed, export_model

    result, _ = report_run
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(verify.TOLERANCE, "box", -1.0)
        with pytest.raises(ExportVerificationFailed):
            export_model(result.run_dir, verify_images=2)
    export_model(result.run_dir, verify_images=2)
    return result.run_dir
