"""``detkeeper evaluate``: COCO-evaluate a kept checkpoint on a split or a dataset, and write it all down.

    report = evaluate("runs/cells")                                  # best checkpoint, data.val
    report = evaluate("runs/cells", "test", checkpoint="latest")     # another configured split
    report = evaluate("runs/cells/checkpoints/step-0001200/ckpt", "/data/other_voc", split="val")
    report = evaluate("runs/cells/exports/step-0001200", "test")    # an export, through its signature

What the model is comes from the run directory (``config.yaml``, ``label_map.pbtxt``); which
weights, from its checkpoint ledger (sha256-verified, as training restores them). Only the model
(and the EMA averages when the run kept them, which training evaluated) is read from the
checkpoint: TF matches it through the checkpoint's object graph, so the optimizer's copy of the
weights and the early-stopping state are not needed, and every model variable must be found.
The evaluation pass is the one training runs (:func:`run_validation`, same batch size, same
post-processing), so a checkpoint evaluated on ``data.val`` scores the ``val_mAP`` the ledger
recorded for it. An export is evaluated through its ``encoded_image_string_tensor`` signature,
exactly as it will serve; its config and label map come from the SavedModel's assets.

Outputs, into ``RUN/eval/<checkpoint>-<split or dataset>/`` unless told otherwise, each written
atomically: ``metrics.json``, ``detections.json`` (COCO results format) and ``pr_curves/*.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from detkeeper import __version__
from detkeeper.config.schema import SPLITS, DataConfig, SourceConfig
from detkeeper.data.augment import Resize
from detkeeper.data import columns
from detkeeper.data.columns import RecordColumns, all_class_ids
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import data_errors, evaluation_dataset
from detkeeper.data.record import DetectionRecord, yxyx_to_xywh
from detkeeper.data.sources import DataSources, detect_format
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.evaluation.coco import BACKENDS
from detkeeper.evaluation.plots import save_precision_recall_plots
from detkeeper.evaluation.results import EvaluationResult
from detkeeper.evaluation.runner import compiled_detect, run_export_validation, run_validation
from detkeeper.files import atomic_write_text, json_number
from detkeeper.run.evaluations import (DETECTIONS_FILE, METRICS_FILE, PR_CURVES_DIR, evaluation_dir,
                                       export_evaluation_dir)
from detkeeper.run.exports import export_assets
from detkeeper.run.layout import CONFIG_FILE, RunDirectory
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.run.sources import find_saved_model, resolve_model_source, run_config

logger = logging.getLogger("detkeeper.evaluation")


#: How ``detections.json`` names images (also written into ``metrics.json``).
IMAGE_ID_CONVENTION = (
    "image_id is the dataset's own image id in its own type: a COCO JSON's image id as the file has it "
    "(so the file loads into pycocotools' loadRes beside it), a VOC file stem (a string), a TFRecord's "
    "image/source_id (an integer when it is a canonical decimal integer, else a string)")


@dataclasses.dataclass(frozen=True)
class EvaluationReport:
    """What one evaluation measured and where it wrote it."""

    result: EvaluationResult
    latency_ms: float  # detector time per image (first batch, which traces, left out)
    num_images: int
    run_dir: Path
    checkpoint: CheckpointInfo
    data: str  # how the evaluated data is named in messages
    out_dir: Path
    metrics_path: Path
    detections_path: Path
    plot_paths: tuple[Path, ...]
    metrics: dict  # what metrics.json holds


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """The checkpoint evaluated: kept in a run's ledger, or the one an export was made from."""

    name: str
    step: int
    ema: bool
    path: str
    metrics: dict  # what training recorded for it (val_* stats)

    @classmethod
    def of_entry(cls, entry, run: RunDirectory) -> "CheckpointInfo":
        return cls(entry.name, entry.step, entry.ema, str(run.checkpoints_path / entry.name / entry.prefix),
                   dict(entry.metrics))

    @classmethod
    def of_export(cls, metadata: dict) -> "CheckpointInfo":
        source = metadata["source"]
        return cls(source["checkpoint"], source["step"], source["ema"], source["checkpoint_path"],
                   {key: value for key, value in source["validation"].items() if value is not None})


@dataclasses.dataclass(frozen=True)
class _Data:
    records: Sequence[DetectionRecord]  # a list, or RecordColumns
    description: str
    name: str  # for the default output folder
    split: str | None  # the config split evaluated, None for a dataset path
    format: str
    num_read: int
    problems: dict


