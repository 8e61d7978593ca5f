"""Loading YAML files: error messages users rely on, path resolution, save/load round trip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detkeeper.config import RunConfig, config_to_dict, load_config, save_config
from detkeeper.errors import ConfigError


def _error(source: str | os.PathLike, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(source, overrides)
    return str(caught.value)


def test_typo_names_file_key_path_and_suggestion(write_config) -> None:
    path = write_config("""
        train:
          optimizer:
            learnin_rate: 0.1
    """)
    message = _error(path)
    assert str(path) in message
    assert "train.optimizer.learnin_rate" in message
    assert "did you mean 'learning_rate'?" in message


def test_wrong_type_names_expectation_and_value(write_config) -> None:
    message = _error(write_config("train: {steps: lots}"))
    assert "train.steps: expected an integer >= 1, got 'lots'" in message


def test_negative_batch_size(write_config) -> None:
    message = _error(write_config("train: {batch_size: -4}"))
    assert "train.batch_size" in message and ">= 1" in message and "-4" in message


def test_bad_literal_lists_allowed_values(write_config) -> None:
    message = _error(write_config("train: {optimizer: {name: rmsprop}}"))
    assert "train.optimizer.name" in message
    for allowed in ("'sgd'", "'adam'", "'adamw'"):
        assert allowed in message


def test_several_errors_reported_together(write_config) -> None:
    path = write_config("""
        model: {image_size: 16}
        train: {batch_size: 0, stepz: 10}
        checkpoint: {mode: biggest}
        data:
          augment: {scale_jitter: [2, 1]}
    """)
    message = _error(path)
    assert "5 problems" in message
    for key in (
        "model.image_size", "train.batch_size", "train.stepz",
        "checkpoint.mode", "data.augment.scale_jitter",
    ):
        assert f"{path}: {key}:" in message


def test_missing_data_file_names_its_key(write_config) -> None:
    message = _error(write_config("""
        data:
          train: {format: voc, path: no_such_voc}
          val: {format: coco, path: no_such.json}
          test: {format: tfrecord, path: "shards/*.tfrecord"}
        model: {backbone: {weights: missing.weights.h5}}
    """))
    for key in ("data.train.path", "data.val.path", "data.test.path", "model.backbone.weights"):
        assert key in message
    assert "no_such_voc" in message


def test_synthetic_paths_and_run_dir_need_not_exist(write_config) -> None:
    config = load_config(write_config("""
        run_dir: out/run
        data: {train: {format: synthetic, path: gen, split: train}}
    """))
    assert config.data.train.format == "synthetic"


@pytest.mark.parametrize("name", ["runs/exp[1]", "runs/lr*", "runs/a?b"])
def test_a_run_dir_named_with_a_glob_wildcard_is_refused_before_training(write_config, name) -> None:
    """TensorFlow would save checkpoints there and then fail to read them back ("Failed to find any
    matching files"), after training."""
    message = _error(write_config(f"run_dir: '{name}'"))
    assert "run_dir:" in message and "glob" in message and "choose a folder name without * ? [" in message


def test_relative_paths_resolve_against_the_yaml_folder(write_config, tmp_path: Path) -> None:
    dataset = tmp_path / "configs" / "data" / "voc"
    dataset.mkdir(parents=True)
    (tmp_path / "configs" / "shards").mkdir()
    for shard in ("a-0.tfrecord", "a-1.tfrecord", "b.tfrecord"):
        (tmp_path / "configs" / "shards" / shard).touch()
    path = write_config(
        """
        run_dir: ../runs/x
        data:
          train: {format: voc, path: data/voc, split: train}
          val: {format: tfrecord, path: "shards/a-*.tfrecord, shards/b.tfrecord"}
        """,
        name="configs/run.yaml",
    )
    config = load_config(path)
    assert config.run_dir == str(tmp_path / "runs" / "x")
    assert config.data.train.path == str(dataset)
    assert config.data.val.patterns() == [
        str(tmp_path / "configs" / "shards" / "a-*.tfrecord"),
        str(tmp_path / "configs" / "shards" / "b.tfrecord"),
    ]


def test_coco_images_and_label_map_must_exist(write_config, tmp_path: Path) -> None:
    (tmp_path / "instances.json").write_text("{}")
    message = _error(write_config("""
        data:
          label_map: label_map.pbtxt
          train: {format: coco, path: instances.json, images: pictures}
    """))
    assert "data.train.images" in message and "data.label_map" in message
    assert "data.train.path" not in message


def test_yaml_syntax_error_has_line_and_column(write_config) -> None:
    path = write_config("train:\n  steps: 10\n  batch_size: [8\n")
    message = _error(path)
    assert str(path) in message and "line " in message and "column " in message


def test_duplicate_key_is_an_error(write_config) -> None:
    message = _error(write_config("train: {steps: 10}\ntrain: {batch_size: 2}\n"))
    assert "duplicate key 'train'" in message and "line 2" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n"])
def test_top_level_must_be_a_mapping(write_config, text: str) -> None:
    assert "mapping" in _error(write_config(text))


def test_yaml_1_1_surprises_are_avoided(write_config) -> None:
    config = load_config(write_config("train: {optimizer: {learning_rate: 1e-3}}"))
    assert config.train.optimizer.learning_rate == 0.001
    message = _error(write_config("data: {augment: {horizontal_flip: yes}}"))
    assert "data.augment.horizontal_flip: expected true or false, got 'yes'" in message


def test_unknown_source_lists_presets(in_tmp_cwd) -> None:
    message = _error("no_such_config")
    assert "demo" in message and "resnet50_fpn_640" in message


def test_save_load_round_trip(write_config, tmp_path: Path) -> None:
    (tmp_path / "voc").mkdir()
    (tmp_path / "backbone.weights.h5").touch()
    config = load_config(
        write_config("""
            preset: mobilenetv2_fpn_320
            model: {backbone: {weights: backbone.weights.h5}}
            data:
              train: {format: voc, path: voc, split: "2007"}
              val: {format: voc, path: voc, split: "1e5"}
              augment: {scale_jitter: [0.5, 1.5]}
            train:
              optimizer: {weight_decay: 1e-5}
              schedule: {name: step, decay_steps: [100, 200]}
              ema_decay: 0.999
        """),
        overrides=["train.steps=600"],
    )
    saved = save_config(config, tmp_path / "run" / "config.yaml")
    text = saved.read_text()
    assert text.startswith("# Resolved config")
    reloaded = load_config(saved)
    assert reloaded == config
    assert reloaded.data.train.split == "2007"
    assert reloaded.model.backbone.weights == str(tmp_path / "backbone.weights.h5")
    assert config_to_dict(reloaded)["data"]["augment"]["scale_jitter"] == [0.5, 1.5]
    assert isinstance(reloaded, RunConfig)
