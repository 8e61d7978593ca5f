"""``detkeeper export``: a kept checkpoint -> a verified, self-describing export directory.

    result = export_model("runs/cells")                       # best checkpoint -> runs/cells/exports/step-…
    result = export_model("runs/cells", checkpoint="latest", out="exports/cells", score_threshold=0.3)

Layout of an export (like the TF OD API exporter's output directory)::

    OUT/
      saved_model/       tf.saved_model.load(OUT/saved_model)(uint8 images); assets/ holds
                         label_map.pbtxt, config.yaml and metadata.json
      model.keras        the detector as a Keras archive, to continue in Python
      label_map.pbtxt, config.yaml, metadata.json   the same files, for people and tools
      tflite/            with ``tflite=True``: model_float32.tflite, model_int8_dynamic.tflite and
                         tflite.json (input/output contract, mAP of each; see detkeeper.export.tflite)
      verification.json  what verification compared and found (written last)

Everything is written into a hidden ``.partial-`` folder beside OUT, verified (see
:mod:`detkeeper.export.verify`), and only then renamed to OUT: a crash or a failed verification
never leaves a folder that looks like a finished export, and an existing export is replaced only
by a verified one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from detkeeper import __version__
from detkeeper.data.augment import Resize
from detkeeper.data.pipeline import data_errors
from detkeeper.data.record import DetectionRecord
from detkeeper.data.sources import DataSources
from detkeeper.errors import DetkeeperError, RunFailed
from detkeeper.export.serving import OUTPUT_KEYS, SIGNATURES, DetectionModule, ServingSettings
from detkeeper.export.tflite import export_tflite
from detkeeper.export.verify import verify_saved_model
from detkeeper.files import atomic_write_text, fsync_directory, is_out_of_space, json_number, out_of_space
from detkeeper.models.archive import save_keras_archive
from detkeeper.run.exports import METADATA_FILE, ExportPaths, default_export_dir
from detkeeper.run.layout import CONFIG_FILE, LABEL_MAP_FILE, RunDirectory
from detkeeper.run.restore import restore_run_checkpoint
from detkeeper.run.sources import resolve_model_source

logger = logging.getLogger("detkeeper.export")

BOX_CONVENTION = "detection_boxes: [ymin, xmin, ymax, xmax] normalized to the original image (0..1)"
CLASS_CONVENTION = ("detection_classes: label-map ids (1-based, as in label_map.pbtxt and the TF OD API); "
                    "the model's contiguous class index is id position in the label map")
ANCHOR_CONVENTION = ("raw_detection_boxes [B, A, 4] and raw_detection_scores [B, A, C]: every anchor (FCOS: "
                     "location) before NMS, boxes normalized to the original image and not clipped; "
                     "detection_multiclass_scores [B, N, C] and detection_anchor_indices [B, N] (float32): the "
                     "anchor each detection came from (0 in padding rows); score column c is the label-map id "
                     "score_columns[c] (0: the background, first, for TF OD API models that have one)")


class ExportVerificationFailed(RunFailed):
    """The exported SavedModel does not answer as the checkpoint does; nothing was published."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    saved_model_dir: Path
    keras_path: Path
    metadata: dict
    verification: object  # detkeeper.export.verify.Verification
    seconds: dict  # "save", "keras", "verify" (and "tflite")
    tflite: object | None = None  # detkeeper.export.tflite.TFLiteReport, with tflite=True