def evaluate(model_source: str | os.PathLike, data: str | os.PathLike | None = None, split: str | None = None, *,
             checkpoint: str | int | None = None, out_dir: str | os.PathLike | None = None,
             backend: str = "faster_coco_eval", progress: Callable[[int], None] | None = None,
             label_map: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
             batch_size: int | None = None, load_export: Callable[[Path], Any] | None = None) -> EvaluationReport:
    """COCO-evaluate a model on a split of its run's config or on a dataset; write the results.

    `model_source`: a run directory, a checkpoint in it (``RUN/checkpoints/step-NNNNNNN/ckpt`` or
    its folder), or an export directory / its SavedModel (``detkeeper export``).
    `checkpoint` (run directories only): ``best`` (default), ``latest`` or a step number.
    `data`: None or ``train``/``val``/``test`` for a split of the run's config (`split`, ``val``
    by default), else a dataset path: VOC root (`split` picks ``ImageSets/Main/<split>.txt``), COCO
    JSON (`images`: its image folder) or TFRecords (`label_map` when they carry no class names).
    A dataset's classes are matched to the model's by name. `progress` is called with the number
    of images after each batch. See :class:`PreparedEvaluation` to know the image count first.
    `load_export` loads an export (``detkeeper.export.predictor.load``; the layer above passes it:
    ``detkeeper.evaluate`` and ``detkeeper evaluate`` do), needed only when `model_source` is one.
    """
    prepared = prepare_evaluation(model_source, data, split, checkpoint=checkpoint, label_map=label_map,
                                  images=images, batch_size=batch_size, load_export=load_export)
    return prepared.run(out_dir=out_dir, backend=backend, progress=progress)


def prepare_evaluation(model_source: str | os.PathLike, data: str | os.PathLike | None = None,
                       split: str | None = None, *, checkpoint: str | int | None = None,
                       label_map: str | os.PathLike | None = None, images: str | os.PathLike | None = None,
                       batch_size: int | None = None, load_export: Callable[[Path], Any] | None = None
                       ) -> "PreparedEvaluation":
    """The model restored and the data read and checked, ready to :meth:`~PreparedEvaluation.run`
    (arguments as for :func:`evaluate`)."""

    config_split = data is None or (isinstance(data, str) and data in SPLITS)
    split_name = None
    if config_split:
        split_name = str(data) if data is not None else (split or "val")
        if data is not None and split is not None and split != split_name:
            raise DetkeeperError(f"--data {data} names a split of the run's config; --split {split} contradicts it")
    saved_model = find_saved_model(model_source)
    if saved_model is not None:
        if load_export is None:
            raise DetkeeperError(f"{model_source} is an export: evaluating one needs its loader; use "
                                 "detkeeper.evaluate or `detkeeper evaluate`, or pass "
                                 "load_export=detkeeper.export.predictor.load")
        return _prepare_export(load_export(saved_model), saved_model, model_source, checkpoint, data, split,
                               split_name, label_map, images, batch_size)
    run, which = resolve_model_source(model_source, checkpoint)
    restored = restore_run_checkpoint(run, which, keep_split=split_name)
    config, model_label_map, entry, model = restored.config, restored.label_map, restored.entry, restored.model
    if config_split:
        loaded = _config_split(config, run, split_name)
    else:
        loaded = _dataset(os.fspath(data), split, model_label_map, config.data.max_boxes, label_map, images)
    return PreparedEvaluation(rundir=run, config=config, label_map=model_label_map,
                              checkpoint=CheckpointInfo.of_entry(entry, run), model=model,
                              data=loaded, batch_size=batch_size or config.train.batch_size,
                              model_source=os.fspath(model_source))


def _prepare_export(predictor, saved_model: Path, model_source, checkpoint, data, split, split_name, label_map,
                    images, batch_size) -> "PreparedEvaluation":
    """An export evaluated through its own serving signature (it resizes images itself). Its config
    and label map come from the SavedModel's assets, so config splits work without the run.
    `predictor` is the loaded export (``.label_map``, ``.metadata``, ``.source``, ``.detect_encoded``)."""
    if checkpoint is not None:
        raise DetkeeperError(f"{model_source} is an export: it holds one checkpoint's weights; --checkpoint "
                             "applies to run directories")
    assets = RunDirectory(export_assets(saved_model))
    if predictor.label_map is None or not assets.config_path.is_file():
        raise DetkeeperError(f"{saved_model}: not a detkeeper export (no metadata signature or {CONFIG_FILE} "
                             "asset); detkeeper evaluates its own exports, TF OD API ones via `detkeeper predict`")
    config = run_config(assets, keep_split=split_name)
    if split_name is not None:
        loaded = _config_split(config, assets, split_name)
    else:
        loaded = _dataset(os.fspath(data), split, predictor.label_map, config.data.max_boxes, label_map, images)
    return PreparedEvaluation(rundir=assets, config=config, label_map=predictor.label_map,
                              checkpoint=CheckpointInfo.of_export(predictor.metadata), model=None,
                              data=loaded, batch_size=batch_size or config.train.batch_size,
                              model_source=os.fspath(model_source), predictor=predictor)


