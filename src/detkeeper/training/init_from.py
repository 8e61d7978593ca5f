"""``model.init_from``: start a new run's detector from another run's checkpoint, an export, or a
TF OD API model-zoo checkpoint (``.../checkpoint/ckpt-0``, read by the API's own variable names
into the TF OD API families; see :func:`_apply_zoo_checkpoint`).

A plain ``tf.train.Checkpoint`` restore cannot do this: Keras keys a model's variables by
position, and a head for another number of classes makes the whole restore fail (or, with
``expect_partial``, floods the log with warnings). So the *source* detector is rebuilt from its
own config and label map and restored whole (:mod:`detkeeper.run.restore`: the sha256 in the
ledger is checked, and a checkpoint that kept EMA averages gives them, the weights that were
evaluated and kept). Its variables are then matched to this run's by their Keras paths, with the
top-level model name stripped (``retinanet_tiny/head/...`` -> ``head/...``), and by shape, within
the parts ``include`` names (:meth:`detkeeper.models.detector.Detector.parts`).

Each target variable ends up with one status: ``newly_initialised`` (the source has no variable of
that name in the same part), ``skipped_for_shape``, ``not_included`` (its part is outside
``include``) or ``restored``; source variables no target variable names are ``unused_in_source``.
The backbone and the neck must come over whole when included: half a backbone would train from a
mix of learned and random weights. The head (``include: all``) is taken where it fits, since a
head for other classes is what fine-tuning replaces.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from pathlib import Path

import tensorflow as tf

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DetkeeperError
from detkeeper.files import atomic_write_text
from detkeeper.models.registry import zoo_checkpoint_families
from detkeeper.models.ssd.zoo_checkpoint import is_zoo_checkpoint, reads_zoo_checkpoints, restore_zoo_checkpoint
from detkeeper.run.exports import (ASSETS_DIR, EXPORT_ASSETS, export_assets, exported_variables,
                                   read_export_source)
from detkeeper.run.layout import RunDirectory
from detkeeper.run.restore import restore_model, restore_run_checkpoint
from detkeeper.run.sources import find_saved_model, resolve_model_source, run_config

logger = logging.getLogger("detkeeper.training")

PARTS = ("backbone", "neck", "head")
INCLUDED_PARTS = {"backbone": ("backbone",), "backbone+neck": ("backbone", "neck"), "all": PARTS}
WHOLE_PARTS = ("backbone", "neck")  # must be restored completely when included (see the module docstring)
STATUSES = ("restored", "skipped_for_shape", "not_included", "newly_initialised", "unused_in_source")


@dataclasses.dataclass(frozen=True)
class InitSource:
    """The restored source detector and where its weights came from."""

    path: str  # as configured
    kind: str  # "checkpoint" | "export" | "tfod_checkpoint"
    checkpoint: str  # the checkpoint prefix read
    step: int | None
    ema: bool
    model: object | None  # Detector; None for a TF OD API checkpoint, read by its own keys

    def describe(self) -> str:
        if self.kind == "tfod_checkpoint":
            return "TF OD API checkpoint"
        step = f"step {self.step}" if self.step is not None else ""
        weights = "EMA weights" if self.ema else ""
        what = ", ".join(item for item in (step, weights) if item)
        if self.kind == "export":
            return f"export of {what}" if what else "export"
        return what


@dataclasses.dataclass(frozen=True)
class VariableOutcome:
    """What happened to one variable; `shape` is the target's, `source_shape` the source's."""

    name: str
    part: str
    status: str
    shape: tuple[int, ...] | None
    source_shape: tuple[int, ...] | None


@dataclasses.dataclass(frozen=True)
class InitReport:
    """Every variable's outcome: what ``RUN/init_from.json`` and the summary line say."""

    source: InitSource
    include: str
    outcomes: tuple[VariableOutcome, ...]
    path: Path | None = None  # where the JSON report was written

    def count(self, status: str) -> int:
        return sum(outcome.status == status for outcome in self.outcomes)

    @property
    def target_variables(self) -> int:
        return sum(outcome.status != "unused_in_source" for outcome in self.outcomes)

    def summary(self) -> str:
        where = f"; report in {self.path}" if self.path else ""
        return (f"init_from {self.source.path} ({self.source.describe()}): restored {self.count('restored')} of "
                f"{self.target_variables} variables ({self.include}); {self.count('skipped_for_shape')} skipped for "
                f"shape, {self.count('not_included')} not included, {self.count('newly_initialised')} newly "
                f"initialised, {self.count('unused_in_source')} of the source's unused{where}")

    def to_json(self, error: str | None = None) -> str:
        source = self.source
        data = {
            "applied": error is None,
            "error": error,
            "source": {"path": source.path, "kind": source.kind, "checkpoint": source.checkpoint,
                       "step": source.step, "ema": source.ema,
                       "model": source.model.name if source.model is not None else None,
                       "num_classes": source.model.num_classes if source.model is not None else None},
            "include": self.include,
            "parts": list(INCLUDED_PARTS[self.include]),
            "counts": {status: self.count(status) for status in STATUSES},
            "variables": [{"name": outcome.name, "part": outcome.part, "status": outcome.status,
                           "shape": _listed(outcome.shape), "source_shape": _listed(outcome.source_shape)}
                          for outcome in self.outcomes],
        }
        return json.dumps(data, indent=1) + "\n"


