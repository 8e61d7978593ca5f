"""`model.init_from`: off by default, a path resolved like every other path, `include` checked."""

from __future__ import annotations

import pytest

from detkeeper.config import load_config
from detkeeper.config.schema import InitFromConfig
from detkeeper.errors import ConfigError


def test_init_from_is_off_by_default() -> None:
    assert load_config("demo").model.init_from is None


def test_path_is_relative_to_the_yaml_file_and_include_defaults_to_backbone_and_neck(write_config, tmp_path):
    (tmp_path / "configs" / "runs" / "cells").mkdir(parents=True)
    config = load_config(write_config("""
        preset: demo
        model:
          init_from: {path: runs/cells}
    """, name="configs/run.yaml"))
    assert config.model.init_from == InitFromConfig(path=str(tmp_path / "configs" / "runs" / "cells"),
                                                    include="backbone+neck")


def test_a_set_override_turns_it_on_relative_to_the_working_directory(in_tmp_cwd) -> None:
    (in_tmp_cwd / "runs" / "cells" / "checkpoints" / "step-0000100").mkdir(parents=True)
    config = load_config("demo", ["model.init_from.path=runs/cells/checkpoints/step-0000100",
                                  "model.init_from.include=all"])
    assert config.model.init_from == InitFromConfig(
        path=str(in_tmp_cwd / "runs" / "cells" / "checkpoints" / "step-0000100"), include="all")


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.init_from.path=runs/a", "model.init_from.include=head"],
     "model.init_from.include: expected one of 'backbone', 'backbone+neck', 'all', got 'head'"),
    (["model.init_from.include=all"], "model.init_from.path: required key missing"),
    (["model.init_from.path=''"], "model.init_from.path: expected a run directory, checkpoint or export, got ''"),
])
def test_mistakes_name_the_key(overrides, expected) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace("+", r"\+")):
        load_config("demo", overrides)