# -- the data -----------------------------------------------------------------------------------
def _config_split(config, run: RunDirectory, split: str) -> _Data:
    data_config = dataclasses.replace(config.data, label_map=str(run.label_map_path))
    sources = DataSources(data_config)
    prepared = sources.prepare(split)
    return _Data(prepared.records, sources.describe(split), split, split, sources.source(split).format,
                 prepared.num_read, prepared.report.counts())


def _dataset(path: str, split: str | None, model_label_map: LabelMap, max_boxes: int,
             label_map: str | os.PathLike | None, images: str | os.PathLike | None) -> _Data:
    """A dataset path read as ``detkeeper data check`` reads it, classes mapped onto the model's."""

    fmt = detect_format(path)
    if split is not None and fmt != "voc":
        raise DataError(f"{path}: --split picks ImageSets/Main/<split>.txt of a VOC dataset; a {fmt} dataset "
                        "has no splits (give the file of the split)")
    if images is not None and fmt != "coco":
        raise DataError(f"{path}: --images is the image folder of a COCO JSON; this is a {fmt} dataset")
    source = SourceConfig(format=fmt, path=path, split=split,
                          images=os.fspath(images) if images is not None else None)
    description = path + (f" (split {split})" if split else "")
    data_config = DataConfig(train=source, label_map=os.fspath(label_map) if label_map else None,
                             bad_records="skip", max_boxes=max_boxes)
    sources = DataSources(data_config, display_names={"train": description})
    prepared = sources.prepare("train")
    records = _map_classes(prepared.records, prepared.label_map, model_label_map, description)
    stem = Path(path.split(",")[0].rstrip("/")).name
    stem = stem[:-len(".json")] if stem.endswith(".json") else stem
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", stem + (f"-{split}" if split else "")).strip("_.") or "dataset"
    return _Data(records, description, name, None, fmt, prepared.num_read, prepared.report.counts())


def _map_classes(records: Sequence[DetectionRecord], dataset_map: LabelMap, model_map: LabelMap,
                 where: str) -> Sequence[DetectionRecord]:
    """Records with class ids of the model's label map, matched by class name (columns stay columns)."""
    used = np.unique(all_class_ids(records)).tolist()
    model_id = {class_id: model_map.id_of_name(dataset_map.item_of_id(class_id).name) for class_id in used}
    unknown = [dataset_map.item_of_id(class_id).name for class_id in used if model_id[class_id] is None]
    if unknown:
        raise DataError(f"{where}: the model does not know the class(es) {', '.join(map(repr, unknown))}; "
                        f"its classes ({model_map.source}) are {', '.join(map(repr, model_map.names))}. "
                        "Classes are matched by name: evaluate on data with the model's classes, or rename "
                        "them in the annotations (or the label map given with --label-map).")
    if all(model_id[class_id] == class_id for class_id in used):
        return records
    if isinstance(records, RecordColumns):
        mapped = np.array([model_id[class_id] for class_id in used], np.int64)
        return records.with_class_ids(mapped[np.searchsorted(used, records.class_ids)])
    return [dataclasses.replace(record, class_ids=np.array([model_id[int(c)] for c in record.class_ids], np.int64))
            for record in records]


