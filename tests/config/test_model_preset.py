"""`model.preset`: a keras-hub preset, allowed only for hub_* models."""

from __future__ import annotations

import pytest

from detkeeper.config import RunConfig, load_config
from detkeeper.config.schema import ModelConfig
from detkeeper.config.validate import from_data
from detkeeper.errors import ConfigError


def _problems(data: dict) -> list[str]:
    _, problems = from_data(ModelConfig, data)
    return [f"{'.'.join(map(str, p.key))}: {p.message}" for p in problems]


def test_preset_defaults_to_null() -> None:
    assert ModelConfig().preset is None
    assert RunConfig().model.preset is None


@pytest.mark.parametrize("preset", ["retinanet_resnet50_fpn_coco", "kaggle://keras/retinanet/keras/x/1",
                                    "/models/my_preset"])
def test_hub_models_take_a_preset(preset: str) -> None:
    config, problems = from_data(ModelConfig, {"name": "hub_retinanet", "preset": preset})
    assert problems == []
    assert config.preset == preset


def test_preset_on_a_built_in_model_is_refused() -> None:
    problems = _problems({"name": "retinanet_tiny", "preset": "retinanet_resnet50_fpn_coco"})
    assert len(problems) == 1
    assert problems[0].startswith("preset: only keras-hub models (hub_*)")
    assert "'retinanet_tiny'" in problems[0] and "expected null" in problems[0]


def test_empty_preset_is_refused() -> None:
    assert _problems({"name": "hub_retinanet", "preset": ""}) == [
        "preset: expected a keras-hub preset name, handle or directory, got ''"]


def test_preset_must_be_a_string() -> None:
    problems = _problems({"name": "hub_retinanet", "preset": 3})
    assert len(problems) == 1 and problems[0].startswith("preset:")


def test_yaml_error_names_the_file_and_key(write_config) -> None:
    path = write_config("""
        model: {name: fcos_tiny, preset: retinanet_resnet50_fpn_coco}
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{path}: model.preset: only keras-hub models" in str(caught.value)


def test_yaml_preset_for_a_hub_model_loads(write_config) -> None:
    path = write_config("""
        model: {name: hub_retinanet, preset: retinanet_resnet50_fpn_coco, image_size: 512}
    """)
    assert load_config(path).model.preset == "retinanet_resnet50_fpn_coco"
