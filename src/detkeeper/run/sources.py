"""Where a model comes from: a run directory, one of its checkpoints, or an export.

Evaluate, export, predict, fine-tuning and ``config import`` all take a "model" path; this is
the one place that tells the kinds apart (:mod:`.restore` then restores a kept checkpoint). No
TensorFlow here: the light ``config import`` asks it whether a path is a detkeeper model.
"""

from __future__ import annotations

import os
from pathlib import Path

from detkeeper.config.loader import load_config
from detkeeper.config.schema import SPLITS
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.run.checkpoints import STEP_FOLDER, STEP_PREFIX
from detkeeper.run.exports import METADATA_FILE, SAVED_MODEL_DIR, SAVED_MODEL_FILE
from detkeeper.run.layout import CHECKPOINTS_DIR, CONFIG_FILE, RunDirectory
from detkeeper.run.ledger import CHECKPOINT_PREFIX, LEDGER_NAME


def find_saved_model(path: str | os.PathLike) -> Path | None:
    """The SavedModel folder `path` names (an export directory, its ``saved_model/`` folder or the
    ``saved_model.pb`` in it), or None when `path` is not a SavedModel."""
    source = Path(path)
    if source.name == SAVED_MODEL_FILE and source.is_file():
        return source.parent
    for folder in (source, source / SAVED_MODEL_DIR):
        if (folder / SAVED_MODEL_FILE).is_file():
            return folder
    return None


def resolve_model_source(path: str | os.PathLike, checkpoint: str | int | None = None) -> tuple[RunDirectory, str]:
    """The run directory `path` belongs to and which checkpoint (best/latest/step) it names.

    Exports are told apart first with :func:`find_saved_model`; here they are refused."""
    source = Path(path)
    if find_saved_model(source) is not None:
        raise DetkeeperError(f"{path}: an exported SavedModel, not a run directory or checkpoint; this "
                             f"command needs the run it was exported from (its {METADATA_FILE} names it)")
    folder = source if source.is_dir() else source.parent
    step = STEP_FOLDER.fullmatch(folder.name)
    if step and folder.is_dir() and (folder.parent / LEDGER_NAME).is_file():
        if checkpoint is not None and str(checkpoint) != str(int(step.group(1))):
            raise DetkeeperError(f"{path} is the checkpoint of step {int(step.group(1))}; --checkpoint "
                                 f"{checkpoint} contradicts it (give a run directory to choose by --checkpoint)")
        return RunDirectory(folder.parent.parent), str(int(step.group(1)))
    if source.is_dir() and (source / LEDGER_NAME).is_file() and not RunDirectory.is_run(source):
        source = source.parent  # RUN/checkpoints
    if source.is_dir() and RunDirectory.is_run(source):
        return RunDirectory(source), str(checkpoint) if checkpoint is not None else "best"
    if not source.exists() and not Path(f"{source}.index").is_file():
        raise DetkeeperError(f"{path}: no such run directory, checkpoint or SavedModel")
    raise DetkeeperError(f"{path}: not a run directory ({CONFIG_FILE} inside), a checkpoint of one "
                         f"(RUN/{CHECKPOINTS_DIR}/{STEP_PREFIX}NNNNNNN/{CHECKPOINT_PREFIX}, listed in its "
                         f"{LEDGER_NAME}) or an exported SavedModel ({SAVED_MODEL_FILE} inside)")


def run_config(run: RunDirectory, keep_split: str | None = None):
    """The run's resolved config, without what restoring never reads: the splits other than
    `keep_split` (so a moved training set does not block evaluating the test set) and the backbone's
    initial weights (the checkpoint replaces every weight; no ImageNet download)."""
    for needed in (run.config_path, run.label_map_path):
        if not needed.is_file():
            raise DetkeeperError(f"{run.path}: no {needed.name}; is this a run directory that training has "
                                 "started?")
    if keep_split is not None:
        configured = run.configured_splits()
        if keep_split not in configured:
            raise DataError(f"{run.config_path}: the run's config sets no data.{keep_split} (it sets "
                            f"{', '.join(f'data.{name}' for name in configured) or 'no split'}); give --data "
                            "a dataset path to evaluate other data")
    overrides = ["model.backbone.weights=none", "model.init_from=null", "data.label_map=null"]
    overrides += [f"data.{name}=null" for name in SPLITS if name != keep_split]
    return load_config(run.config_path, overrides)


def is_detkeeper_model(path: str | os.PathLike) -> bool:
    """Whether `path` is a detkeeper run directory, one of its checkpoints or a detkeeper export."""
    saved_model = find_saved_model(path)
    if saved_model is not None:
        export = saved_model.parent if saved_model.name == SAVED_MODEL_DIR else saved_model
        return (export / METADATA_FILE).is_file()
    try:
        resolve_model_source(path)
    except DetkeeperError:
        return False
    return True
