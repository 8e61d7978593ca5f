"""A TF Object Detection API ``pipeline.config`` as a detkeeper run config (``detkeeper config import``).

The pipeline is read with :mod:`detkeeper.tfod.pbtxt` (no schema, no TensorFlow) and mapped
section by section onto :class:`~detkeeper.config.schema.RunConfig` data. Every field the file
holds ends up in exactly one of two lists: :attr:`ImportResult.mapped` (what it became in
detkeeper, approximations said so) or :attr:`ImportResult.not_carried` (its dotted path and
why). The second list is computed by walking the parsed file after the mapping, so a field the
mapping never looked at cannot go unreported.

Relative paths (TFRecords, label map, checkpoint) are resolved from `base_dir`, by default the
current directory, as ``model_main_tf2.py`` resolved them; the YAML names them relative to its
own folder (absolute ones stay absolute), so it loads from anywhere.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detkeeper.config.schema import RunConfig
from detkeeper.config.validate import format_key, from_data
from detkeeper.config.yamlio import dump_yaml
from detkeeper.errors import ConfigError
from detkeeper.files import atomic_write_text, is_url, unfilled_placeholders
from detkeeper.tfod.mapping import map_model
from detkeeper.tfod.tracking import Mapped, Note, Tracker, unmapped_notes
from detkeeper.tfod.pbtxt import parse_text_format
from detkeeper.tfod.training import map_evaluation, map_inputs, map_train

__all__ = ["ImportResult", "Mapped", "Note", "import_pipeline_config", "write_imported_config"]


@dataclass(frozen=True)
class ImportResult:
    """The detkeeper config made from a pipeline.config, and what became of each of its fields."""

    source: Path
    data: dict[str, Any]
    """The run config as YAML data; validated against the schema (not for files on disk)."""
    mapped: tuple[Mapped, ...]
    not_carried: tuple[Note, ...]
    missing_files: tuple[str, ...]
    """Input files the config names that do not exist (yet): `load_config` refuses it until they do."""
    placeholders: tuple[str, ...] = ()
    """Paths still holding a sample config's placeholder (``gs://${YOUR_GCS_BUCKET}/...``), as
    ``key: placeholder in 'path'``: `load_config` refuses them until they are filled in."""
    num_classes: int | None = None
    """The pipeline's ``num_classes`` (a run takes its classes from the label map it reads)."""

    def to_yaml(self) -> str:
        """The YAML file: a header with the not-carried-over notes as comments, then the config."""
        lines = [f"# Imported from the TF Object Detection API pipeline config {self.source}",
                 "# by `detkeeper config import`. Relative paths here are relative to this file."]
        if self.not_carried:
            lines.append(f"# Not carried over ({len(self.not_carried)}):")
            lines += [f"#   {_one_line(note.describe())}" for note in self.not_carried]
        else:
            lines.append("# Every field of the pipeline config was carried over.")
        return "\n".join(lines) + "\n" + dump_yaml(self.data)