def apply_init_from(model, init_from, run_dir: str | Path) -> InitReport:
    """Restore the parts of `model` that ``init_from`` (an ``InitFromConfig``) names, write
    ``RUN/init_from.json`` and log one summary line; a DetkeeperError when the source cannot be
    read, nothing fits, or an included backbone or neck would come over only in part."""
    if is_zoo_checkpoint(init_from.path):
        return _apply_zoo_checkpoint(model, init_from, run_dir)
    source = load_source(init_from.path)
    report = dataclasses.replace(match_variables(model, source, init_from.include),
                                 path=RunDirectory(run_dir).init_from_path)
    problem = _refusal(report, model)
    atomic_write_text(report.path, report.to_json(problem))
    if problem is not None:
        raise DetkeeperError(problem)
    targets = _named_variables(model)
    sources = _named_variables(source.model)
    for outcome in report.outcomes:
        if outcome.status == "restored":
            targets[outcome.name][1].assign(sources[outcome.name][1].value)
    logger.info(report.summary())
    return report


def _apply_zoo_checkpoint(model, init_from, run_dir: str | Path) -> InitReport:
    """A TF OD API (model zoo) checkpoint: its variables are matched to `model`'s by the API's own
    keys (:mod:`detkeeper.models.ssd.zoo_checkpoint`), every key and shape of the included parts
    checked before anything is assigned. ``include: all`` keeps a class output for another number
    of classes fresh (its prior bias), as fine-tuning to new classes needs."""
    path = init_from.path
    if not reads_zoo_checkpoints(model):
        raise DetkeeperError(f"model.init_from.path: {path} is a TF OD API checkpoint, read by the API's own "
                             f"variable names; model {model.name!r} ({type(model).__name__}) is not one of the "
                             f"TF OD API families that read them ({', '.join(zoo_checkpoint_families())})")
    include = init_from.include
    try:
        outcomes = restore_zoo_checkpoint(model, path, INCLUDED_PARTS[include], fresh_class_head=include == "all")
    except DetkeeperError as error:
        raise DetkeeperError(f"model.init_from.path: {error}") from None
    prefix = f"{model.name}/"
    report = InitReport(
        source=InitSource(path=str(path), kind="tfod_checkpoint", checkpoint=str(path), step=None, ema=False,
                          model=None),
        include=include, path=RunDirectory(run_dir).init_from_path,
        outcomes=tuple(VariableOutcome(outcome.path[len(prefix):] if outcome.path.startswith(prefix) else outcome.path,
                                       outcome.part, outcome.status, outcome.shape, outcome.checkpoint_shape)
                       for outcome in outcomes))
    atomic_write_text(report.path, report.to_json())
    logger.info(report.summary())
    return report


