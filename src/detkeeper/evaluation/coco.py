"""COCO box evaluation from arrays, by the COCO API itself (faster-coco-eval or pycocotools).

Batches of ground truth and detections (numpy arrays, lists or tf tensors, straight from a model
and the input pipeline) are checked, kept as float64 arrays, and turned into the COCO ground-truth
dict and results list in memory at :meth:`CocoEvaluator.result`. The numbers then come from the
library's own ``evaluate`` / ``accumulate`` / ``summarize``: nothing of COCO's matching or
averaging is re-implemented here, so they equal an evaluation from JSON files.

Two details keep them equal to the last bit:

* Image ids are ranked as pycocotools sorts them (:func:`~detkeeper.data.record.coco_order`:
  numerically when all are integers, else as strings) and renumbered 1..N in that order. COCO
  breaks score ties across images by image-id order, so a renumbering that kept insertion order
  would change AP whenever scores tie. Pass each dataset's original ids (COCO's integers, not
  their strings): ``"1000"`` sorts before ``"139"``.
* All detections are passed, in the order given: COCO keeps the ``maxDets`` best per image and
  category after a stable sort, so truncating here could only differ from it.

``max_detections`` (N) is COCO's largest ``maxDets``; the evaluator runs COCO with
``maxDets = [1, min(10, N), N]`` (:func:`~detkeeper.evaluation.results.coco_max_dets`), so every
N >= 1 works: with N <= 10 no image keeps more than N detections, so recall at 10 is recall at N.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.data.record import coco_order, yxyx_to_xywh
from detkeeper.errors import DataError
from detkeeper.evaluation.results import EvaluationResult, coco_max_dets

BACKENDS = ("faster_coco_eval", "pycocotools")

ImageId = int | str


@dataclass(frozen=True)
class _Rows:
    """The valid rows of one batch (padding dropped), flattened image by image."""

    image: np.ndarray  # [n] int64, position of the image in insertion order
    boxes: np.ndarray  # [n, 4] float64 yxyx
    classes: np.ndarray  # [n] int64 category ids
    extra: tuple[np.ndarray, ...]  # ground truth: (is_crowd, area); detections: (scores,)


def _as_array(value: Any, key: str) -> np.ndarray:
    """A numpy array from numpy, nested lists or anything with ``.numpy()`` (tf tensors)."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as error:
        raise DataError(f"{key}: cannot be read as a rectangular array ({error})") from None


def _numeric(value: Any, key: str, dtype: type | None = None) -> np.ndarray:
    """`value` as a numeric array, cast to `dtype` when given (float64 keeps the reference's precision)."""
    array = _as_array(value, key)
    if array.dtype.kind not in "biuf":
        raise DataError(f"{key}: expected numbers, got an array of dtype {array.dtype}")
    return array if dtype is None else array.astype(dtype, copy=False)


def _integral(array: np.ndarray, key: str) -> np.ndarray:
    """Class ids and counts may arrive as floats (NMS returns them so); they must be whole numbers."""
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise DataError(f"{key}: expected whole numbers, got {array[bad][0].item()!r}")
    return array.astype(np.int64)


def _image_id(value: Any, key: str) -> ImageId:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, (str, np.str_)):
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise DataError(f"{key}: image ids must be integers or strings, got {value!r}")


