"""TFLite export: float32 and dynamic-range int8 models of a detector, each verified by its COCO mAP.

Dynamic-range int8 (variant ``int8_dynamic``) stores the weights as int8 and computes with float32
activations (the converter's default optimization without a representative dataset): weights in a
quarter of the space, but not an integer-only model for int8 accelerators.

    report = export_tflite(model, label_map, records, OUT / "tflite", max_boxes=config.data.max_boxes)
    print("\\n".join(report.summary_lines()))

The contract (also written to ``tflite.json`` beside the models, with the label map's classes):

- input ``images``: float32 ``[1, S, S, 3]``, RGB 0..255: the image as ``model.resize`` makes it (by
  default resized keeping its aspect ratio so its long side is ``S``, the new size rounded to whole
  pixels, bilinear, antialiased, placed at the top-left and padded bottom/right with zeros), i.e.
  detkeeper's evaluation transform (``detkeeper.data.augment.resize_for_model``; ``tflite.json``
  says which). TFLite models take fixed shapes, so
  the resize stays with the caller; the SavedModel does it in its graph.
- outputs (NMS inside, TFLite builtin ops only): ``detection_boxes`` float32 ``[1, D, 4]``
  ``(ymin, xmin, ymax, xmax)`` in input-canvas pixels (divide y by ``new_height / height`` and x
  by ``new_width / width``, clip to the image, to get original pixels); ``detection_scores``
  ``[1, D]``; ``detection_classes`` ``[1, D]`` label-map ids as float32 (0 in padding rows), as
  the SavedModel returns them; ``num_detections`` float32 ``[1]``.

Why NMS is inside, with builtins: ``tf.image.combined_non_max_suppression`` (what the SavedModel
and ``Detector.detect`` use) has no TFLite builtin. With ``SELECT_TF_OPS`` it converts, but the
file then needs the Flex delegate, which neither TF 2.21's ``tf.lite.Interpreter`` nor LiteRT's
pip package ships (``Select TensorFlow op(s) ... not supported by this interpreter``;
google-ai-edge/LiteRT#6458), nor a stock mobile runtime. So the graph moves each class's copy of
every box into a region of its own and runs one builtin ``NON_MAX_SUPPRESSION_V5`` over all
(anchor, class) pairs: the same class-aware NMS (torchvision's ``batched_nms`` trick), exact,
which filters by the score threshold before it sorts. It holds ``anchors x classes x 16`` bytes
of boxes (0.8 MB at 256 px with 4 classes; 98 MB for a 640 px P3-P7 model with 80 classes).
Taking the best 1000 pairs first (``TOPK_V2``) was slower (about 22 vs 10 ms at 256 px) and
missed detections of an undertrained model with more candidates than that above the threshold.
Raw boxes and scores with NMS left to the caller would make every caller write NMS.

No content window: the TFLite model sees only its canvas, so it clips detections to the canvas and
keeps those that lie wholly in a padded image's padding (empty boxes once clipped to the image), where
``Detector.detect`` and the SavedModel drop them for the TF OD API's families and take the next best
(``Detector.nms_clipping``). Taking a window would mean a second input, and dropping after NMS would
need NMS to select past ``max_detections`` (up to ``max_detections x classes`` boxes): neither
``NON_MAX_SUPPRESSION_V5`` nor the TF OD API's own ``TFLite_Detection_PostProcess`` custom op takes a
clip window, and the API's TFLite export takes only ``fixed_shape_resizer`` (stretched) models
(``export_tflite_graph_lib_tf2.py``). So the float32 model is verified against the checkpoint's
detections with the whole canvas as window (those drop only a box wholly outside the canvas).

Conversion goes through a SavedModel written by ``keras.export.ExportArchive``: converting a
``tf.function`` (or a ``tf.Module`` holding the detector) left Keras 3's variables as
uninitialised TFLite resource variables in TF 2.21 (a 0.15 MB file answering NaN).

A model that does not convert, does not run in the interpreter, or (float32) does not answer like
the checkpoint is reported with the reason, never raised, and its file is not written (only an
error writing files, e.g. a full disk, is raised).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from detkeeper.data.augment import Resize
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import evaluation_dataset
from detkeeper.data.record import DetectionRecord
from detkeeper.evaluation.runner import compiled_detect, run_validation
from detkeeper.export.verify import TOLERANCE, _compare, _normalized_rows
from detkeeper.files import atomic_write_bytes, atomic_write_text
from detkeeper.run.exports import TFLITE_CONTRACT_FILE, TFLITE_FILES, TFLITE_QUANTIZATION

OUTPUT_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
_INTERPRETER_DEPRECATION = ".*tf.lite.Interpreter is deprecated.*"


@dataclasses.dataclass(frozen=True)
class TFLiteModel:
    """One converted (or not) model. ``status``: ``verified``, ``did not convert``, ``did not run``
    or ``did not verify`` (float32 only: it must answer like the checkpoint)."""

    variant: str
    status: str
    reason: str | None  # why it is not ``verified``
    file: str | None  # relative to the export folder's tflite/ (None: not written)
    size_bytes: int | None
    convert_seconds: float | None
    map: float | None  # COCO mAP on the verification images
    map_drop: float | None  # checkpoint mAP - this model's
    max_box_difference: float | None  # vs the checkpoint's detections, boxes / input size
    max_score_difference: float | None
    first_difference: str | None  # the first detection without a counterpart (None: all matched)
    latency_ms: float | None  # interpreter time per image during verification (after one warm-up call)

    @property
    def ok(self) -> bool:
        return self.status == "verified"

    @property
    def quantization(self) -> str:
        return TFLITE_QUANTIZATION.get(self.variant, self.variant)

    def describe(self) -> str:
        if not self.ok:
            return f"{self.quantization}: {self.status}: {self.reason}"
        scored = ("no mAP (the verification images have no boxes)" if self.map is None
                  else f"mAP {self.map:.4f} (drop {self.map_drop:+.4f})")
        return f"{self.quantization}: tflite/{self.file} ({self.size_bytes / 1e6:.2f} MB), {scored}"


@dataclasses.dataclass(frozen=True)
class TFLiteReport:
    models: tuple[TFLiteModel, ...]
    contract: dict
    map_checkpoint: float | None  # the checkpoint's mAP on the same images, through detkeeper evaluate's path
    num_images: int
    seconds: float

    def model(self, variant: str) -> TFLiteModel:
        return next(model for model in self.models if model.variant == variant)

    def to_json_dict(self) -> dict:
        return {"models": {model.variant: {**dataclasses.asdict(model), "quantization": model.quantization}
                           for model in self.models},
                "map_checkpoint": self.map_checkpoint, "num_images": self.num_images,
                "seconds": self.seconds, "contract": self.contract}

    def summary_lines(self) -> list[str]:
        checkpoint = "" if self.map_checkpoint is None else f", checkpoint mAP {self.map_checkpoint:.4f}"
        lines = [f"TFLite ({self.num_images} verification images{checkpoint}; {self.seconds:.1f} s):"]
        return lines + [f"  {model.describe()}" for model in self.models]


def export_tflite(model, label_map: LabelMap, records: Sequence[DetectionRecord], out_dir: str | os.PathLike, *,
                  max_boxes: int) -> TFLiteReport:
    """Convert `model` (thresholds already the export's) to ``out_dir/model_float32.tflite`` and
    ``out_dir/model_int8_dynamic.tflite`` (dynamic-range: int8 weights, float32 activations), verify each on `records` against the model's own
    detections and mAP, and write ``out_dir/tflite.json`` (contract and results)."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    converted: dict[str, _Converted | TFLiteModel] = {}
    with tempfile.TemporaryDirectory(prefix="detkeeper-tflite-") as folder:
        failure = _write_conversion_saved_model(model, label_map, Path(folder))
        for variant in TFLITE_FILES:
            converted[variant] = (_failed(variant, "did not convert", failure) if failure is not None
                                  else _convert(variant, Path(folder)))
    map_checkpoint, reference_rows = None, []
    if any(isinstance(item, _Converted) for item in converted.values()):
        reference = run_validation(_recording(_on_canvas(compiled_detect(model)), reference_rows),
                                   _dataset(model, label_map, records, max_boxes), label_map, ground_truth=records,
                                   max_detections=model.max_detections)
        map_checkpoint = _map_or_none(reference, records)
    results = [item if isinstance(item, TFLiteModel) else
               _verify(variant, item, out_dir / TFLITE_FILES[variant], model, label_map, records, max_boxes,
                       reference_rows, map_checkpoint)
               for variant, item in converted.items()]
    report = TFLiteReport(models=tuple(results), contract=tflite_contract(model, label_map),
                          map_checkpoint=map_checkpoint, num_images=len(records), seconds=time.perf_counter() - started)
    atomic_write_text(out_dir / TFLITE_CONTRACT_FILE, json.dumps(report.to_json_dict(), indent=2) + "\n")
    return report


def tflite_contract(model, label_map: LabelMap) -> dict:
    """What ``tflite.json`` says a caller must send and will get back."""
    size, detections = int(model.image_size), int(model.max_detections)
    return {
        "format": "detkeeper-tflite/1",
        "files": dict(TFLITE_FILES),
        "int8_dynamic": "dynamic-range quantization: weights int8, activations float32 (converter.optimizations = "
                        "[tf.lite.Optimize.DEFAULT], no representative dataset), so not an integer-only model; "
                        "same inputs and outputs as float32",
        "signature": "serving_default",
        "inputs": {"images": {"dtype": "float32", "shape": [1, size, size, 3],
                              "meaning": f"RGB 0..255; the image {Resize.of(model).describe(size)}"}},
        "outputs": {
            "detection_boxes": {"dtype": "float32", "shape": [1, detections, 4],
                                "meaning": "ymin, xmin, ymax, xmax in input-canvas pixels; original pixels: y / "
                                           "(new_height / height), x / (new_width / width), clipped to the image"},
            "detection_scores": {"dtype": "float32", "shape": [1, detections], "meaning": "0 in padding rows"},
            "detection_classes": {"dtype": "float32", "shape": [1, detections],
                                  "meaning": "label-map ids (1-based, see classes); 0 in padding rows"},
            "num_detections": {"dtype": "float32", "shape": [1], "meaning": "rows before the padding"},
        },
        "postprocessing": {"in_model": True, "nms": "class-aware over every (anchor, class) pair, as the SavedModel: "
                                                    "one TFLite builtin NON_MAX_SUPPRESSION_V5, each class's boxes "
                                                    "shifted into a region of their own",
                           "score_threshold": float(model.score_threshold), "iou_threshold": float(model.iou_threshold),
                           "max_detections": detections},
        "ops": "TFLite builtins only (no Flex / SELECT_TF_OPS delegate needed)",
        "classes": {str(item.id): item.display_name for item in label_map.items},
    }


def canvas_detect_function(model, label_map: LabelMap):
    """``images [1, S, S, 3] -> {detection_boxes, ...}`` with NMS made of TFLite builtins (the
    graph that is converted); the same detections as ``model.detect``."""
    size, detections = int(model.image_size), int(model.max_detections)
    label_ids = tf.constant([0.0] + [float(class_id) for class_id in label_map.ids], tf.float32)  # index + 1 -> id

    def detect(images):
        candidates, probabilities = model.decode_boxes_and_scores(model(images, training=False))
        num_classes = int(probabilities.shape[-1])
        # One NMS for every class at once: class c's copy of each box moves to [c * (S + 1), c * (S + 1) + S],
        # where it cannot overlap another class's. Pairs are anchor-major: position = anchor * classes + class.
        if model.CLIP_BEFORE_NMS:  # as Detector.postprocess
            boxes = placed = tf.clip_by_value(candidates[0], 0.0, float(size))
            offsets = tf.range(num_classes, dtype=tf.float32) * float(size + 1)
        else:  # unclipped boxes may reach past the image: the classes' regions are as far apart as they reach
            boxes = candidates[0]
            placed = boxes - tf.reduce_min(boxes)
            offsets = tf.range(num_classes, dtype=tf.float32) * (tf.reduce_max(placed) + 1.0)
        shifted = tf.reshape(placed[:, None, :] + offsets[None, :, None], [-1, 4])
        selected, scores, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=shifted, scores=tf.reshape(probabilities[0], [-1]), max_output_size=detections,
            iou_threshold=float(model.iou_threshold), score_threshold=float(model.score_threshold),
            soft_nms_sigma=0.0, pad_to_max_output_size=True)
        classes = selected % num_classes
        real = tf.range(detections) < count
        return {
            "detection_boxes": tf.where(real[:, None], tf.clip_by_value(tf.gather(boxes, selected // num_classes),
                                                                        0.0, float(size)), 0.0)[None],
            "detection_scores": tf.where(real, scores, 0.0)[None],
            "detection_classes": tf.where(real, tf.gather(label_ids, classes + 1), 0.0)[None],
            "num_detections": tf.cast(count, tf.float32)[None],
        }

    return detect


def load_interpreter(path: str | os.PathLike, num_threads: int | None = None):
    """``tf.lite.Interpreter`` for `path`, its deprecation notice silenced (LiteRT's
    ``ai_edge_litert.interpreter.Interpreter`` has the same API), and its signature runner."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATION, category=UserWarning)
        interpreter = tf.lite.Interpreter(model_path=os.fspath(path), num_threads=num_threads)
    return interpreter, interpreter.get_signature_runner("serving_default")


def _write_conversion_saved_model(model, label_map: LabelMap, folder: Path) -> str | None:
    """The graph to convert, as a SavedModel in `folder`; the reason when it cannot be written."""
    size = int(model.image_size)
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", canvas_detect_function(model, label_map),
                             input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="images")])
        archive.write_out(os.fspath(folder), verbose=False)
    except Exception as error:  # noqa: BLE001 -- any failure to trace or save is reported, not raised
        return _reason(error)
    return None


@dataclasses.dataclass(frozen=True)
class _Converted:
    data: bytes
    seconds: float


def _convert(variant: str, saved_model: Path) -> _Converted | TFLiteModel:
    started = time.perf_counter()
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(saved_model))
        if variant == "int8_dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        data = converter.convert()
    except Exception as error:  # noqa: BLE001 -- the converter raises ConverterError, ValueError, ...
        return _failed(variant, "did not convert", _reason(error))
    return _Converted(data, time.perf_counter() - started)


def _verify(variant: str, converted: _Converted, path: Path, model, label_map: LabelMap, records, max_boxes: int,
            reference_rows: list[dict], map_checkpoint: float | None) -> TFLiteModel:
    """Write the model to `path`, run it on `records` and compare with the checkpoint's detections;
    the file is removed again when it does not run, or (float32) does not answer like the checkpoint."""
    data, convert_seconds = converted.data, converted.seconds
    atomic_write_bytes(path, data)
    rows: list[dict] = []
    try:
        _, runner = load_interpreter(path)
        size = int(model.image_size)
        runner(images=np.zeros([1, size, size, 3], np.float32))  # the first call prepares the kernels: not timed
        result = run_validation(_recording(_interpreter_detect(runner, label_map), rows),
                                _dataset(model, label_map, records, max_boxes), label_map, ground_truth=records,
                                max_detections=model.max_detections)
    except Exception as error:  # noqa: BLE001 -- e.g. an op the interpreter cannot prepare
        path.unlink()
        return _failed(variant, "did not run", f"converted, but the TFLite interpreter failed: {_reason(error)}",
                       convert_seconds=convert_seconds)
    box_error = score_error = 0.0
    first_difference = None
    for position, (expected, got) in enumerate(zip(reference_rows, rows)):
        comparison = _compare(_normalized_rows(expected), _normalized_rows(got), model.score_threshold,
                              model.max_detections)
        box_error, score_error = max(box_error, comparison.box), max(score_error, comparison.score)
        if comparison.problem and first_difference is None:
            first_difference = f"image {position} ({records[position].image_id}): {comparison.problem}"
    found_map = _map_or_none(result, records)
    drop = None if map_checkpoint is None else map_checkpoint - found_map
    status, reason = "verified", None
    if variant == "float32" and (first_difference or (drop is not None and abs(drop) > TOLERANCE["mAP"])):
        path.unlink()
        status = "did not verify"
        maps = "" if map_checkpoint is None else f"mAP {found_map:.4f} vs {map_checkpoint:.4f}; "
        reason = (f"the float32 model does not answer like the checkpoint ({maps}"
                  f"{first_difference or 'detections matched'}), so it was not written")
    return TFLiteModel(variant=variant, status=status, reason=reason, file=path.name if status == "verified" else None,
                       size_bytes=len(data), convert_seconds=convert_seconds, map=found_map, map_drop=drop,
                       max_box_difference=box_error, max_score_difference=score_error,
                       first_difference=first_difference, latency_ms=result.latency_ms)


def _interpreter_detect(runner, label_map: LabelMap):
    """A ``Detector.detect``-shaped callable over the interpreter: batch of canvases -> model pixels,
    contiguous class indices (-1 padding), as :func:`detkeeper.evaluation.runner.run_validation` takes
    (the windows unused: the model has no window input, see the module doc)."""
    def detect(images, windows):
        images = np.asarray(images, np.float32)
        outputs = [runner(images=images[row:row + 1]) for row in range(len(images))]
        joined = {key: np.concatenate([output[key] for output in outputs]) for key in OUTPUT_KEYS}
        count = joined["num_detections"].astype(np.int32)
        real = np.arange(joined["detection_scores"].shape[1])[None, :] < count[:, None]
        classes = np.full(real.shape, -1, np.int64)
        classes[real] = label_map.ids_to_indices(joined["detection_classes"][real].astype(np.int64))
        return {"boxes": joined["detection_boxes"], "scores": joined["detection_scores"], "classes": classes,
                "num_detections": count}

    return detect


def _on_canvas(detect):
    """`detect` with every image's window its whole canvas, as the TFLite model sees it (module doc)."""
    def run(images, windows):
        size = float(images.shape[1])
        return detect(images, tf.tile(tf.constant([[0.0, 0.0, size, size]]), [len(images), 1]))

    return run


def _recording(detect, rows: list[dict]):
    """`detect`, keeping each image's detections (boxes / input size, so verify's tolerance applies)."""
    def run(images, windows):
        found = {key: np.asarray(value) for key, value in detect(images, windows).items()}
        size = float(images.shape[1])
        rows.extend({"boxes": found["boxes"][row] / size, "scores": found["scores"][row],
                     "classes": found["classes"][row], "num_detections": found["num_detections"][row]}
                    for row in range(len(found["scores"])))
        return found

    return run


def _dataset(model, label_map: LabelMap, records, max_boxes: int):
    return evaluation_dataset(records, label_map, image_size=model.image_size, batch_size=8, max_boxes=max_boxes,
                              resize=Resize.of(model))


def _map_or_none(validation, records) -> float | None:
    return float(validation.result.stats["mAP"]) if any(record.num_boxes for record in records) else None


def _failed(variant: str, status: str, reason: str, convert_seconds: float | None = None) -> TFLiteModel:
    return TFLiteModel(variant=variant, status=status, reason=reason, file=None, size_bytes=None,
                       convert_seconds=convert_seconds, map=None, map_drop=None, max_box_difference=None,
                       max_score_difference=None, first_difference=None, latency_ms=None)


def _reason(error: BaseException) -> str:
    """The error's type and message; for the converter, its ``error:`` lines without MLIR's
    ``loc(...)`` prefixes (e.g. ``'tf.CombinedNonMaxSuppression' op is neither a custom op nor a flex op``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    errors = [text.rsplit("): ", 1)[-1] if text.startswith("loc(") else text for text in errors]
    message = "; ".join(dict.fromkeys(text for text in errors if text)) or (lines[0] if lines else "no message")
    return f"{type(error).__name__}: {message[:400]}"