@data_errors()  # a shard that changed under verification: the DataError naming it, not TensorFlow's error
def export_model(source: str | os.PathLike, *, checkpoint: str | int | None = None,
                 out: str | os.PathLike | None = None, score_threshold: float | None = None,
                 iou_threshold: float | None = None, max_detections: int | None = None,
                 verify_images: int = 8, overwrite: bool = False, tflite: bool = False,
                 verify_with: Sequence[str | os.PathLike] = ()) -> ExportResult:
    """Export checkpoint `checkpoint` (``best`` by default, ``latest`` or a step) of the run
    `source` (or a checkpoint path in it) to `out` (default ``RUN/exports/<checkpoint>``).

    The thresholds default to the run's ``evaluation`` section. Verification runs on the first
    `verify_images` images of the run's validation split (else test, else train), or of the image
    files `verify_with` (detections compared, no mAP: they have no boxes). With `tflite`,
    TFLite models are converted and scored on the same images too; one that does not convert is
    reported in ``verification.json`` (and the result), not raised."""
    if verify_images < 1:
        raise DetkeeperError(f"verification images: expected at least 1, got {verify_images}")
    run, which = resolve_model_source(source, checkpoint)
    split = _verification_split(run) if not verify_with else None
    restored = restore_run_checkpoint(run, which, keep_split=split)
    settings = serving_settings(restored.config, score_threshold, iou_threshold, max_detections)
    config, label_map, entry, model = restored.config, restored.label_map, restored.entry, restored.model
    _use_thresholds(model, settings)  # verification's reference (model.detect) then agrees with the export
    records = (_image_records(verify_with, verify_images) if verify_with
               else _verification_records(config, run, split, verify_images))

    out_dir = Path(out) if out is not None else default_export_dir(run, entry.name)
    paths = ExportPaths(out_dir)
    _finish_interrupted_publish(out_dir)
    if out_dir.exists() and not overwrite:
        raise DetkeeperError(f"{out_dir} already exists; choose another --out, or --overwrite to replace it "
                             "(the old export stays until the new one is verified)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = paths.staging
    staged = ExportPaths(staging)
    if staging.exists():  # left by an export that was killed
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        metadata = export_metadata(restored, settings,
                                   verification_images=(split if not verify_with else "files", len(records)))
        metadata_json = _metadata_json(metadata)
        assets = {LABEL_MAP_FILE: label_map.write(staging / LABEL_MAP_FILE),
                  CONFIG_FILE: atomic_write_text(staging / CONFIG_FILE, run.config_path.read_text("utf-8")),
                  METADATA_FILE: atomic_write_text(staged.metadata, metadata_json)}
        module = DetectionModule(model, label_map, settings, metadata_json,
                                 {name: os.fspath(path) for name, path in assets.items()})
        seconds = {}
        started = time.perf_counter()
        _save_saved_model(module, staged.saved_model)
        seconds["save"] = time.perf_counter() - started
        started = time.perf_counter()
        save_keras_archive(model, staged.keras)
        seconds["keras"] = time.perf_counter() - started
        started = time.perf_counter()
        verification = verify_saved_model(staged.saved_model, model, label_map, records,
                                          max_boxes=config.data.max_boxes, metadata_json=metadata_json,
                                          keras_path=staged.keras, scratch_dir=staging)
        seconds["verify"] = time.perf_counter() - started
        report = {**verification.to_json_dict(), "verified_at": _now()}
        if not verification.passed:
            failed = paths.failed_record
            atomic_write_text(failed, json.dumps(report, indent=2) + "\n")
            raise ExportVerificationFailed(
                f"the export of {entry.name} of {run.path} does not answer as the checkpoint does, so it was "
                f"not published: {'; '.join(verification.problems[:3])}. Full report: {failed}")
        tflite_report = None
        if tflite:
            started = time.perf_counter()
            tflite_report = export_tflite(model, label_map, records, staged.tflite,
                                          max_boxes=config.data.max_boxes)
            seconds["tflite"] = time.perf_counter() - started
            report["tflite"] = tflite_report.to_json_dict()
        atomic_write_text(staged.verification, json.dumps(report, indent=2) + "\n")
        _publish(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.debug("exported %s (step %d) of %s to %s; %s", entry.name, entry.step, run.path, out_dir,
                verification.summary())
    return ExportResult(out_dir=out_dir, saved_model_dir=paths.saved_model, keras_path=paths.keras,
                        metadata=metadata, verification=verification, seconds=seconds, tflite=tflite_report)


def serving_settings(config, score_threshold: float | None = None, iou_threshold: float | None = None,
                     max_detections: int | None = None):
    """The export's post-processing: the run's ``evaluation`` section unless overridden."""
    evaluation = config.evaluation
    settings = ServingSettings(
        score_threshold=evaluation.score_threshold if score_threshold is None else float(score_threshold),
        iou_threshold=evaluation.iou_threshold if iou_threshold is None else float(iou_threshold),
        max_detections=evaluation.max_detections if max_detections is None else int(max_detections))
    settings.validate()
    return settings


def serving_module_for(restored, settings=None):
    """The serving module of a restored checkpoint, in memory (``detkeeper.load`` of a run), and
    its metadata. Sets the model's own thresholds to the module's, so ``model.detect`` agrees."""
    settings = settings or serving_settings(restored.config)
    _use_thresholds(restored.model, settings)
    metadata = export_metadata(restored, settings)
    return DetectionModule(restored.model, restored.label_map, settings, _metadata_json(metadata)), metadata


def _use_thresholds(model, settings) -> None:
    model.score_threshold, model.iou_threshold, model.max_detections = (
        settings.score_threshold, settings.iou_threshold, settings.max_detections)


def _metadata_json(metadata: dict) -> str:
    return json.dumps(metadata, indent=2, sort_keys=True) + "\n"


#: No custom-gradient functions in the export: it serves inference, and fine-tuning reads its variables
#: as a checkpoint. Saving them traced one gradient function per swish (tf.nn.silu has a custom
#: gradient): 354 of an EfficientDet-D0 export's 392 functions, most of its save time and of its load.
SAVE_OPTIONS = tf.saved_model.SaveOptions(experimental_custom_gradients=False)


def _save_saved_model(module, path: Path) -> None:
    try:
        tf.saved_model.save(module, os.fspath(path), signatures=module.signatures(), options=SAVE_OPTIONS)
    except Exception as error:  # e.g. the disk is full: the staging folder is removed, nothing published
        if is_out_of_space(error):
            raise RunFailed(f"{out_of_space(path, error, 'the SavedModel')} No export was published; "
                            "exports made before are unchanged.") from None
        if isinstance(error, OSError):
            raise RunFailed(f"{path}: cannot write the SavedModel ({error})") from None
        raise


def _publish(staging: Path, out_dir: Path) -> None:
    """Rename the verified staging folder to `out_dir`; an export already there is replaced only now."""
    replaced = None
    if out_dir.exists():
        replaced = ExportPaths(out_dir).replaced
        if replaced.exists():
            shutil.rmtree(replaced)
        os.replace(out_dir, replaced)
    os.replace(staging, out_dir)
    fsync_directory(out_dir.parent)
    if replaced is not None:
        shutil.rmtree(replaced)


def _finish_interrupted_publish(out_dir: Path) -> None:
    """An export killed between the two renames of `_publish` left the export it was replacing in
    ``.partial-replaced-<name>`` and nothing at `out_dir`: put it back (it was verified when it was
    published). Killed after both renames, only the removal of the old one is left to do."""
    replaced = ExportPaths(out_dir).replaced
    if not replaced.is_dir():
        return
    if out_dir.exists():
        shutil.rmtree(replaced)
    else:
        os.replace(replaced, out_dir)
        logger.warning("%s: put back the export an interrupted --overwrite had moved aside", out_dir)


def _verification_split(run: RunDirectory) -> str | None:
    """The first of val, test, train that the run's config sets (its images verify the export)."""
    configured = run.configured_splits()
    return next((name for name in ("val", "test", "train") if name in configured), None)


def _verification_records(config, run: RunDirectory, split: str | None, count: int):
    """Up to `count` images of `split` (ground truth included, for the mAP check)."""
    if split is None:
        raise DetkeeperError(f"{run.config_path}: the run's config sets no data split, so there are no images "
                             "to verify the export on; give some with --verify-with (verify_with=)")
    data_config = dataclasses.replace(config.data, label_map=str(run.label_map_path))
    try:  # the annotations of the split (from the dataset index when training read it), but only `count` images
        return DataSources(data_config, check_images=False).first_usable(split, count)
    except DetkeeperError as error:
        raise DetkeeperError(f"cannot read the images that verify the export (data.{split} of "
                             f"{run.config_path}): {error}") from None


def _image_records(files: Sequence[str | os.PathLike], count: int) -> list[DetectionRecord]:
    """The first `count` image files as records without boxes."""
    return [DetectionRecord(image_id=Path(file).stem, boxes=np.zeros((0, 4)), class_ids=np.zeros(0),
                            is_crowd=None, source=os.fspath(file), image_path=Path(file))
            for file in list(files)[:count]]


def export_metadata(restored, settings, verification_images: tuple[str | None, int] | None = None) -> dict:
    """What ``metadata.json`` says: the model, its conventions and thresholds, where it came from."""
    config, run, entry, label_map = restored.config, restored.run, restored.entry, restored.label_map
    split, num_images = verification_images or (None, 0)
    return {
        "format": "detkeeper-export/1",
        "model": {"name": config.model.name, "input_size": config.model.image_size,
                  "num_classes": label_map.num_classes,
                  "custom_objects_module": config.model.custom_objects_module},
        "preprocessing": f"uint8 RGB; {Resize.of(restored.model).describe(config.model.image_size)} (the "
                         "evaluation pipeline's resize), inside the graph",
        "box_convention": BOX_CONVENTION,
        "class_id_offset": 1,
        "class_convention": CLASS_CONVENTION,
        "classes": {str(item.id): item.display_name for item in label_map.items},
        "anchor_convention": ANCHOR_CONVENTION,
        "score_columns": [0] * restored.model.BACKGROUND_CLASS + list(label_map.ids),
        "thresholds": dataclasses.asdict(settings),
        "signatures": list(SIGNATURES),
        "outputs": list(OUTPUT_KEYS),
        "source": {"run_dir": str(run.path), "checkpoint": entry.name, "checkpoint_path": restored.checkpoint_path,
                   "step": entry.step, "epoch": entry.epoch, "ema": entry.ema, "monitor": config.evaluation.monitor,
                   "monitored_value": json_number(entry.monitor_value),
                   "validation": {key: json_number(value) for key, value in entry.metrics.items()
                                  if key.startswith("val_")}},
        "verification_images": {"split": split, "count": num_images},
        "versions": {"detkeeper": __version__, "tensorflow": tf.__version__, "keras": keras.__version__},
        "created": _now(),
    }


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
