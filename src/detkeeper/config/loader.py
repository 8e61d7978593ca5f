"""Load a run config from a YAML file or preset, apply `--set` overrides, validate, save it.

A config is built from layers merged in order: the preset a file names with ``preset: NAME``,
the file itself, then each override ``a.b.c=value``. Every key remembers the layer that set it,
so an error names the file (or override) the user has to edit, and a relative path resolves
against the folder of the file that wrote it (presets and overrides: the working directory).
Nothing is ever eval'd or exec'd; values are parsed as YAML data only.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import os
import re
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from detkeeper import __version__
from detkeeper.config.schema import SPLITS, WEIGHTS_KEYWORDS, RunConfig, SourceConfig
from detkeeper.config.validate import KeyPath, Problem, format_key, from_data
from detkeeper.config.yamlio import dump_yaml, parse_yaml
from detkeeper.errors import ConfigError
from detkeeper.files import atomic_write_text, is_url, unfilled_placeholders

_PRESET_SUFFIX = ".yaml"
_OVERRIDE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclasses.dataclass(frozen=True)
class _Origin:
    """A layer of the config: how errors name it, and where its relative paths start from."""

    label: str
    base_dir: str


@dataclasses.dataclass(frozen=True)
class _Layer:
    data: Mapping[str, Any]
    origin: _Origin


def list_presets() -> list[str]:
    """Names of the presets shipped with detkeeper, sorted."""
    folder = resources.files("detkeeper.config").joinpath("presets")
    return sorted(
        entry.name[: -len(_PRESET_SUFFIX)]
        for entry in folder.iterdir()
        if entry.name.endswith(_PRESET_SUFFIX)
    )


def _preset_text(name: str) -> str:
    return resources.files("detkeeper.config").joinpath("presets", name + _PRESET_SUFFIX).read_text("utf-8")


def preset_summary(name: str) -> str:
    """What preset `name` is for: the first clause of its header comment (``# name: a small ...;``),
    which every preset file opens with."""
    text = _preset_text(name)
    header = " ".join(line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#"))
    header = header.removeprefix(f"{name}:").strip()
    return re.split(r"[;.](?:\s|$)", header, maxsplit=1)[0]


ConfigCheck = Callable[[RunConfig], Sequence[Problem]]
"""A check from a layer above config (the model registry, the monitors): its problems are
reported like the schema's, with the file each key came from."""


def load_config(source: str | os.PathLike, overrides: Sequence[str] = (),
                checks: Sequence[ConfigCheck] = ()) -> RunConfig:
    """Load, merge, validate and resolve a run config; raise one ConfigError listing every problem.

    `source` is a YAML file, or the name of a preset when no such file exists. `overrides` are
    ``key.path=value`` strings, values parsed as YAML (``data.val=null``, ``x.y=[1, 2]``).
    `checks` run on the resolved config once the schema and the files pass.
    """
    layers = _source_layers(os.fspath(source), chain=())
    fallback = layers[-1].origin.label
    layers += [_override_layer(text) for text in overrides]
    merged: dict[str, Any] = {}
    origins: dict[KeyPath, _Origin] = {}
    for layer in layers:
        _merge(merged, layer.data, layer.origin, (), origins)
    config, problems = from_data(RunConfig, merged)
    if config is None:
        raise ConfigError(_problems_message(problems, origins, fallback))
    config = _resolve_paths(config, (), origins)
    problems = _missing_files(config)
    if not problems:
        problems = [problem for check in checks for problem in check(config)]
    if problems:
        raise ConfigError(_problems_message(problems, origins, fallback))
    return config


def check_config(config: RunConfig, checks: Sequence[ConfigCheck], label: str = "config") -> None:
    """Run `checks` on a config that was built in code (no file to name); one ConfigError listing all."""
    problems = [problem for check in checks for problem in check(config)]
    if problems:
        raise ConfigError(_problems_message(problems, {}, label))


def config_to_dict(config: Any) -> Any:
    """The config as plain YAML-able data: dicts in field order, lists, scalars and None."""
    if dataclasses.is_dataclass(config):
        return {
            field.name: config_to_dict(getattr(config, field.name))
            for field in dataclasses.fields(config)
        }
    if isinstance(config, (list, tuple)):
        return [config_to_dict(item) for item in config]
    if isinstance(config, dict):
        return {name: config_to_dict(value) for name, value in config.items()}
    return config


def config_to_yaml(config: RunConfig) -> str:
    """The config as YAML that `load_config` reads back equal (strings like "1e5" stay quoted)."""
    return dump_yaml(config_to_dict(config))


def save_config(config: RunConfig, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically; `load_config(path)` gives it back equal."""
    header = (
        f"# Resolved config of this run, written by detkeeper {__version__}: every default filled\n"
        "# in and every path absolute. Load it again to repeat the run exactly.\n"
    )
    return atomic_write_text(path, header + config_to_yaml(config))


def _source_layers(source: str, chain: tuple[str, ...]) -> list[_Layer]:
    """The layers of a file or preset: its own `preset:` chain first, then itself."""
    path = Path(source)
    if path.is_file():
        origin = _Origin(label=source, base_dir=os.path.dirname(os.path.abspath(path)))
        text = _read_text(path, source)
    elif path.exists():
        raise ConfigError(f"{source}: expected a YAML config file, found a directory")
    elif source in list_presets():
        origin = _Origin(label=f"preset {source!r}", base_dir=os.getcwd())
        text = _preset_text(source)
    else:
        raise ConfigError(
            f"{source}: no such config file, and no preset of that name; "
            f"presets: {', '.join(list_presets())}"
        )
    data = parse_yaml(text, origin.label)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{origin.label}: expected a mapping of config sections at the top level, "
            f"got {type(data).__name__}"
        )
    if "preset" not in data:
        return [_Layer(data, origin)]
    base = data.pop("preset")
    if not isinstance(base, str) or base not in list_presets():
        raise ConfigError(
            f"{origin.label}: preset: expected one of {', '.join(map(repr, list_presets()))}, "
            f"got {base!r}"
        )
    if base in chain:
        raise ConfigError(f"{origin.label}: preset: {base!r} includes itself")
    return _source_layers(base, chain + (base,)) + [_Layer(data, origin)]


def _read_text(path: Path, label: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{label}: not a UTF-8 text file ({error.reason})") from None
    except OSError as error:
        raise ConfigError(f"{label}: cannot read the config file ({error.strerror})") from None


def _override_layer(text: str) -> _Layer:
    """`train.optimizer.name=adam` -> {"train": {"optimizer": {"name": "adam"}}}."""
    label = f"override {text!r}"
    key, equals, raw_value = text.partition("=")
    key = key.strip()
    if not equals or not _OVERRIDE_KEY.match(key) or not raw_value.strip():
        raise ConfigError(
            f"{label}: expected KEY=VALUE with a dotted key, like train.steps=500 or data.val=null"
        )
    value = parse_yaml(raw_value, label)
    for part in reversed(key.split(".")):
        value = {part: value}
    return _Layer(value, _Origin(label=label, base_dir=os.getcwd()))


def _merge(
    target: dict, layer: Mapping, origin: _Origin, key: KeyPath, origins: dict[KeyPath, _Origin]
) -> None:
    """Deep-merge `layer` into `target`: mappings merge, anything else replaces."""
    for name, value in layer.items():
        child = key + (name,)
        merges = isinstance(value, Mapping) and isinstance(target.get(name), dict)
        if not merges:
            for replaced in [known for known in origins if _is_inside(known, child)]:
                del origins[replaced]
            target[name] = {} if isinstance(value, Mapping) else copy.deepcopy(value)
        origins[child] = origin
        if isinstance(value, Mapping):
            _merge(target[name], value, origin, child, origins)


def _is_inside(key: KeyPath, section: KeyPath) -> bool:
    return len(key) > len(section) and key[: len(section)] == section


def _origin_of(key: KeyPath, origins: Mapping[KeyPath, _Origin]) -> _Origin | None:
    """The layer that set `key` or, for a default or missing key, its nearest set parent."""
    for length in range(len(key), 0, -1):
        if key[:length] in origins:
            return origins[key[:length]]
    return None


def _resolve_paths(config: Any, key: KeyPath, origins: Mapping[KeyPath, _Origin]) -> Any:
    """Make every path field absolute, relative to the folder of the layer that set it."""
    changes = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        child = key + (field.name,)
        if dataclasses.is_dataclass(value):
            resolved = _resolve_paths(value, child, origins)
            if resolved is not value:
                changes[field.name] = resolved
        elif _is_path(field, value):
            origin = origins.get(child)
            base = origin.base_dir if origin else os.getcwd()
            if isinstance(config, SourceConfig) and field.name == "path":
                changes[field.name] = ",".join(_absolute(part, base) for part in config.patterns())
            else:
                changes[field.name] = _absolute(value, base)
    return dataclasses.replace(config, **changes) if changes else config


def _is_path(field: dataclasses.Field, value: Any) -> bool:
    """Whether `value` of `field` names a file: a path field that is set and not a keyword."""
    return (
        bool(field.metadata.get("path"))
        and value is not None
        and value not in field.metadata["path_keywords"]
    )


def _absolute(path: str, base: str) -> str:
    if is_url(path):
        return path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _placeholders(config: Any, key: KeyPath = ()) -> list[Problem]:
    """Every path field still holding a sample config's placeholder (``gs://${YOUR_GCS_BUCKET}/..``)."""
    problems = []
    for field in dataclasses.fields(config):
        value, child = getattr(config, field.name), key + (field.name,)
        if dataclasses.is_dataclass(value):
            problems += _placeholders(value, child)
        elif field.metadata.get("path") and isinstance(value, str):
            for placeholder in unfilled_placeholders(value):
                problems.append(Problem(child, f"unfilled placeholder {placeholder} in {value!r}; replace "
                                               "it with the real location"))
    return problems


def _path_exists(path: str, kind: str = "any") -> bool:
    """`path` is there: `kind` "file", "dir", "any", or "glob" (a pattern matching something).
    URLs (``gs://``) are asked of tf.io.gfile."""
    if not is_url(path):
        local = {"file": os.path.isfile, "dir": os.path.isdir, "glob": glob.glob}.get(kind, os.path.exists)
        return bool(local(path))
    import tensorflow as tf  # light: only a URL needs gfile; `detkeeper config` starts without TensorFlow

    gfile = {"dir": tf.io.gfile.isdir, "glob": tf.io.gfile.glob}.get(kind, tf.io.gfile.exists)
    return bool(gfile(path))


def _missing_files(config: RunConfig) -> list[Problem]:
    """Every input file the config names that is not on disk (generated and output paths aside)."""
    problems = _placeholders(config)
    if problems:
        return problems
    for split in SPLITS:
        source = getattr(config.data, split)
        if source is not None:
            problems += _missing_source_files(source, ("data", split))
    label_map = config.data.label_map
    if label_map is not None and not _path_exists(label_map, "file"):
        problems.append(
            Problem(("data", "label_map"), f"expected an existing label map, got {label_map!r}")
        )
    init_from = config.model.init_from
    if init_from is not None and not (_path_exists(init_from.path) or _path_exists(init_from.path + ".index")):
        problems.append(Problem(
            ("model", "init_from", "path"),
            f"expected an existing run directory, checkpoint or export, got {init_from.path!r}"))
    weights = config.model.backbone.weights
    if weights not in WEIGHTS_KEYWORDS and not _path_exists(weights):
        problems.append(
            Problem(
                ("model", "backbone", "weights"),
                f"expected an existing weights file, got {weights!r}",
            )
        )
    return problems


def _missing_source_files(source: SourceConfig, key: KeyPath) -> list[Problem]:
    path_key = key + ("path",)
    if source.format == "voc" and not _path_exists(source.path, "dir"):
        return [Problem(path_key, f"expected an existing VOC dataset folder, got {source.path!r}")]
    if source.format == "coco":
        problems = []
        if not _path_exists(source.path, "file"):
            problems.append(
                Problem(path_key, f"expected an existing COCO JSON file, got {source.path!r}")
            )
        if source.images is not None and not _path_exists(source.images, "dir"):
            problems.append(
                Problem(key + ("images",), f"expected an existing folder, got {source.images!r}")
            )
        return problems
    if source.format == "tfrecord":
        unmatched = [pattern for pattern in source.patterns() if not _path_exists(pattern, "glob")]
        if unmatched:
            missing = ", ".join(map(repr, unmatched))
            return [
                Problem(path_key, f"expected each pattern to match a file, got none for {missing}")
            ]
    return []


def _problems_message(
    problems: Sequence[Problem], origins: Mapping[KeyPath, _Origin], fallback: str
) -> str:
    """One line per problem: `<file>: <key.path>: <expected>, got <value>`."""
    lines = []
    for problem in problems:
        origin = _origin_of(problem.key, origins)
        label = origin.label if origin else fallback
        lines.append(f"  {label}: {format_key(problem.key)}: {problem.message}")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"invalid config ({count}):\n" + "\n".join(lines)
