"""Export verification: the SavedModel, reloaded without detkeeper, must answer as the checkpoint did.

The reference is the checkpoint's model run through detkeeper's own evaluation path (the tf.data
evaluation pipeline, ``Detector.detect``, detections mapped back to original pixels), i.e. what
``detkeeper evaluate`` scores. The export is run by :mod:`standalone_check` in a fresh Python
process that refuses to import detkeeper, through the loaded object and every detection
signature. Detections are matched per image (same class, boxes and scores within
:data:`TOLERANCE`), and the COCO mAP of both on those images must agree. Every entry point must
return the TF OD API's eight outputs with their dtypes and shapes, and each detection must be its
anchor's: its box that anchor's raw box (clipped), its score that anchor's score for its class.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data.augment import Resize
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import evaluation_dataset
from detkeeper.data.record import DetectionRecord, denormalize_yxyx_batch, normalize_yxyx_batch
from detkeeper.errors import DataError, RunFailed
from detkeeper.evaluation.coco import CocoEvaluator
from detkeeper.evaluation.runner import compiled_detect, original_detections, records_ground_truth
from detkeeper.export.serving import OUTPUT_LAYOUT
from detkeeper.models.archive import load_keras_archive
from detkeeper.models.boxes import content_windows

#: Largest differences accepted between checkpoint and export (boxes normalized to the image), and
#: (``anchor_box``) between a detection's box and its anchor's raw box, both from the same export call.
TOLERANCE = {"box": 2e-3, "score": 1e-3, "mAP": 1e-3, "keras": 1e-4, "anchor_box": 1e-5}
_SIGNATURE_RESULTS = ("call", "encoded_image_string_tensor", "tf_example")


@dataclasses.dataclass(frozen=True)
class Verification:
    """What verification compared and found; ``passed`` only when ``problems`` is empty."""

    passed: bool
    problems: tuple[str, ...]
    num_images: int
    checked: tuple[str, ...]  # the entry points compared with the checkpoint
    max_box_difference: float
    max_score_difference: float
    detections_compared: int
    keras_archive_difference: float | None  # max |output| difference of the reloaded .keras archive
    map_checkpoint: float | None  # COCO mAP on the verification images (None: no ground truth)
    map_export: float | None
    load_seconds: float  # tf.saved_model.load in the fresh process
    seconds: float
    tolerance: dict

    def to_json_dict(self) -> dict:
        return {**dataclasses.asdict(self), "problems": list(self.problems), "checked": list(self.checked),
                "map_drop": (None if self.map_checkpoint is None else self.map_checkpoint - self.map_export)}

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        text = (f"verification {verdict} on {self.num_images} images ({', '.join(self.checked)}): max box "
                f"difference {self.max_box_difference:.2g}, max score difference {self.max_score_difference:.2g}")
        if self.map_checkpoint is not None:
            text += f", mAP checkpoint {self.map_checkpoint:.4f} vs export {self.map_export:.4f}"
        return text


def verify_saved_model(saved_model_dir: str | os.PathLike, model, label_map: LabelMap,
                       records: Sequence[DetectionRecord], *, max_boxes: int, metadata_json: str,
                       keras_path: str | os.PathLike | None = None,
                       scratch_dir: str | os.PathLike | None = None) -> Verification:
    """Compare the SavedModel at `saved_model_dir` (and the ``.keras`` archive at `keras_path`)
    with the in-memory `model` (whose thresholds are the export's) on `records` (their boxes give
    the mAP check; records without boxes still compare detections). The fresh process reads the
    images from a folder made in `scratch_dir` (the system's temporary folder when None) and
    removed after: the exporter's staging folder, so a process killed meanwhile leaves them where
    the next export clears them, not in /tmp."""
    started = time.perf_counter()
    reference, sizes, canvases = _reference_detections(model, label_map, records, max_boxes)
    with tempfile.TemporaryDirectory(prefix="verification-images-", dir=scratch_dir) as folder:
        for position, record in enumerate(records):
            Path(folder, f"{position:04d}").write_bytes(record.read_encoded())
        answered = _run_standalone(saved_model_dir, folder)
    problems = []
    if answered["detkeeper_imported"]:
        problems.append("the SavedModel imported detkeeper when loaded")
    if answered["metadata"] != metadata_json:
        problems.append("the metadata signature does not return the export's metadata.json")
    if LabelMap.from_pbtxt_text(answered["label_map"], "the metadata signature's label map") != label_map:
        problems.append("the SavedModel's label map differs from the run's")
    if [list(size) for size in sizes] != answered["image_sizes"]:
        problems.append("the fresh process decoded the images at other sizes than detkeeper's pipeline")
    problems += _output_problems(answered, label_map, model.max_detections, int(model.BACKGROUND_CLASS))
    box_error = score_error = 0.0
    compared = 0
    for name in _SIGNATURE_RESULTS:
        exported = [_normalized_rows(row) for row in answered[name]]
        for position, (expected, got) in enumerate(zip(reference, exported)):
            comparison = _compare(expected, got, model.score_threshold, model.max_detections)
            box_error, score_error = max(box_error, comparison.box), max(score_error, comparison.score)
            compared += comparison.matched
            if comparison.problem:
                problems.append(f"{name}, image {position} ({records[position].image_id}): {comparison.problem}")
    first = _normalized_rows(answered["serving_default_first_image"][0])
    if _compare(_normalized_rows(answered["call"][0]), first, 0.0, model.max_detections).problem:
        problems.append("the serving_default signature answers differently from calling the loaded object")
    keras_difference = None
    if keras_path is not None:
        keras_difference = _keras_archive_difference(keras_path, model, canvases)
        if not keras_difference <= TOLERANCE["keras"]:
            problems.append(f"the .keras archive, reloaded, differs from the checkpoint's model by {keras_difference:.3g}")
    map_checkpoint = map_export = None
    if any(record.num_boxes for record in records):
        map_checkpoint = _mean_ap(reference, sizes, records, label_map, model.max_detections)
        map_export = _mean_ap([_normalized_rows(row) for row in answered["call"]],
                              sizes, records, label_map, model.max_detections)
        if abs(map_checkpoint - map_export) > TOLERANCE["mAP"]:
            problems.append(f"mAP on the verification images: checkpoint {map_checkpoint:.4f}, export "
                            f"{map_export:.4f}")
    return Verification(passed=not problems, problems=tuple(problems[:20]), num_images=len(records),
                        checked=("loaded object (uint8)", "serving_default", "encoded_image_string_tensor",
                                 "tf_example", "metadata", "TF OD API outputs and anchors")
                        + ((".keras archive",) if keras_path is not None else ()),
                        max_box_difference=box_error, max_score_difference=score_error,
                        detections_compared=compared, keras_archive_difference=keras_difference,
                        map_checkpoint=map_checkpoint, map_export=map_export,
                        load_seconds=answered["load_seconds"], seconds=time.perf_counter() - started,
                        tolerance=dict(TOLERANCE))


def _output_problems(answered: dict, label_map: LabelMap, max_detections: int, background_columns: int) -> list[str]:
    """What is wrong with the outputs' keys, dtypes and shapes (``output_layouts``), and with the
    anchors the detections name (``anchor_indices`` ... of each row), as the fresh process saw them.
    `background_columns`: 1 when the score outputs start with a background column."""
    problems = []
    anchors_of = {}
    for name, layout in answered["output_layouts"].items():
        if set(layout) != set(OUTPUT_LAYOUT):
            problems.append(f"{name} returns {', '.join(sorted(layout))}; expected {', '.join(OUTPUT_LAYOUT)}")
            continue
        wrong = sorted(key for key, (dtype, _) in layout.items() if dtype != "float32")
        if wrong:
            problems.append(f"{name}: {', '.join(wrong)} not float32 (as the TF OD API returns them)")
        dims = {"B": layout["num_detections"][1][0], "N": max_detections,
                "A": layout["raw_detection_boxes"][1][1],
                "C": label_map.num_classes + background_columns}
        for key, shape in OUTPUT_LAYOUT.items():
            expected = [dims.get(size, size) for size in shape]
            if layout[key][1] != expected:
                problems.append(f"{name}: {key} has shape {layout[key][1]}, expected {expected} "
                                f"({', '.join(map(str, shape))})")
        anchors_of[name] = dims["A"]
    signatures = {"call": "call", "serving_default_first_image": "serving_default",
                  "encoded_image_string_tensor": "encoded_image_string_tensor", "tf_example": "tf_example"}
    for result, name in signatures.items():
        if name not in anchors_of:
            continue
        for position, row in enumerate(answered[result]):
            problem = _anchor_problem(row, label_map, anchors_of[name], background_columns)
            if problem:
                problems.append(f"{name}, image {position}: {problem}")
                break
    return problems


def _anchor_problem(row: dict, label_map: LabelMap, num_anchors: int, background_columns: int) -> str | None:
    """Is each detection of `row` the anchor's it names: an anchor index in range, the anchor's
    scores as its multiclass scores, its score in its class's column, its box the anchor's clipped?"""
    count = int(row["num_detections"])
    anchors = np.asarray(row["anchor_indices"], np.float64)
    if not row["padding_zero"]:
        return "detection_anchor_indices or detection_multiclass_scores are not 0 past num_detections"
    whole = (anchors == np.round(anchors)) & (anchors >= 0) & (anchors < num_anchors)
    if len(anchors) != count or not whole.all():
        return f"detection_anchor_indices {anchors.tolist()[:5]}... are not whole anchor numbers below {num_anchors}"
    if count == 0:
        return None
    multiclass = np.asarray(row["multiclass_scores"], np.float32).reshape(count, -1)
    if not np.array_equal(multiclass, np.asarray(row["raw_scores_of_anchors"], np.float32).reshape(count, -1)):
        return "detection_multiclass_scores are not the raw_detection_scores of the detections' anchors"
    try:
        columns = background_columns + label_map.ids_to_indices(
            np.asarray(row["classes"], np.float64)[:count].astype(np.int64))
    except DataError as error:
        return str(error)
    scores = np.asarray(row["scores"], np.float32)[:count]
    if not np.array_equal(multiclass[np.arange(count), columns], scores):
        return "detection_scores are not the detections' anchors' scores for their classes"
    raw = np.clip(np.asarray(row["raw_boxes_of_anchors"], np.float32).reshape(count, 4), 0.0, 1.0)
    gap = float(np.abs(raw - np.asarray(row["boxes"], np.float32)[:count]).max())
    if gap > TOLERANCE["anchor_box"]:
        return f"detection_boxes differ from their anchors' raw_detection_boxes (clipped) by {gap:.3g}"
    return None


def _run_standalone(saved_model_dir, images_dir: str) -> dict:
    script = Path(__file__).with_name("standalone_check.py")
    environment = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
    environment["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-I", str(script), os.fspath(saved_model_dir), images_dir],
                          capture_output=True, text=True, env=environment, timeout=600)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunFailed(f"{saved_model_dir}: the exported SavedModel failed to load or run in a fresh "
                        f"Python process without detkeeper: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _reference_detections(model, label_map: LabelMap, records, max_boxes: int):
    """The checkpoint's detections as ``detkeeper evaluate`` computes them, normalized like an export's."""
    detect = compiled_detect(model)
    rows, sizes, canvases = [], [], []
    for batch in evaluation_dataset(records, label_map, image_size=model.image_size, batch_size=8,
                                    max_boxes=max_boxes, resize=Resize.of(model)):
        canvases.append(batch["images"])
        windows = content_windows(batch["image_scales"], batch["image_sizes"])
        raw = {key: np.asarray(value) for key, value in detect(batch["images"], windows).items()}
        batch_sizes = batch["image_sizes"].numpy()
        original = original_detections(raw, label_map, batch["image_scales"].numpy(), batch_sizes)
        for row, size in enumerate(batch_sizes):
            count = int(original["num_detections"][row])
            rows.append({"boxes": normalize_yxyx_batch(original["boxes"][row, :count], size),
                         "scores": original["scores"][row, :count], "classes": original["classes"][row, :count]})
            sizes.append(tuple(int(value) for value in size))
    return rows, sizes, canvases


def _keras_archive_difference(path, model, canvases) -> float:
    """Largest difference between the raw outputs of the reloaded archive and of `model`."""
    reloaded = load_keras_archive(path)
    largest = 0.0
    for images in canvases:
        expected, got = model(images, training=False), reloaded(images, training=False)
        for first, second in zip(tf.nest.flatten(expected), tf.nest.flatten(got)):
            largest = max(largest, float(tf.reduce_max(tf.abs(tf.cast(first, tf.float32) - tf.cast(second, tf.float32)))))
    return largest


def _normalized_rows(row: dict) -> dict:
    count = int(row["num_detections"])
    return {"boxes": np.asarray(row["boxes"], np.float32).reshape(-1, 4)[:count],
            "scores": np.asarray(row["scores"], np.float32)[:count],
            "classes": np.asarray(row["classes"]).astype(np.int64)[:count]}


@dataclasses.dataclass(frozen=True)
class _Comparison:
    box: float
    score: float
    matched: int
    problem: str | None


def _compare(expected: dict, got: dict, score_threshold: float, max_detections: int) -> _Comparison:
    """Match each detection to one of the same class on the other side. Detections whose score is
    within tolerance of the threshold, or of the lowest kept score when NMS filled every slot,
    may fall on either side of the cut and are not required to match."""
    box_error = score_error = 0.0
    matched = 0
    for first, second in ((expected, got), (got, expected)):
        cut = score_threshold
        if len(first["scores"]) >= max_detections:
            cut = max(cut, float(first["scores"].min()))
        used = np.zeros(len(second["scores"]), bool)
        for box, score, class_id in zip(first["boxes"], first["scores"], first["classes"]):
            candidates = np.flatnonzero((second["classes"] == class_id) & ~used)
            if candidates.size:
                distance = np.abs(second["boxes"][candidates] - box).max(axis=1)
                best = candidates[int(np.argmin(distance))]
                box_gap, score_gap = float(distance.min()), abs(float(second["scores"][best]) - float(score))
                if box_gap <= TOLERANCE["box"] and score_gap <= TOLERANCE["score"]:
                    used[best] = True
                    box_error, score_error = max(box_error, box_gap), max(score_error, score_gap)
                    matched += 1
                    continue
            if score > cut + TOLERANCE["score"]:
                side = "the export" if first is expected else "the checkpoint"
                return _Comparison(box_error, score_error, matched,
                                   f"a class-{class_id} detection (score {score:.4f}, box {np.round(box, 4).tolist()}) "
                                   f"has no counterpart in {side}'s")
    return _Comparison(box_error, score_error, matched // 2, None)


def _mean_ap(rows: list[dict], sizes, records, label_map: LabelMap, max_detections: int) -> float:
    evaluator = CocoEvaluator(label_map, max_detections=max_detections)
    width = max([len(row["scores"]) for row in rows] + [1])
    boxes = np.zeros([len(rows), width, 4], np.float32)
    scores = np.zeros([len(rows), width], np.float32)
    classes = np.full([len(rows), width], -1, np.int64)
    for position, (row, (height, image_width)) in enumerate(zip(rows, sizes)):
        count = len(row["scores"])
        boxes[position, :count] = denormalize_yxyx_batch(row["boxes"], (height, image_width))
        scores[position, :count], classes[position, :count] = row["scores"], row["classes"]
    by_id = {record.image_id: record for record in records}
    evaluator.update(records_ground_truth(by_id, [record.image_id for record in records]),
                     {"boxes": boxes, "scores": scores, "classes": classes,
                      "num_detections": np.array([len(row["scores"]) for row in rows])})
    return float(evaluator.result().stats["mAP"])
