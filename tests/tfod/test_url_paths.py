"""Dataset locations that are URLs (``gs://``, which tf.io.gfile reads; ``ram://`` stands in for one
here) stay URLs through `detkeeper config import` and `load_config`, and a sample config's unfilled
placeholder (``gs://${YOUR_GCS_BUCKET}/...``, ``PATH_TO_BE_CONFIGURED``) is reported as one."""

from __future__ import annotations

from pathlib import Path

import pytest
import tensorflow as tf
import yaml

from detkeeper.cli.main import main
from detkeeper.config import load_config
from detkeeper.tfod.importer import import_pipeline_config, write_imported_config
from detkeeper.errors import ConfigError

SSD = Path(__file__).resolve().parents[1] / "fixtures" / "tfod" / "ssd_mobilenet_v2_320x320.config"
GCS_TRAIN = "gs://${YOUR_GCS_BUCKET}/data/train.record"


def _pipeline_with(tmp_path: Path, train: str, label_map: str = "data/label_map.pbtxt") -> Path:
    text = SSD.read_text().replace('"data/train.record-?????-of-00002"', f'"{train}"')
    text = text.replace('"data/label_map.pbtxt"', f'"{label_map}"')
    path = tmp_path / "pipeline.config"
    path.write_text(text)
    return path


def test_import_keeps_a_url_and_reports_its_placeholder(tmp_path):
    out = tmp_path / "configs"
    result = import_pipeline_config(_pipeline_with(tmp_path, GCS_TRAIN, "PATH_TO_BE_CONFIGURED/label_map.txt"),
                                    base_dir=tmp_path, out_dir=out)
    assert result.data["data"]["train"]["path"] == GCS_TRAIN  # not "../gs:/${YOUR_GCS_BUCKET}/data/..."
    assert result.placeholders == (
        f"data.train.path: ${{YOUR_GCS_BUCKET}} in {GCS_TRAIN!r}",
        "data.label_map: PATH_TO_BE_CONFIGURED in '../PATH_TO_BE_CONFIGURED/label_map.txt'")
    assert not any("train.record" in missing for missing in result.missing_files)
    written = write_imported_config(result, out / "run.yaml")
    assert yaml.safe_load(written.read_text())["data"]["train"]["path"] == GCS_TRAIN
    with pytest.raises(ConfigError) as raised:
        load_config(written)
    message = str(raised.value)
    assert f"{written}: data.train.path: unfilled placeholder ${{YOUR_GCS_BUCKET}} in {GCS_TRAIN!r}" in message
    assert f"{written}: data.label_map: unfilled placeholder PATH_TO_BE_CONFIGURED" in message


def test_the_import_command_lists_placeholders_to_fill_in(tmp_path, capsys):
    pipeline = _pipeline_with(tmp_path, GCS_TRAIN)
    assert main(["config", "import", str(pipeline), "--out", str(tmp_path / "run.yaml")]) == 0
    out = capsys.readouterr().out
    assert "placeholders to fill in (1;" in out and f"data.train.path: ${{YOUR_GCS_BUCKET}} in {GCS_TRAIN!r}" in out
    assert f"next: fill in the 1 placeholder(s) in {tmp_path / 'run.yaml'}, then detkeeper config show" in out


def test_load_config_keeps_url_paths_and_looks_them_up_with_gfile(tmp_path):
    bucket = f"ram://bucket-{tmp_path.name}"
    tf.io.gfile.makedirs(f"{bucket}/data")
    with tf.io.gfile.GFile(f"{bucket}/data/train.record-00000-of-00001", "wb") as handle:
        handle.write(b"")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"preset": "demo", "data": {
        "train": {"format": "tfrecord", "path": f"{bucket}/data/train.record-*", "split": None},
        "val": {"format": "tfrecord", "path": f"{bucket}/data/val.record-*", "split": None}}}))
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    message = str(raised.value)
    assert "invalid config (1 problem)" in message  # the train pattern matched
    assert f"{config}: data.val.path: expected each pattern to match a file, got none for '{bucket}/data/val.record-*'" \
        in message
    loaded = load_config(config, [f"data.val.path={bucket}/data/train.record-*"])
    assert loaded.data.train.path == f"{bucket}/data/train.record-*"  # not made absolute