def import_pipeline_config(path: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
                           base_dir: str | os.PathLike | None = None, run_dir: str | None = None
                           ) -> ImportResult:
    """Read the pipeline config `path` and map it onto a detkeeper run config.

    `base_dir` is where the pipeline's relative paths start (default: the current directory, as
    for ``model_main_tf2.py``); `out_dir` the folder the YAML will be written to (paths in it are
    relative to that folder; default: the current directory). `run_dir` (default
    ``runs/<name>``) is written as given. Raises :class:`ConfigError` for a file that is not
    protobuf text, a model kind detkeeper cannot map, or values out of detkeeper's ranges.
    """
    source = Path(path)
    text = _read(source)
    root = parse_text_format(text, str(source))
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    out = Path(out_dir) if out_dir is not None else Path.cwd()
    tracker = Tracker(label=str(source), base_dir=base.absolute(), out_dir=out.absolute())
    top = tracker.root(root)
    for section in ("model", "train_config"):
        if not top.has(section):
            raise ConfigError(f"{source}: no `{section} {{ ... }}` section; a TF Object Detection API "
                              "pipeline config has model, train_config and the input readers")
    data: dict[str, Any] = {"run_dir": run_dir or f"runs/{default_run_name(source)}"}
    tracker.map("model_main_tf2 --model_dir", "run_dir", data["run_dir"],
                "checkpoints, logs and exports of the run go here")
    model, num_classes, model_evaluation = map_model(top.child("model"))
    train, augment, max_boxes = map_train(top.child("train_config"), model)
    data["model"] = model
    data["data"] = map_inputs(top, num_classes)
    data["data"]["augment"] = augment
    if max_boxes is not None:
        data["data"]["max_boxes"] = max_boxes
    data["train"] = train
    data["evaluation"] = map_evaluation(top, model_evaluation, train)
    notes = unmapped_notes(root, tracker)
    config, problems = from_data(RunConfig, data)
    if config is None:
        listed = "\n".join(f"  {format_key(problem.key)}: {problem.message}" for problem in problems)
        raise ConfigError(f"{source}: the imported values are outside detkeeper's ranges:\n{listed}")
    placeholders = _placeholders(data)
    return ImportResult(source=source, data=data, mapped=tuple(tracker.mapped), not_carried=tuple(notes),
                        missing_files=tuple(_missing_files(data, out)), placeholders=tuple(placeholders),
                        num_classes=num_classes)


def write_imported_config(result: ImportResult, out: str | os.PathLike, *, force: bool = False) -> Path:
    """Write `result` as YAML to `out` atomically; an existing file is replaced only with `force`."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"{out}: is a directory; give the YAML file to write (--out run.yaml)")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to replace it")
    try:
        return atomic_write_text(out, result.to_yaml())
    except OSError as error:
        raise ConfigError(f"{out}: cannot write the imported config ({error.strerror or error})") from None


def default_run_name(source: Path) -> str:
    """``runs/<name>``: the file's stem, or its folder's name for a TF OD API ``pipeline.config``
    (whose model_dir is, by convention, the folder holding it)."""
    if source.stem == "pipeline" and source.absolute().parent.name:
        return source.absolute().parent.name
    return source.stem or "imported"


def _read(source: Path) -> str:
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such pipeline config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: a directory; give the pipeline.config file inside it") from None
    except OSError as error:
        raise ConfigError(f"{source}: cannot read the pipeline config ({error.strerror or error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{source}: not a UTF-8 text file (byte {error.start}); a pipeline config is "
                          "protobuf text format") from None


def _input_paths(data: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, path)`` of every input the imported config names, one per TFRecord pattern."""
    paths = []
    for split in ("train", "val"):
        source = data["data"].get(split)
        if source:
            paths += [(f"data.{split}.path", pattern) for pattern in source["path"].split(",")]
    if data["data"].get("label_map"):
        paths.append(("data.label_map", data["data"]["label_map"]))
    init_from = data["model"].get("init_from")
    if init_from:
        paths.append(("model.init_from.path", init_from["path"]))
    return paths


def _placeholders(data: dict[str, Any]) -> list[str]:
    return [f"{key}: {placeholder} in {path!r}" for key, path in _input_paths(data)
            for placeholder in unfilled_placeholders(path)]


def _missing_files(data: dict[str, Any], out_dir: Path) -> list[str]:
    """Each local input pattern or file the config names that matches nothing, as written in the YAML.
    URLs are not looked up here (that needs TensorFlow; `load_config` does it); placeholders are
    reported by :func:`_placeholders` instead."""
    missing = []
    for key, path in _input_paths(data):
        if is_url(path) or unfilled_placeholders(path) or key == "model.init_from.path":
            continue
        if not glob.glob(str(out_dir / path)):
            missing.append(f"{key}: {path}")
    return missing


def _one_line(text: str) -> str:
    return " ".join(text.split())
