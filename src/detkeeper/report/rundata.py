"""What a run directory holds, read for the report without training anything or loading a model.

The run's ``config.yaml`` is read as plain YAML, not validated: a report must still describe a run
whose datasets have moved since. The checkpoint ledger is the source of truth for the kept
checkpoints, the evaluation history and how the run ended.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DetkeeperError
from detkeeper.run.exports import METADATA_FILE, is_export_dir, read_export_source
from detkeeper.run.layout import CHECKPOINTS_DIR, CONFIG_FILE, RunDirectory
from detkeeper.run.ledger import LEDGER_NAME, Ledger, LedgerEntry


@dataclasses.dataclass(frozen=True)
class RunContents:
    """The run directory's config, classes and ledger; `problems` names the parts that could not be read."""

    run: RunDirectory
    config: dict[str, Any]
    label_map: LabelMap | None
    ledger: Ledger | None
    problems: tuple[str, ...] = ()

    @property
    def best(self) -> LedgerEntry | None:
        return self.ledger.best if self.ledger is not None else None

    @property
    def monitor(self) -> str:
        if self.ledger is not None:
            return self.ledger.policy.monitor
        return str(self.section("evaluation").get("monitor", "val_mAP"))

    def section(self, name: str) -> dict[str, Any]:
        value = self.config.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def total_steps(self) -> int | None:
        steps = self.section("train").get("steps")
        return int(steps) if isinstance(steps, (int, float)) else None

    def status(self) -> str:
        """How the run ended, in words: finished / stopped early at step N / in progress or interrupted."""
        ledger = self.ledger
        if ledger is None:
            return "not evaluated yet: training has not reached its first evaluation (no checkpoint ledger)"
        state, step = ledger.status.get("state"), ledger.status.get("step")
        if state == "finished":
            return f"finished at step {step}"
        if state == "stopped_early":
            return f"stopped early at step {step}"
        latest = ledger.latest
        of_total = f" of {self.total_steps}" if self.total_steps else ""
        where = f"latest checkpoint at step {latest.step}{of_total}" if latest else "no checkpoint kept yet"
        return f"training in progress, or interrupted ({where}; rerun `detkeeper train` to resume)"

    def best_text(self) -> str:
        best = self.best
        if best is None:
            return "no best checkpoint yet" if self.ledger is None or not self.ledger.history else \
                f"no best checkpoint: every {self.monitor} was NaN"
        return f"{self.monitor} {format_number(best.monitor_value)} @ step {best.step} ({best.name})"


def read_run(path: str | os.PathLike) -> RunContents:
    """Read the run directory at `path`; a folder that is not one is a :class:`DetkeeperError`."""
    run = RunDirectory(path)
    if not run.path.exists():
        raise DetkeeperError(f"{path}: no such run directory")
    if not run.path.is_dir():
        raise DetkeeperError(f"{path}: not a run directory but a file; give the folder `detkeeper train` wrote "
                             f"(its run_dir, holding {CONFIG_FILE} and {CHECKPOINTS_DIR}/)")
    if is_export_dir(run.path):
        raise DetkeeperError(f"{path}: an export, not a run directory; give the run directory it was exported "
                             f"from ({_exported_from(run.path)}): the report shows its exports too")
    if not run.config_path.is_file():
        hint = ""
        if (run.path / LEDGER_NAME).is_file():
            hint = f" This looks like a run's {CHECKPOINTS_DIR}/ folder: give its parent, {run.path.parent}."
        raise DetkeeperError(f"{path}: not a run directory (no {CONFIG_FILE} inside); `detkeeper report` takes the "
                             f"folder `detkeeper train` wrote, e.g. runs/demo.{hint}")
    problems = []
    try:
        config = run.read_raw_config()
    except (OSError, UnicodeDecodeError, DetkeeperError) as error:
        raise DetkeeperError(f"{run.config_path}: the run's config cannot be read ({error})") from None
    if not isinstance(config, dict):
        raise DetkeeperError(f"{run.config_path}: not a detkeeper run config (a YAML mapping is expected)")
    label_map = None
    if run.label_map_path.is_file():
        try:
            label_map = LabelMap.read(run.label_map_path)
        except DetkeeperError as error:
            problems.append(f"the label map cannot be read: {error}")
    else:
        problems.append(f"no {run.label_map_path.name} in the run directory")
    ledger = None
    if run.ledger_path.is_file():
        try:
            ledger = Ledger.read(run.ledger_path)
        except DetkeeperError as error:
            problems.append(str(error))
    return RunContents(run=run, config=config, label_map=label_map, ledger=ledger, problems=tuple(problems))


def _exported_from(export: Path) -> str:
    try:
        return str(read_export_source(export)["run_dir"])
    except (DetkeeperError, KeyError):
        return f"its {METADATA_FILE} names it"


def dataset_text(contents: RunContents, split: str) -> str | None:
    """``voc /data/BCCD (split val)`` for a configured split, None when the config sets none."""
    source = contents.section("data").get(split)
    if not isinstance(source, dict):
        return None
    text = f"{source.get('format', '?')} {source.get('path', '?')}"
    if source.get("split"):
        text += f" (split {source['split']})"
    return text


def model_text(contents: RunContents) -> str:
    """``retinanet_tiny, 256 px, backbone tiny (weights none)``."""
    model = contents.section("model")
    backbone = model.get("backbone") if isinstance(model.get("backbone"), dict) else {}
    parts = [str(model.get("name", "?")), f"{model.get('image_size', '?')} px"]
    if backbone.get("name"):
        parts.append(f"backbone {backbone['name']} (weights {backbone.get('weights', '?')})")
    if model.get("preset"):
        parts.append(f"preset {model['preset']}")
    return ", ".join(parts)


def format_number(value: float | None, digits: int = 4) -> str:
    """A stat for people: ``0.4120``; NaN and missing as ``-``; COCO's undefined ``-1`` as ``n/a``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == -1:
        return "n/a"
    return f"{value:.{digits}f}"