class CocoEvaluator:
    """COCO box mAP over batches: ``update`` per batch, ``result`` at the end, ``reset`` to reuse.

    ``categories`` (a :class:`LabelMap` or ``[{"id", "name"}, ...]``) are the classes COCO
    averages over, by label-map id; every class id passed to ``update`` must be one of them.
    ``max_detections`` (any N >= 1) is COCO's largest ``maxDets``, what ``mAP*`` and ``AR100``
    use; ``AR1`` and ``AR10`` are recalls at 1 and ``min(10, N)`` detections per image.
    """

    def __init__(self, categories: LabelMap | Sequence[Mapping[str, Any]], backend: str = "faster_coco_eval",
                 max_detections: int = 100) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if not isinstance(max_detections, (int, np.integer)) or isinstance(max_detections, bool) or max_detections < 1:
            raise ValueError(f"max_detections must be a whole number >= 1 (detections kept per image); "
                             f"got {max_detections!r}")
        if not isinstance(categories, LabelMap):
            categories = LabelMap([LabelMapItem(int(c["id"]), str(c["name"]), str(c["name"]))
                                   for c in categories], source="categories")
        self.label_map = categories
        self.backend = backend
        self.max_detections = int(max_detections)
        self._class_ids = np.asarray(categories.ids, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._image_ids: list[ImageId] = []
        self._seen: set[str] = set()  # as strings: 139 and "139" are one image to COCO's string order
        self._ground_truth: list[_Rows] = []
        self._detections: list[_Rows] = []

    @property
    def num_images(self) -> int:
        return len(self._image_ids)

    # --- input ----------------------------------------------------------------------------------
    def update(self, ground_truth: Mapping[str, Any], detections: Mapping[str, Any]) -> None:
        """Add one batch. Boxes are yxyx absolute pixels of the original image; rows with class -1
        or beyond ``num_boxes`` / ``num_detections`` are padding. Extra keys are ignored.

        Ground truth: ``image_ids`` [B], ``boxes`` [B, M, 4], ``classes`` [B, M], optional
        ``num_boxes`` [B], ``is_crowd`` [B, M], ``area`` [B, M] (COCO's annotation area, which
        decides small/medium/large; the box area when absent). Detections: ``boxes`` [B, N, 4],
        ``scores`` [B, N], ``classes`` [B, N] (label-map ids, not model indices), optional
        ``num_detections`` [B]. Nothing is kept when the batch is refused.
        """
        image_ids = self._new_image_ids(ground_truth)
        size = len(image_ids)
        gt = _batch(ground_truth, "ground_truth", ("boxes", "classes"), ("is_crowd", "area"), "num_boxes", size)
        det = _batch(detections, "detections", ("boxes", "classes", "scores"), (), "num_detections", size)
        gt_image, gt_boxes, gt_classes = self._checked_rows(gt, "ground_truth", image_ids)
        det_image, det_boxes, det_classes = self._checked_rows(det, "detections", image_ids)
        if gt["is_crowd"] is None:
            crowd = np.zeros(gt_classes.shape, np.int64)
        else:
            crowd = (gt["is_crowd"][gt["valid"]] != 0).astype(np.int64)
        if gt["area"] is None:
            area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
        else:
            area = gt["area"][gt["valid"]]
            _refuse(area, ~np.isfinite(area) | (area < 0), "ground_truth['area']", "area must be finite and >= 0",
                    gt_image, image_ids)
        scores = det["scores"][det["valid"]]
        _refuse(scores, ~np.isfinite(scores), "detections['scores']", "scores must be finite", det_image, image_ids)

        first = len(self._image_ids)
        self._image_ids.extend(image_ids)
        self._seen.update(map(str, image_ids))
        self._ground_truth.append(_Rows(gt_image + first, gt_boxes, gt_classes, (crowd, area)))
        self._detections.append(_Rows(det_image + first, det_boxes, det_classes, (scores,)))

    def _new_image_ids(self, ground_truth: Mapping[str, Any]) -> list[ImageId]:
        if "image_ids" not in ground_truth:
            raise DataError("ground_truth['image_ids'] is missing: every image needs an id")
        values = ground_truth["image_ids"]
        if not isinstance(values, (list, tuple)):  # a list keeps mixed ints and strings apart
            array = _as_array(values, "ground_truth['image_ids']")
            if array.ndim != 1:
                raise DataError(f"ground_truth['image_ids']: expected shape [B], got {array.shape}")
            values = array.tolist()
        image_ids = [_image_id(value, "ground_truth['image_ids']") for value in values]
        in_batch: set[str] = set()
        for image_id in image_ids:
            if str(image_id) in self._seen or str(image_id) in in_batch:
                raise DataError(f"ground_truth['image_ids']: image id {image_id!r} was already seen; "
                                "each image may be evaluated once (call reset() to start over)")
            in_batch.add(str(image_id))
        return image_ids

    def _checked_rows(self, batch: dict, name: str,
                      image_ids: list[ImageId]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image index in the batch, boxes, classes) of the valid rows, checked: known classes,
        finite boxes, ymax >= ymin and xmax >= xmin."""
        valid = batch["valid"]
        image = np.broadcast_to(np.arange(len(image_ids))[:, None], valid.shape)[valid]
        classes = batch["classes"][valid]
        unknown = ~np.isin(classes, self._class_ids)
        if unknown.any():
            row = int(np.argmax(unknown))
            raise DataError(f"{name}['classes']: class id {classes[row]} (image {image_ids[image[row]]!r}) "
                            f"is not a category id (ids: {', '.join(map(str, self._class_ids))}); "
                            "pass label-map ids, not model indices, and -1 for padding")
        boxes = batch["boxes"][valid]
        _refuse(boxes, ~np.isfinite(boxes).all(axis=1), f"{name}['boxes']", "boxes must be finite", image, image_ids)
        _refuse(boxes, (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]), f"{name}['boxes']",
                "negative size (ymax < ymin or xmax < xmin) in [ymin, xmin, ymax, xmax]", image, image_ids)
        return image, boxes, classes

    # --- evaluation -----------------------------------------------------------------------------
    def result(self) -> EvaluationResult:
        """Evaluate every image seen since the last reset (an image with no boxes counts too)."""
        if not self._image_ids:
            raise DataError("COCO evaluation: no images to evaluate; call update() with a batch first")
        order = coco_order(self._image_ids)
        coco_id = np.empty(len(order), np.int64)
        coco_id[order] = np.arange(1, len(order) + 1)
        dataset = {
            "images": [{"id": i} for i in range(1, len(order) + 1)],
            "categories": [{"id": item.id, "name": item.name} for item in self.label_map.items],
            "annotations": _ground_truth_dicts(_concat(self._ground_truth, 2), coco_id),
        }
        detections = _detection_dicts(_concat(self._detections, 1), coco_id)
        num_detections = len(detections)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = _run_backend(self.backend, dataset, detections, self.max_detections)
        return EvaluationResult.from_cocoeval(
            evaluation, {item.id: item.name for item in self.label_map.items}, backend=self.backend,
            max_detections=self.max_detections, num_images=len(order), num_detections=num_detections,
            image_ids=tuple(self._image_ids[i] for i in order))


def _refuse(values: np.ndarray, bad: np.ndarray, key: str, what: str, image: np.ndarray,
            image_ids: list[ImageId]) -> None:
    """DataError naming the first bad row's value and image, if any row is bad."""
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{key}: {what}; got {values[row].tolist()} for image {image_ids[image[row]]!r}")


def _batch(values: Mapping[str, Any], name: str, required: tuple[str, ...], optional: tuple[str, ...],
           count_key: str, batch_size: int) -> dict:
    """One side of a batch as arrays (None for absent optional keys), shapes checked against
    ``boxes``, and ``valid``: the rows that are not padding."""
    for key in required:
        if values.get(key) is None:
            raise DataError(f"{name}['{key}'] is missing")
    boxes = _numeric(values["boxes"], f"{name}['boxes']", np.float64)
    if boxes.size == 0 and boxes.ndim in (2, 3):  # [[], []] from lists: no boxes at all
        boxes = boxes.reshape(boxes.shape[0], 0, 4)
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise DataError(f"{name}['boxes']: expected shape [B, M, 4] (ymin, xmin, ymax, xmax), got {boxes.shape}")
    if boxes.shape[0] != batch_size:
        raise DataError(f"batch sizes disagree: ground_truth['image_ids'] has {batch_size} images but "
                        f"{name}['boxes'] has {boxes.shape[0]}")
    rows = boxes.shape[:2]
    batch: dict[str, Any] = {"boxes": boxes}
    for key in (*required[1:], *optional):
        if values.get(key) is None:
            batch[key] = None
            continue
        array = _numeric(values[key], f"{name}['{key}']", np.float64 if key in ("area", "scores") else None)
        if array.size == 0 and rows[1] == 0:
            array = array.reshape(rows)
        if array.shape != rows:
            raise DataError(f"{name}['{key}'] has shape {array.shape} but {name}['boxes'] has shape "
                            f"{boxes.shape}; expected {list(rows)}")
        batch[key] = array
    batch["classes"] = _integral(batch["classes"], f"{name}['classes']")
    valid = batch["classes"] != -1
    if values.get(count_key) is not None:
        counts = _integral(_numeric(values[count_key], f"{name}['{count_key}']"), f"{name}['{count_key}']")
        if counts.shape != (batch_size,):
            raise DataError(f"{name}['{count_key}'] has shape {counts.shape} but {name}['boxes'] has shape "
                            f"{boxes.shape}; expected [{batch_size}]")
        if (counts < 0).any() or (counts > rows[1]).any():
            raise DataError(f"{name}['{count_key}']: counts must lie in 0..{rows[1]}, got {counts.tolist()}")
        valid &= np.arange(rows[1])[None, :] < counts[:, None]
    batch["valid"] = valid
    return batch


def _concat(parts: list[_Rows], num_extra: int) -> _Rows:
    if not parts:
        return _Rows(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64),
                     tuple(np.zeros(0) for _ in range(num_extra)))
    return _Rows(np.concatenate([p.image for p in parts]), np.concatenate([p.boxes for p in parts]),
                 np.concatenate([p.classes for p in parts]),
                 tuple(np.concatenate([p.extra[i] for p in parts]) for i in range(num_extra)))


