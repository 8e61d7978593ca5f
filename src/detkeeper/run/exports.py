"""An export directory's layout, and the run's exports with how their verification went.

``detkeeper export`` writes through these names and every reader (report, evaluate, fine-tuning,
``config import``) finds an export's parts through them. A published export is a folder with
``metadata.json`` (model, source checkpoint, thresholds) and ``verification.json`` (written
last: what was compared with the checkpoint and the result, TFLite results included). An export
that failed verification published nothing and left ``<name>.verification-failed.json`` beside
where it would have gone. Exports written elsewhere (``detkeeper export --out``) are not found
here.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from detkeeper.errors import DetkeeperError
from detkeeper.run.checkpoints import STEP_PREFIX
from detkeeper.run.layout import CONFIG_FILE, LABEL_MAP_FILE, RunDirectory

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_DIR = "saved_model"  # the SavedModel's folder inside an export directory
ASSETS_DIR = "assets"  # inside the SavedModel: the files below, as the module's assets
VARIABLES_PREFIX = ("variables", "variables")  # the SavedModel's weights, readable as a checkpoint
KERAS_FILE = "model.keras"
METADATA_FILE = "metadata.json"
VERIFICATION_FILE = "verification.json"  # written last: its presence marks a published export
FAILED_SUFFIX = ".verification-failed.json"
PARTIAL_PREFIX = ".partial-"
REPLACED_PREFIX = f"{PARTIAL_PREFIX}replaced-"
#: The export's copies of the run's files, read back to rebuild its model (fine-tuning, evaluate).
EXPORT_ASSETS = (CONFIG_FILE, LABEL_MAP_FILE)
TFLITE_DIR = "tflite"
#: Variant name -> file name, in the order they are converted.
TFLITE_FILES = {"float32": "model_float32.tflite", "int8_dynamic": "model_int8_dynamic.tflite"}
TFLITE_CONTRACT_FILE = "tflite.json"
#: Variant name -> what it is, as the CLI and the report name it (``quantization`` in tflite.json's
#: models; named here too for exports written before tflite.json did).
TFLITE_QUANTIZATION = {"float32": "float32 (not quantized)",
                       "int8_dynamic": "dynamic-range int8 (int8 weights, float32 activations)"}


@dataclasses.dataclass(frozen=True)
class ExportPaths:
    """Every path of one export directory `out`, and those written beside it while it is made."""

    out: Path

    @property
    def staging(self) -> Path:
        return self.out.parent / f"{PARTIAL_PREFIX}{self.out.name}"

    @property
    def replaced(self) -> Path:
        return self.out.parent / f"{REPLACED_PREFIX}{self.out.name}"

    @property
    def failed_record(self) -> Path:
        return self.out.parent / f"{self.out.name}{FAILED_SUFFIX}"

    @property
    def saved_model(self) -> Path:
        return self.out / SAVED_MODEL_DIR

    @property
    def keras(self) -> Path:
        return self.out / KERAS_FILE

    @property
    def metadata(self) -> Path:
        return self.out / METADATA_FILE

    @property
    def verification(self) -> Path:
        return self.out / VERIFICATION_FILE

    @property
    def tflite(self) -> Path:
        return self.out / TFLITE_DIR


def default_export_dir(run: RunDirectory, name: str) -> Path:
    """Where ``detkeeper export`` puts the export of checkpoint `name` without ``--out``."""
    return run.exports_path / name


def is_export_dir(path: Path) -> bool:
    """Whether `path` looks like an export directory rather than a run."""
    return (path / METADATA_FILE).is_file() or (path / SAVED_MODEL_DIR).is_dir()


def export_assets(saved_model: Path) -> Path:
    """The assets folder of an export's SavedModel: laid out like a run directory (config, label map)."""
    return saved_model / ASSETS_DIR


def exported_variables(saved_model: Path) -> Path:
    """The checkpoint prefix of a SavedModel's weights."""
    return saved_model.joinpath(*VARIABLES_PREFIX)


def is_detkeeper_export(saved_model: Path) -> bool:
    """Whether a SavedModel was written by ``detkeeper export`` (its metadata among the assets)."""
    return (export_assets(saved_model) / METADATA_FILE).is_file()


def read_export_source(folder: Path) -> dict[str, Any]:
    """The ``source`` section (run_dir, checkpoint, step, EMA) of the ``metadata.json`` in `folder`
    (an export, or its SavedModel's assets); empty when there is none, a DetkeeperError when the
    file is not JSON."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DetkeeperError(f"{path}: not readable JSON ({error}); the export is damaged: export it "
                             "again from its run") from None
    source = metadata.get("source") if isinstance(metadata, dict) else None
    return source if isinstance(source, dict) else {}


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
        number = self.name[len(STEP_PREFIX):]
        if self.name.startswith(STEP_PREFIX) and number.isdigit():
            return int(number)
        return None

    @property
    def tflite_models(self) -> dict[str, dict[str, Any]]:
        """TFLite results by variant, each with its ``quantization`` (named here for older exports)."""
        tflite = (self.verification or {}).get("tflite") or {}
        return {variant: {"quantization": TFLITE_QUANTIZATION.get(variant, variant), **model}
                for variant, model in (tflite.get("models") or {}).items() if isinstance(model, dict)}


def find_exports(run: RunDirectory) -> list[ExportRecord]:
    """Exports under ``RUN/exports``, newest first (folders being written are skipped)."""
    folder = run.exports_path
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
