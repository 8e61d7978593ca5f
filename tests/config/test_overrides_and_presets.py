"""`key=value` overrides, presets, and `preset:` in a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from detkeeper.config import list_presets, load_config, preset_summary
from detkeeper.errors import ConfigError


def test_overrides_nested_null_and_list(in_tmp_cwd: Path) -> None:
    config = load_config(
        "demo",
        overrides=[
            "train.steps=500",
            "train.optimizer.learning_rate=3e-4",
            "data.val=null",
            "data.augment.scale_jitter=[0.5,2]",
            "train.schedule.decay_steps=[100, 200]",
        ],
    )
    assert config.train.steps == 500
    assert config.train.optimizer.learning_rate == pytest.approx(3e-4)
    assert config.train.optimizer.name == "adam"  # siblings from the preset survive
    assert config.data.val is None
    assert config.data.augment.scale_jitter == (0.5, 2.0)
    assert config.train.schedule.decay_steps == [100, 200]


def test_override_paths_resolve_against_the_working_directory(in_tmp_cwd: Path, write_config):
    path = write_config("run_dir: from_file", name="configs/run.yaml")
    assert load_config(path).run_dir == str(in_tmp_cwd / "configs" / "from_file")
    config = load_config(path, overrides=["run_dir=elsewhere"])
    assert config.run_dir == str(in_tmp_cwd / "elsewhere")


def test_later_override_wins_and_replaces_a_section(in_tmp_cwd: Path) -> None:
    config = load_config(
        "demo", overrides=["data.test=null", "data.test={format: synthetic, path: other}"]
    )
    assert config.data.test.path == str(in_tmp_cwd / "other")
    assert config.data.test.split is None


@pytest.mark.parametrize(
    "override", ["train.steps", "=5", "train..steps=5", "train.steps=", "train steps=5"]
)
def test_malformed_override_is_named(in_tmp_cwd: Path, override: str) -> None:
    with pytest.raises(ConfigError, match="override") as caught:
        load_config("demo", overrides=[override])
    assert repr(override) in str(caught.value)


def test_override_with_invalid_yaml_value(in_tmp_cwd: Path) -> None:
    with pytest.raises(ConfigError, match=r"override 'train.steps=\[1': .*invalid YAML"):
        load_config("demo", overrides=["train.steps=[1"])


def test_override_errors_name_the_override(in_tmp_cwd: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("demo", overrides=["train.batch_size=-1", "train.optimzer.name=sgd"])
    message = str(caught.value)
    assert "override 'train.batch_size=-1': train.batch_size: expected an integer >= 1" in message
    assert "train.optimzer: unknown key, did you mean 'optimizer'?" in message


def test_presets_are_listed_and_each_loads(in_tmp_cwd: Path) -> None:
    presets = list_presets()
    assert {"demo", "mobilenetv2_fpn_320", "resnet50_fpn_640"} <= set(presets)
    for name in presets:
        config = load_config(name)
        assert Path(config.run_dir).is_absolute()
    demo = load_config("demo")
    assert demo.data.train.format == "synthetic"
    assert demo.data.test.split == "test"
    assert demo.data.train.path == str(in_tmp_cwd / "runs" / "demo" / "shapes")
    assert (demo.model.image_size, demo.train.steps) == (256, 800)
    assert demo.evaluation.every_steps == 100
    model_only = load_config("resnet50_fpn_640")
    assert model_only.data.train is None
    assert model_only.model.backbone.name == "resnet50"


def test_the_presets_command_says_what_each_preset_is_for(capsys) -> None:
    from detkeeper.cli.main import main

    assert main(["config", "presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    summaries = {name: preset_summary(name) for name in list_presets()}
    assert summaries["bccd"].endswith("for small real datasets on a CPU")  # the first clause only
    assert all(summary and not summary.startswith(name) for name, summary in summaries.items())
    assert all(line.endswith(summaries[line.split()[0]]) for line in lines)


def test_file_starting_from_a_preset_merges_deeply(in_tmp_cwd: Path, write_config) -> None:
    (in_tmp_cwd / "configs" / "voc").mkdir(parents=True)
    path = write_config(
        """
        preset: mobilenetv2_fpn_320
        model: {image_size: 416}
        train:
          optimizer: {learning_rate: 0.005}
        data:
          train: {format: voc, path: voc, split: train}
        """,
        name="configs/run.yaml",
    )
    config = load_config(path, overrides=["train.batch_size=4"])
    assert config.model.image_size == 416
    assert config.model.backbone.name == "mobilenetv2"  # kept from the preset
    assert config.train.optimizer.learning_rate == 0.005
    assert config.train.optimizer.momentum == 0.9
    assert config.train.schedule.warmup_steps == 500
    assert config.train.batch_size == 4
    assert config.data.train.path == str(in_tmp_cwd / "configs" / "voc")


def test_unknown_preset_in_file(write_config) -> None:
    with pytest.raises(ConfigError, match="preset: expected one of .*'demo'.*got 'demoo'"):
        load_config(write_config("preset: demoo"))


def test_a_file_named_like_a_preset_wins(in_tmp_cwd: Path) -> None:
    (in_tmp_cwd / "demo").write_text("train: {steps: 7, schedule: {warmup_steps: 0}}\n")
    assert load_config("demo").train.steps == 7