def _ground_truth_dicts(rows: _Rows, coco_id: np.ndarray) -> list[dict]:
    crowd, area = rows.extra
    return [{"id": ann_id, "image_id": image, "category_id": category, "bbox": bbox, "area": a, "iscrowd": c}
            for ann_id, image, category, bbox, a, c in zip(
                range(1, len(rows.classes) + 1), coco_id[rows.image].tolist(), rows.classes.tolist(),
                yxyx_to_xywh(rows.boxes).tolist(), area.tolist(), crowd.tolist())]


def _detection_dicts(rows: _Rows, coco_id: np.ndarray) -> list[dict]:
    (scores,) = rows.extra
    return [{"image_id": image, "category_id": category, "bbox": bbox, "score": score}
            for image, category, bbox, score in zip(
                coco_id[rows.image].tolist(), rows.classes.tolist(), yxyx_to_xywh(rows.boxes).tolist(),
                scores.tolist())]


def _run_backend(backend: str, dataset: dict, detections: list[dict], max_detections: int):
    """The library's own COCO objects, built from memory, evaluated, accumulated and summarized."""
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster  # optional: the evaluator backend is chosen at run time

        def quiet(*args, **kwargs) -> None:
            return None

        coco_gt = COCO(dataset, print_function=quiet)
        coco_dt = coco_gt.loadRes(detections)
        evaluation = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=quiet)
    else:
        from pycocotools.coco import COCO  # optional: the evaluator backend is chosen at run time
        from pycocotools.cocoeval import COCOeval  # optional: the evaluator backend is chosen at run time

        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        if detections:
            coco_dt = coco_gt.loadRes(detections)
        else:  # pycocotools' loadRes reads anns[0]; an empty result set is built as it would be
            coco_dt = COCO()
            coco_dt.dataset = {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluation.params.maxDets = list(coco_max_dets(max_detections))
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation
