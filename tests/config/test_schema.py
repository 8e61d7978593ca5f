"""The schema itself: documented fields, valid defaults, the generic converter's type rules."""

from __future__ import annotations

import dataclasses
from typing import Any, get_args, get_type_hints

import pytest

from detkeeper.config import RunConfig, SourceConfig, TrainConfig
from detkeeper.config.schema import AugmentConfig
from detkeeper.config.validate import from_data


def _sections(cls: type) -> set[type]:
    """`cls` and every dataclass reachable from its fields' types (Optional ones included)."""
    found = {cls}
    for hint in get_type_hints(cls).values():
        for tp in get_args(hint) or (hint,):
            if dataclasses.is_dataclass(tp):
                found |= _sections(tp)
    return found


def test_every_field_has_a_one_sentence_help() -> None:
    sections = _sections(RunConfig)
    assert SourceConfig in sections and TrainConfig in sections
    for cls in sections:
        for field in dataclasses.fields(cls):
            help_text = field.metadata.get("help", "")
            assert help_text.endswith("."), f"{cls.__name__}.{field.name} needs a help sentence"


def test_defaults_are_valid_and_equal_an_empty_config() -> None:
    config, problems = from_data(RunConfig, {})
    assert problems == []
    assert config == RunConfig()


def _problems(data: dict[str, Any]) -> list[str]:
    config, problems = from_data(TrainConfig, data)
    assert config is None
    return [f"{'.'.join(map(str, p.key))}: {p.message}" for p in problems]


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"steps": True}, "steps", "an integer"),
        ({"steps": 10.0}, "steps", "an integer"),
        ({"steps": "10"}, "steps", "an integer"),
        ({"mixed_precision": 1}, "mixed_precision", "true or false"),
        ({"optimizer": {"learning_rate": "fast"}}, "optimizer.learning_rate", "a number > 0"),
        ({"optimizer": {"clipnorm": 0}}, "optimizer.clipnorm", "or null"),
        ({"schedule": {"decay_steps": [100, "x"]}}, "schedule.decay_steps.1", "an integer"),
        ({"schedule": {"decay_steps": [300, 200]}}, "schedule.decay_steps", "increasing"),
        ({"ema_decay": 1.0}, "ema_decay", "< 1"),
        ({"optimizer": 3}, "optimizer", "a mapping"),
    ],
)
def test_type_and_range_errors_name_key_and_expectation(data: dict, key: str, expected: str):
    [problem] = _problems(data)
    assert problem.startswith(f"{key}: ")
    assert expected in problem


def test_ints_are_accepted_for_floats() -> None:
    config, problems = from_data(TrainConfig, {"optimizer": {"learning_rate": 1}})
    assert problems == []
    assert config.optimizer.learning_rate == 1.0
    assert isinstance(config.optimizer.learning_rate, float)


def test_source_cross_checks() -> None:
    _, problems = from_data(SourceConfig, {"format": "coco", "path": "a.json", "split": "train"})
    assert [p.key for p in problems] == [("split",)]
    _, problems = from_data(SourceConfig, {"format": "voc", "path": "voc", "images": "img"})
    assert [p.key for p in problems] == [("images",)]


def test_missing_required_key() -> None:
    _, problems = from_data(SourceConfig, {"format": "voc"})
    assert [p.key for p in problems] == [("path",)]
    assert "required" in problems[0].message


@pytest.mark.parametrize("value", [-0.1, 1.5, "often"])
def test_mosaic_is_a_probability(value) -> None:
    config, problems = from_data(AugmentConfig, {"mosaic": value})
    assert config is None
    [problem] = [f"{'.'.join(map(str, p.key))}: {p.message}" for p in problems]
    assert problem.startswith("mosaic: ") and "a number >= 0 and <= 1" in problem, problem


def test_mosaic_is_off_by_default_and_takes_zero_to_one() -> None:
    assert AugmentConfig().mosaic == 0.0
    for value in (0, 0.5, 1):
        config, problems = from_data(AugmentConfig, {"mosaic": value})
        assert problems == [] and config.mosaic == float(value)