def load_source(path: str) -> InitSource:
    """The detector `path` holds (a run directory's best checkpoint, one of its checkpoints, or an
    export), built from its own config and label map and restored whole."""
    try:
        saved_model = find_saved_model(path)
        if saved_model is not None:
            return _export_source(path, saved_model)
        run, which = resolve_model_source(path)
        restored = restore_run_checkpoint(run, which)
    except DetkeeperError as error:
        message = str(error) if str(path) in str(error) else f"{path}: {error}"
        raise DetkeeperError(f"model.init_from.path: {message}") from None
    except tf.errors.OpError as error:  # an index or data file too damaged to parse
        raise DetkeeperError(f"model.init_from.path: {path}: the checkpoint cannot be read ({error.message})") from None
    return InitSource(path=str(path), kind="checkpoint", checkpoint=restored.checkpoint_path,
                      step=restored.entry.step, ema=bool(restored.entry.ema), model=restored.model)


def _export_source(path: str, saved_model: Path) -> InitSource:
    """An export's detector: its SavedModel's ``variables/`` read as a checkpoint (the module's
    ``model`` attribute is the detector, with the weights that were exported, EMA already in them)
    into the model its ``assets/config.yaml`` and ``assets/label_map.pbtxt`` describe."""
    assets = export_assets(saved_model)
    missing = [name for name in EXPORT_ASSETS if not (assets / name).is_file()]
    if missing:
        absent = ' and '.join(f'{ASSETS_DIR}/{name}' for name in missing)
        raise DetkeeperError(f"{path}: a SavedModel without {absent}, so "
                             "not a detkeeper export; fine-tuning needs the exported run's config and label map to "
                             "rebuild its model")
    prefix = exported_variables(saved_model)
    if not Path(f"{prefix}.index").is_file():
        raise DetkeeperError(f"{path}: the SavedModel has no variables ({prefix}.index is missing)")
    _read_every_tensor(prefix)
    # The assets folder is laid out like a run directory (config.yaml, label_map.pbtxt), so the run's
    # own reading of its config applies: no data splits, no backbone download, no init_from of its own.
    exported = RunDirectory(assets)
    config = run_config(exported)
    model = restore_model(config, LabelMap.read(exported.label_map_path), str(prefix), ema=False)
    origin = read_export_source(assets)
    return InitSource(path=str(path), kind="export", checkpoint=str(prefix), step=origin.get("step"),
                      ema=bool(origin.get("ema")), model=model)


def _read_every_tensor(prefix: Path) -> None:
    """Read each tensor once: an export has no recorded sha256, and a truncated data file otherwise
    surfaces mid-restore as an IndexError from TF's reader ("Read less bytes than requested")."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for key in reader.get_variable_to_shape_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, IndexError) as error:
        reason = error.message if isinstance(error, tf.errors.OpError) else str(error)
        raise DetkeeperError(f"{prefix}: the SavedModel's variables cannot be read ({reason}); the export is "
                             "truncated or damaged: export it again from its run") from None


def match_variables(target, source: InitSource, include: str) -> InitReport:
    """Each variable of `target` against the source detector's by stripped name, part and shape."""
    included = INCLUDED_PARTS[include]
    targets, sources = _named_variables(target), _named_variables(source.model)
    outcomes = []
    for name, (part, variable) in targets.items():
        shape = tuple(variable.shape)
        counterpart = sources.get(name)
        if counterpart is None or counterpart[0] != part:
            outcomes.append(VariableOutcome(name, part, "newly_initialised", shape, None))
            continue
        source_shape = tuple(counterpart[1].shape)
        if source_shape != shape:
            status = "skipped_for_shape"
        elif part not in included:
            status = "not_included"
        else:
            status = "restored"
        outcomes.append(VariableOutcome(name, part, status, shape, source_shape))
    for name, (part, variable) in sources.items():
        if name not in targets or targets[name][0] != part:
            outcomes.append(VariableOutcome(name, part, "unused_in_source", None, tuple(variable.shape)))
    return InitReport(source=source, include=include, outcomes=tuple(outcomes))


