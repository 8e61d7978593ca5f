"""A TF OD API model folder (``pipeline.config`` + ``checkpoint/ckpt-N``) as a detkeeper model source.

Users have their models as the API leaves them: a zoo download or a ``model_main_tf2`` model dir
with its ``pipeline.config``. For the zoo SSDs detkeeper reproduces, such a folder becomes a
detkeeper run directory once: the config imported (:mod:`detkeeper.tfod.importer`), the model
built by its family, the API's checkpoint read by the API's own keys (every key and shape checked),
and the weights saved as the run's one kept checkpoint (step 0). ``predict``, ``evaluate``,
``export`` and ``detkeeper.load`` then take it as they take any run.

The run lives in detkeeper's cache (:func:`detkeeper.files.cache_directory`), keyed by what it is
made from (the config, the checkpoint files' sizes and times, the label map, detkeeper's version),
so a changed folder makes a new one; it is built under a temporary name and renamed into place,
so a half-made run is never used.

Classes: the model's class slot k is the label-map id k + 1, as in the API. The label map is the
one given, else the one the config names (relative to the folder too), else classes are named by
their ids and a warning says so; ids the label map leaves out (COCO's 90 slots, 80 names) are
named by their id.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path

import tensorflow as tf

from detkeeper import __version__
from detkeeper.config.schema import RunConfig
from detkeeper.config.validate import format_key, from_data
from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.errors import ConfigError, DetkeeperError
from detkeeper.files import cache_directory, is_url, unfilled_placeholders
from detkeeper.models.ssd.zoo_checkpoint import restore_zoo_checkpoint
from detkeeper.run.checkpoints import CheckpointStore
from detkeeper.run.layout import RunDirectory
from detkeeper.run.ledger import RetentionPolicy
from detkeeper.run.restore import build_run_model
from detkeeper.run.sources import find_saved_model
from detkeeper.tfod.importer import import_pipeline_config
from detkeeper.tfod.zoo_families import ZOO_SSD_FAMILY_NAMES

logger = logging.getLogger("detkeeper.tfod")

PIPELINE_FILE = "pipeline.config"
CHECKPOINT_DIR = "checkpoint"
_STATE_PATH = re.compile(r'^model_checkpoint_path:\s*"([^"]+)"', re.MULTILINE)
_CKPT_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def is_tfod_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder as the API leaves a model: ``pipeline.config`` and ``checkpoint/``."""
    folder = Path(path)
    return (folder / PIPELINE_FILE).is_file() and (folder / CHECKPOINT_DIR).is_dir()


def checkpoint_prefix(folder: Path) -> Path:
    """The checkpoint ``checkpoint/checkpoint`` names (TF's state file), else the highest ``ckpt-N``."""
    directory = folder / CHECKPOINT_DIR
    state = directory / "checkpoint"
    if state.is_file():
        found = _STATE_PATH.search(state.read_text("utf-8", errors="replace"))
        if found:
            named = Path(found.group(1))
            prefix = named if named.is_absolute() else directory / named.name
            if Path(f"{prefix}.index").is_file():
                return prefix
    numbered = [(int(match.group(1)), directory / name[: -len(".index")]) for name in os.listdir(directory)
                if (match := _CKPT_INDEX.match(name))]
    if not numbered:
        raise DetkeeperError(f"{folder}: no TF checkpoint in {CHECKPOINT_DIR}/ (expected ckpt-N.index and its data)")
    return max(numbered)[1]


def model_source(path: str | os.PathLike, label_map: str | os.PathLike | None = None) -> str:
    """What a command should load for `path`: a TF OD API folder's detkeeper run (or, for a model
    detkeeper does not reproduce, the folder's exported ``saved_model/``); any other path as it is."""
    if not is_tfod_model_folder(path):
        return os.fspath(path)
    if reproduced_family(Path(path)) is None and find_saved_model(path) is not None:
        return os.fspath(path)
    return os.fspath(tfod_model_run(path, label_map).path)


def reproduced_family(folder: Path) -> str | None:
    """The detkeeper family that reproduces the folder's model, or None."""
    try:
        family = import_pipeline_config(folder / PIPELINE_FILE, base_dir=folder, out_dir=folder).data["model"]["name"]
    except ConfigError:
        return None
    return family if family in ZOO_SSD_FAMILY_NAMES else None