# -- running and writing --------------------------------------------------------------------------
@dataclasses.dataclass
class PreparedEvaluation:
    """A restored model and checked data; :meth:`run` evaluates and writes the outputs."""

    rundir: RunDirectory
    config: Any
    label_map: LabelMap
    checkpoint: CheckpointInfo
    model: Any
    data: _Data
    batch_size: int
    model_source: str
    predictor: Any = None  # an export's Predictor; then `model` is None

    @property
    def num_images(self) -> int:
        return len(self.data.records)

    def default_out_dir(self) -> Path:
        if self.predictor is not None:  # beside the export: EXPORTS/eval-<export>-<data>
            return export_evaluation_dir(self.predictor.source, self.data.name)
        return evaluation_dir(self.rundir, self.checkpoint.name, self.data.name)

    @data_errors()  # a shard that changed under the pass: the DataError naming it, not TensorFlow's error
    def run(self, out_dir: str | os.PathLike | None = None, backend: str = "faster_coco_eval",
            progress: Callable[[int], None] | None = None) -> EvaluationReport:

        if backend not in BACKENDS:
            raise DetkeeperError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.batch_size < 1:
            raise DetkeeperError(f"batch size must be at least 1, got {self.batch_size}")
        config = self.config
        results = _CocoResults()
        started = time.perf_counter()
        if self.predictor is not None:
            validation = run_export_validation(
                self.predictor.detect_encoded, self.data.records, self.label_map, batch_size=self.batch_size,
                backend=backend, max_detections=self.predictor.metadata["thresholds"]["max_detections"],
                progress=progress, on_batch=results.add)
        else:
            dataset = evaluation_dataset(self.data.records, self.label_map, image_size=config.model.image_size,
                                         batch_size=self.batch_size, max_boxes=config.data.max_boxes,
                                         resize=Resize.of(self.model))
            validation = run_validation(compiled_detect(self.model), dataset, self.label_map,
                                        ground_truth=self.data.records, backend=backend,
                                        max_detections=config.evaluation.max_detections, progress=progress,
                                        on_batch=results.add)
        seconds = time.perf_counter() - started
        out = Path(out_dir) if out_dir is not None else self.default_out_dir()
        detections_path = atomic_write_text(out / DETECTIONS_FILE,
                                            json.dumps(results.as_json(self.data.records)) + "\n")
        plots = tuple(save_precision_recall_plots(validation.result, out / PR_CURVES_DIR))
        metrics = self._metrics(validation, seconds, out, detections_path, plots)
        metrics_path = atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
        logger.debug("evaluated %s on %s: mAP %.4f; results in %s", self.model_source, self.data.description,
                     validation.result.stats["mAP"], out)
        return EvaluationReport(result=validation.result, latency_ms=validation.latency_ms,
                                num_images=validation.num_images, run_dir=self.rundir.path, checkpoint=self.checkpoint,
                                data=self.data.description, out_dir=out, metrics_path=metrics_path,
                                detections_path=detections_path, plot_paths=plots, metrics=metrics)

    def _metrics(self, validation, seconds: float, out: Path, detections_path: Path, plots) -> dict:
        result, checkpoint, data = validation.result, self.checkpoint, self.data
        return {
            "detkeeper_version": __version__,
            "model": {"source": self.model_source, "kind": "export" if self.predictor is not None else "checkpoint",
                      "run_dir": str(self.rundir.path) if self.predictor is None
                      else self.predictor.metadata["source"]["run_dir"], "name": self.config.model.name,
                      "image_size": self.config.model.image_size},
            "checkpoint": {"name": checkpoint.name, "step": checkpoint.step, "ema": checkpoint.ema,
                           "path": checkpoint.path,
                           "recorded_in_ledger": {key: json_number(value)
                                                  for key, value in checkpoint.metrics.items()}},
            "data": {"description": data.description, "format": data.format, "config_split": data.split,
                     "num_images": validation.num_images, "records_read": data.num_read,
                     "problems": data.problems},
            "num_images": validation.num_images,
            "latency_ms": validation.latency_ms,
            "seconds": seconds,
            "batch_size": self.batch_size,
            **result.to_json_dict(),
            "tf_od_api": result.tf_od_api_metrics(include_per_class=True),
            "files": {"detections": os.path.relpath(detections_path, out),
                      "detections_image_ids": IMAGE_ID_CONVENTION,
                      "detections_category_ids": "label-map ids (label_map.pbtxt of the run)",
                      "detections_bbox": "[x, y, width, height] in original-image pixels",
                      "pr_curves": [os.path.relpath(path, out) for path in plots]},
        }


class _CocoResults:
    """Collects a validation pass's detections in COCO results format: image_id, category_id
    (label-map id), bbox xywh in original-image pixels, score."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, list[float], float]] = []

    def add(self, image_ids: list[str], detections: dict) -> None:
        for row, image_id in enumerate(image_ids):
            count = int(detections["num_detections"][row])
            classes = detections["classes"][row, :count]
            keep = classes >= 0
            boxes = yxyx_to_xywh(detections["boxes"][row, :count][keep])
            for category, box, score in zip(classes[keep].tolist(), boxes.tolist(),
                                            detections["scores"][row, :count][keep].tolist()):
                self.rows.append((image_id, category, box, score))

    def as_json(self, records: Sequence[DetectionRecord]) -> list[dict]:
        """The rows with each image's original id (:data:`IMAGE_ID_CONVENTION`)."""
        original = dict(zip(columns.image_ids(records), columns.original_ids(records)))
        return [{"image_id": original[image_id], "category_id": category, "bbox": box, "score": score}
                for image_id, category, box, score in self.rows]

