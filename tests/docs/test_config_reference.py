"""docs/config-reference.md is generated from the config dataclasses and must match them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from detkeeper.cli.main import main
from detkeeper.config.reference import REGENERATE_COMMAND, all_config_classes, render_reference
from detkeeper.config.schema import RunConfig

REPO = Path(__file__).resolve().parents[2]
CHECKED_IN = REPO / "docs" / "config-reference.md"


def test_checked_in_reference_is_what_the_generator_writes():
    assert CHECKED_IN.exists(), f"docs/config-reference.md is missing; run `{REGENERATE_COMMAND}` (or `make docs`)"
    assert CHECKED_IN.read_text(encoding="utf-8") == render_reference(), (
        f"docs/config-reference.md is out of date with src/detkeeper/config/schema.py; "
        f"run `{REGENERATE_COMMAND}` (or `make docs`) and commit the result")


def test_every_config_field_and_section_is_explained():
    classes = all_config_classes()
    assert RunConfig in classes and len(classes) >= 15
    missing = [f"{cls.__name__}.{field.name}" for cls in classes for field in dataclasses.fields(cls)
               if not str(field.metadata.get("help", "")).strip()]
    assert not missing, f"config fields without a help text: {', '.join(missing)}"
    undocumented = [cls.__name__ for cls in classes if not (cls.__doc__ or "").strip()]
    assert not undocumented, f"config sections without a docstring: {', '.join(undocumented)}"


def test_every_key_appears_with_its_dotted_path_type_and_default():
    text = render_reference()
    for row in ("| `run_dir` | `path` | `runs/default` |",
                "| `model.image_size` | `int >= 32` | `320` |",
                '| `train.optimizer.name` | `"sgd" \\| "adam" \\| "adamw"` | `sgd` |',
                "| `data.augment.colour_jitter` | `float in [0, 1]` | `0.1` |",
                "| `train.ema_decay` | `float in (0, 1), or null` | `null` |",
                "| `model.init_from.path` | `path` | *required* |",
                "| `data.<train\\|val\\|test>.format` |",
                '| `model.backbone.weights` | `"imagenet" \\| "none" \\| path` | `none` |',
                "| `train.schedule.decay_steps` | `list of int` | `[]` |"):
        assert row in text, row
    for cls in all_config_classes():
        for field in dataclasses.fields(cls):
            assert f".{field.name}` |" in text or f"| `{field.name}` |" in text, f"{cls.__name__}.{field.name}"


def test_the_command_prints_and_writes_the_same_reference(capsys, tmp_path):
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()
    out = tmp_path / "docs" / "reference.md"
    assert main(["config", "reference", "--out", str(out), "--quiet"]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()
