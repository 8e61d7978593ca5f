"""A run config is checked whole before training reads any data: every mistake that needs no data
is reported at once, naming the config file and key, with exit code 2."""

from __future__ import annotations

import pytest

from detkeeper.cli.main import main
from detkeeper.config import load_config
from detkeeper.data.sources import DataSources
from detkeeper.errors import ConfigError
from detkeeper.training.trainer import train

from training_runs import write_config


@pytest.fixture
def no_data_reads(monkeypatch):
    """Reading a dataset split fails the test: the config must be refused before."""
    def refuse(self, split, *args, **kwargs):
        raise AssertionError(f"data.{split} was read before the config was checked")
    monkeypatch.setattr(DataSources, "prepare", refuse)


@pytest.mark.parametrize("sections, expected", [
    ({"model": {"image_size": 128, "name": "retinanet_tinyy"}},
     "model.name: unknown model 'retinanet_tinyy'; registered models: fcos, fcos_tiny"),
    ({"model": {"image_size": 128, "backbone": {"name": "mobilenet_v9"}}},
     "model.backbone.name: unknown backbone 'mobilenet_v9'"),
    ({"model": {"image_size": 128, "head": {"block": "nowhere>Block"}}},
     "model.head.block: no Keras layer is registered as 'nowhere>Block'"),
    ({"model": {"image_size": 128, "custom_objects_module": "no_such_module_here"}},
     "model.custom_objects_module: cannot import module 'no_such_module_here'"),
    # the input size each family needs is the family's to say (the TF OD API's SSDs take 300)
    ({"model": {"image_size": 300}},
     "model.image_size: expected a multiple of 32 for backbone 'tiny', got 300"),
    ({"model": {"image_size": 128, "init_from": {"path": "/nowhere/run"}}},
     "model.init_from.path: expected an existing run directory, checkpoint or export, got '/nowhere/run'"),
    ({"train": {"steps": 50, "schedule": {"warmup_steps": 80}}},
     "train.schedule.warmup_steps: expected at most train.steps (50)"),
    ({"evaluation": {"every_steps": 20, "monitor": "val_map"}},
     "evaluation.monitor: expected one of val_mAP, val_mAP50"),
])
def test_a_config_mistake_is_refused_before_any_data_is_read(tmp_path, shapes_dataset, no_data_reads,
                                                             sections, expected):
    config = write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run", **sections)
    with pytest.raises(ConfigError) as raised:
        train(config)
    assert f"{config}: {expected}" in str(raised.value)
    assert not (tmp_path / "run").exists()  # nothing written either


def test_every_mistake_is_listed_together_and_the_cli_exits_2(tmp_path, shapes_dataset, no_data_reads, capsys):
    config = write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run",
                          model={"image_size": 128, "name": "nope", "init_from": {"path": "missing"}},
                          evaluation={"every_steps": 20, "monitor": "val_nope"})
    code = main(["train", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # the missing path is a file problem, found first; the registry checks follow once files are there
    assert f"{config}: model.init_from.path: expected an existing" in err
    config = write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run",
                          model={"image_size": 128, "name": "nope"},
                          evaluation={"every_steps": 20, "monitor": "val_nope"})
    code = main(["train", str(config)])
    err = capsys.readouterr().err
    assert code == 2 and "invalid config (2 problems)" in err, err
    assert f"{config}: model.name: unknown model 'nope'" in err
    assert f"{config}: evaluation.monitor: expected one of" in err


def test_an_override_is_named_as_the_source_of_its_mistake(tmp_path, shapes_dataset, no_data_reads):
    config = write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"override 'model.name=bad': model.name: unknown model 'bad'"):
        train(config, ["model.name=bad"])


def test_a_config_built_in_code_is_checked_too(tmp_path, shapes_dataset, no_data_reads):
    config = load_config(write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run"),
                         ["evaluation.monitor=val_mAP_50"])
    with pytest.raises(ConfigError, match=r"config: evaluation.monitor: expected one of"):
        train(config)


def test_a_checkpoint_prefix_is_an_existing_init_from_path(tmp_path, shapes_dataset):
    prefix = tmp_path / "checkpoint" / "ckpt-0"
    prefix.parent.mkdir()
    (tmp_path / "checkpoint" / "ckpt-0.index").write_bytes(b"")
    config = load_config(write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run",
                                      model={"image_size": 128, "init_from": {"path": str(prefix)}}))
    assert config.model.init_from.path == str(prefix)


def test_checkpoint_min_delta_is_accepted_with_a_warning_that_it_changes_nothing():
    from detkeeper.config import RunConfig
    from detkeeper.config.schema import CheckpointConfig
    from detkeeper.training.preflight import deprecation_warnings

    assert deprecation_warnings(RunConfig()) == []
    (warning,) = deprecation_warnings(RunConfig(checkpoint=CheckpointConfig(min_delta=0.01)))
    assert warning.startswith("checkpoint.min_delta (0.01) changes nothing any more") and \
        "early_stopping.min_delta" in warning


def test_hub_retinanet_refuses_an_input_size_its_pyramid_cannot_take(tmp_path, shapes_dataset, no_data_reads):
    pytest.importorskip("keras_hub", reason="hub_retinanet needs keras-hub: pip install 'detkeeper[hub]'")
    config = write_config(tmp_path / "run.yaml", shapes_dataset, tmp_path / "run",
                          model={"image_size": 200, "name": "hub_retinanet"})
    with pytest.raises(ConfigError, match="model.image_size: hub_retinanet's ResNet and pyramid need a multiple "
                                          "of 32, got 200"):
        train(config)