def tfod_model_run(path: str | os.PathLike, label_map: str | os.PathLike | None = None) -> RunDirectory:
    """The detkeeper run directory holding the model of the TF OD API folder `path` (made on first use)."""
    folder = Path(path).absolute()
    prefix = checkpoint_prefix(folder)
    given_map = Path(label_map).absolute() if label_map is not None else None
    run = RunDirectory(cache_directory("tfod-models") / f"{folder.name}-{_identity(folder, prefix, given_map)}")
    if (run.ledger_path).is_file():
        return run
    staging = run.path.with_name(f"{run.path.name}.being-made-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _make_run(folder, prefix, given_map, RunDirectory(staging), final=run)
        if not run.ledger_path.is_file():  # else another process made it meanwhile: theirs is as good
            shutil.rmtree(run.path, ignore_errors=True)  # a folder left without its ledger is not a run
            os.replace(staging, run.path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s: the TF OD API model is read into detkeeper run %s", folder, run.path)
    return run


def _identity(folder: Path, prefix: Path, label_map: Path | None) -> str:
    digest = hashlib.sha256(__version__.encode())
    digest.update((folder / PIPELINE_FILE).read_bytes())
    for file in sorted(prefix.parent.glob(f"{prefix.name}.*")):
        stat = file.stat()
        digest.update(f"{file.name} {stat.st_size} {stat.st_mtime_ns}".encode())
    if label_map is not None:
        digest.update(label_map.read_bytes() if label_map.is_file() else str(label_map).encode())
    return digest.hexdigest()[:12]


def _make_run(folder: Path, prefix: Path, given_map: Path | None, staging: RunDirectory, final: RunDirectory) -> None:
    pipeline = folder / PIPELINE_FILE
    try:
        imported = import_pipeline_config(pipeline, base_dir=folder, out_dir=folder, run_dir=str(final.path))
    except ConfigError as error:
        raise DetkeeperError(f"{folder}: {error}") from None
    data = imported.data
    family = data["model"]["name"]
    if family not in ZOO_SSD_FAMILY_NAMES:
        raise DetkeeperError(
            f"{folder}: its {PIPELINE_FILE} is not one of the TF OD API models detkeeper reproduces "
            f"({', '.join(sorted(ZOO_SSD_FAMILY_NAMES))}): `config import` maps it onto {family} approximately, "
            "whose variables are not the API's, so its checkpoint cannot be read. Its exported saved_model/ "
            "can be given instead, or train it with detkeeper after `detkeeper config import`")
    label_map = _label_map(folder, given_map, data["data"].get("label_map"), imported.num_classes)
    data["model"].pop("init_from", None)
    data["model"]["backbone"]["weights"] = "none"
    data["data"] = {**{split: source for split, source in data["data"].items()
                       if split in ("train", "val", "test") and _exists(folder, source["path"])},
                    "max_boxes": data["data"].get("max_boxes", 100)}
    for split in ("train", "val", "test"):  # absolute: the run's config is read from its own folder
        if split in data["data"]:
            data["data"][split]["path"] = ",".join(
                part if is_url(part) else str(folder / part) for part in data["data"][split]["path"].split(","))
    config, problems = from_data(RunConfig, data)
    if config is None:
        listed = "; ".join(f"{format_key(problem.key)}: {problem.message}" for problem in problems)
        raise DetkeeperError(f"{pipeline}: not a config detkeeper can build ({listed})")
    staging.write_config(config)
    staging.write_label_map(label_map)
    model = build_run_model(config, label_map.num_classes)
    try:
        restore_zoo_checkpoint(model, str(prefix))
    except DetkeeperError as error:
        raise DetkeeperError(f"{folder}: {error}") from None
    store = CheckpointStore(staging.checkpoints_path, RetentionPolicy(monitor=config.evaluation.monitor))
    store.save(tf.train.Checkpoint(model=model), step=0, epoch=0, metrics={}, ema=False)
    store.set_status(state="imported", source=str(folder), checkpoint=str(prefix))


def _exists(folder: Path, pattern: str) -> bool:
    parts = pattern.split(",")
    return all(not unfilled_placeholders(part) and tf.io.gfile.glob(part if is_url(part) else str(folder / part))
               for part in parts)


def _label_map(folder: Path, given: Path | None, configured: str | None, num_classes: int) -> LabelMap:
    """The model's classes: ids 1..num_classes, named by the label map where it names them."""
    source = given
    if source is None and configured and not unfilled_placeholders(configured) and (folder / configured).is_file():
        source = folder / configured
    if source is None:
        logger.warning("%s: no label map (%s); classes are named by their ids 1..%d. Give one with --label-map",
                       folder, f"{PIPELINE_FILE} names {configured}, not found" if configured
                       else f"{PIPELINE_FILE} names none", num_classes)
        named = {}
    else:
        read = LabelMap.read(source)
        beyond = [item.id for item in read.items if item.id > num_classes]
        if beyond:
            raise DetkeeperError(f"{source}: ids {beyond[:5]} are beyond the model's {num_classes} classes "
                                 f"({folder / PIPELINE_FILE} num_classes)")
        named = {item.id: item for item in read.items}
    items = [named.get(class_id) or LabelMapItem(class_id, str(class_id), str(class_id))
             for class_id in range(1, num_classes + 1)]
    return LabelMap(items, source=str(source or folder))
