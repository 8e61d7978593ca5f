"""The run's exports and how their verification went, read from ``RUN/exports``.

A published export is a folder with ``metadata.json`` (model, source checkpoint, thresholds) and
``verification.json`` (written last: what was compared with the checkpoint and the result, TFLite
results included). An export that failed verification published nothing and left
``<name>.verification-failed.json`` beside where it would have gone. Exports written elsewhere
(``detkeeper export --out``) are not found here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from detkeeper.rundir import RunDirectory

FAILED_SUFFIX = ".verification-failed.json"
#: detkeeper.export.exporter's names, repeated so the report does not import TensorFlow to read JSON.
METADATA_FILE, VERIFICATION_FILE, PARTIAL_PREFIX = "metadata.json", "verification.json", ".partial-"
#: detkeeper.export.tflite.QUANTIZATION, for exports written before tflite.json named each model's quantization.
TFLITE_QUANTIZATION = {"float32": "float32 (not quantized)",
                       "int8_dynamic": "dynamic-range int8 (int8 weights, float32 activations)"}


@dataclasses.dataclass(frozen=True)
class ExportRecord:
    """One export attempt: a published folder, or the record a failed verification left."""

    name: str
    path: Path
    published: bool
    metadata: dict[str, Any] | None
    verification: dict[str, Any] | None
    modified: float
    problems: tuple[str, ...] = ()  # files that could not be read

    @property
    def passed(self) -> bool | None:
        return None if self.verification is None else bool(self.verification.get("passed"))

    @property
    def step(self) -> int | None:
        source = (self.metadata or {}).get("source") or {}
        if "step" in source:
            return int(source["step"])
        if self.name.startswith("step-") and self.name[5:].isdigit():
            return int(self.name[5:])
        return None

    @property
    def tflite_models(self) -> dict[str, dict[str, Any]]:
        """TFLite results by variant, each with its ``quantization`` (named here for older exports)."""
        tflite = (self.verification or {}).get("tflite") or {}
        return {variant: {"quantization": TFLITE_QUANTIZATION.get(variant, variant), **model}
                for variant, model in (tflite.get("models") or {}).items() if isinstance(model, dict)}


def find_exports(run: RunDirectory) -> list[ExportRecord]:
    """Exports under ``RUN/exports``, newest first (folders being written are skipped)."""
    folder = run.path / "exports"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir() and ((path / METADATA_FILE).is_file() or (path / VERIFICATION_FILE).is_file()):
            metadata, problem_metadata = _read_json(path / METADATA_FILE)
            verification, problem_verification = _read_json(path / VERIFICATION_FILE)
            problems = tuple(problem for problem in (problem_metadata, problem_verification) if problem)
            found.append(ExportRecord(path.name, path, True, metadata, verification,
                                      _modified(path / VERIFICATION_FILE, path), problems))
        elif path.is_file() and path.name.endswith(FAILED_SUFFIX):
            verification, problem = _read_json(path)
            found.append(ExportRecord(path.name[:-len(FAILED_SUFFIX)], path, False, None, verification,
                                      _modified(path), (problem,) if problem else ()))
    return sorted(found, key=lambda record: (-record.modified, record.name))


def _read_json(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.name} cannot be read ({error})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def _modified(*paths: Path) -> float:
    for path in paths:
        if path.exists():
            return path.stat().st_mtime
    return 0.0