def _named_variables(model) -> dict[str, tuple[str, object]]:
    """Stable name -> (part, variable) for every variable of `model`.

    The name is Keras' ``variable.path`` without the model's own name in front (backbone paths
    have none; the rest start with it), so runs of differently named models still match. Paths are
    unique in the built-in families; a repeated one gets ``#1``, ``#2`` ... in ``model.weights``
    order rather than silently shadowing the first."""
    try:
        parts = model.parts()
    except DetkeeperError as error:  # a user's family that does not say which part is which
        raise DetkeeperError(f"model.init_from: {error}") from None
    part_of: dict[int, str] = {}
    for part, variables in parts.items():
        for variable in variables:
            if part_of.setdefault(id(variable), part) != part:
                raise ValueError(f"{type(model).__name__}.parts() puts {variable.path} in both "
                                 f"{part_of[id(variable)]} and {part}")
    weights = list(model.weights)
    unassigned = [variable.path for variable in weights if id(variable) not in part_of]
    if unassigned or len(part_of) != len(weights):
        raise ValueError(f"{type(model).__name__}.parts() does not cover model.weights exactly "
                         f"(not in any part: {unassigned[:3]})")
    prefix = f"{model.name}/"
    seen: Counter[str] = Counter()
    named = {}
    for variable in weights:
        name = variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path
        seen[name] += 1
        if seen[name] > 1:
            name = f"{name}#{seen[name] - 1}"
        named[name] = (part_of[id(variable)], variable)
    return named


def _refusal(report: InitReport, target) -> str | None:
    """Why the report must not be applied (one paragraph), or None."""
    source, included = report.source, INCLUDED_PARTS[report.include]
    in_scope = [outcome for outcome in report.outcomes
                if outcome.part in included and outcome.status != "unused_in_source"]
    where = f"Per-variable report: {report.path}."
    if report.count("restored") == 0:
        missing = sum(outcome.status == "newly_initialised" for outcome in in_scope)
        shaped = [outcome for outcome in in_scope if outcome.status == "skipped_for_shape"]
        example = f" (e.g. {_reason(shaped[0])})" if shaped else ""
        return (f"model.init_from: nothing in {source.path} ({source.kind} of a {source.model.name} model) fits "
                f"this run's {target.name} in its {' and '.join(included)}: of its {len(in_scope)} "
                f"variables there, {missing} have no counterpart by name in the source and {len(shaped)} differ in "
                f"shape{example}. Initialise from a model with the same backbone, or leave model.init_from unset. "
                f"{where}")
    for part in WHOLE_PARTS:
        if part not in included:
            continue
        variables = [outcome for outcome in in_scope if outcome.part == part]
        lacking = [outcome for outcome in variables if outcome.status != "restored"]
        if lacking:
            examples = "; ".join(_reason(outcome) for outcome in lacking[:3])
            more = f"; and {len(lacking) - 3} more" if len(lacking) > 3 else ""
            smaller = (" or `include: backbone` to take only the backbone," if part == "neck" else "")
            return (f"model.init_from: {source.path} does not cover this run's {part}: {len(lacking)} of its "
                    f"{len(variables)} variables cannot be restored ({examples}{more}). A {part} restored in part "
                    f"would train from a mix of learned and random weights; initialise from a model with the same "
                    f"{part},{smaller} or leave model.init_from unset. {where}")
    return None


def _reason(outcome: VariableOutcome) -> str:
    if outcome.status == "skipped_for_shape":
        return f"{outcome.name} is {_listed(outcome.shape)} here, {_listed(outcome.source_shape)} in the source"
    return f"{outcome.name} has no counterpart in the source"


def _listed(shape: tuple[int, ...] | None) -> list[int] | None:
    return None if shape is None else [int(size) for size in shape]
