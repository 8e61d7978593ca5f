"""COCO numbers on COCO data: a COCO JSON read by `read_coco` and scored through `score_batches`
(the path of ``detkeeper evaluate``, the training callback and export verification) equals
pycocotools run on the JSON files themselves, to 1e-12: annotation areas (not box areas) decide
small/medium/large, crowd regions stay crowds, and integer ids keep COCO's numeric image order,
which breaks score ties across images."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detkeeper.data.coco import read_coco
from detkeeper.evaluation import BACKENDS
from detkeeper.evaluation.runner import score_batches

CATEGORY_IDS = (1, 3, 4, 7)


def pycocotools_on_files(gt_path: Path, results_path: Path, max_dets: list[int] | None = None):
    """pycocotools as its README runs it, on the files (with `max_dets` as its params.maxDets)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(str(results_path)), "bbox")
        if max_dets is not None:
            evaluation.params.maxDets = max_dets
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def model_batches(records, results: list[dict], batch_size: int):
    """The results file as a detector's batches reach `score_batches`: the records' image ids (the
    strings the input pipeline carries), boxes yxyx in original pixels, -1-padded classes."""
    found = defaultdict(list)
    for row in results:
        found[str(row["image_id"])].append(row)
    image_ids = [record.image_id for record in records]
    for start in range(0, len(image_ids), batch_size):
        chosen = image_ids[start:start + batch_size]
        width = max(len(found[i]) for i in chosen) + 1
        boxes, scores = np.zeros([len(chosen), width, 4]), np.zeros([len(chosen), width])
        classes = np.full([len(chosen), width], -1, np.int64)
        for row, image_id in enumerate(chosen):
            for column, det in enumerate(found[image_id]):
                x, y, w, h = det["bbox"]
                boxes[row, column] = [y, x, y + h, x + w]
                scores[row, column], classes[row, column] = det["score"], det["category_id"]
        counts = np.array([len(found[i]) for i in chosen])
        yield chosen, {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": counts}, 0.0, None


def score_files(gt_path: Path, results_path: Path, backend: str, batch_size: int = 7, max_detections: int = 100):
    readout = read_coco(gt_path)
    assert readout.problems == []
    results = json.loads(results_path.read_text())
    return score_batches(model_batches(readout.records, results, batch_size), readout.label_map, readout.records,
                         backend, max_detections, None, None).result


def assert_same_stats(result, reference) -> None:
    for name, got, want in zip(result.stats, result.stats.values(), reference.stats):
        assert abs(got - want) <= 1e-12, (result.backend, name, got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_fake100_read_and_scored_as_detkeeper_evaluate_does_equals_pycocotools(coco_fake100_dir, backend):
    gt_path = coco_fake100_dir / "instances_val2014_100.json"
    results_path = coco_fake100_dir / "instances_val2014_fakebbox100_results.json"
    result = score_files(gt_path, results_path, backend)
    reference = pycocotools_on_files(gt_path, results_path)
    assert_same_stats(result, reference)
    assert result.image_ids == tuple(sorted(reference.params.imgIds))  # COCO's integer ids, sorted as numbers


@pytest.mark.parametrize("max_detections", [1, 5, 10])
@pytest.mark.parametrize("backend", BACKENDS)
def test_small_max_detections_equal_pycocotools_with_the_same_max_dets(coco_fake100_dir, backend, max_detections):
    """N <= 10 runs COCO with maxDets [1, N, N] (no image keeps more than N, so AR10 is recall at N);
    pycocotools' summarize reads maxDets=100 for its first number, so that one is its mean AP at N."""
    gt_path = coco_fake100_dir / "instances_val2014_100.json"
    results_path = coco_fake100_dir / "instances_val2014_fakebbox100_results.json"
    result = score_files(gt_path, results_path, backend, max_detections=max_detections)
    reference = pycocotools_on_files(gt_path, results_path, [1, max_detections, max_detections])
    precision = reference.eval["precision"][:, :, :, 0, -1]
    assert reference.stats[0] == -1 and abs(result.stats["mAP"] - np.mean(precision[precision > -1])) <= 1e-12
    for name, got, want in list(zip(result.stats, result.stats.values(), reference.stats))[1:]:
        assert abs(got - want) <= 1e-12, (name, got, want)
    assert result.stats["AR10"] == result.stats["AR100"] and result.max_detections == max_detections
    printed = [line.split("maxDets=")[1].split("]")[0].strip() for line in result.format_table().splitlines()[:12]]
    assert printed == [str(max_detections)] * 6 + ["1"] + [str(max_detections)] * 5


def _number(rng: np.random.Generator, low: float, high: float, integer: bool) -> float:
    value = rng.uniform(low, high)
    return float(round(value)) if integer else round(value, 2)


def _box(rng: np.random.Generator, integer: bool) -> list[float]:
    size = [_number(rng, 2, 150, integer) for _ in range(2)]  # small, medium and large
    return [_number(rng, 0, 250, integer), _number(rng, 0, 250, integer), *size]


@st.composite
def coco_files(draw) -> tuple[dict, list[dict]]:
    """A COCO ground-truth file and a results file for it: integer ids of 1 to 7 digits in a
    shuffled order, crowd regions, polygon areas below their box's, tied scores."""
    num_images = draw(st.integers(2, 8))
    digits = draw(st.lists(st.integers(1, 7), min_size=num_images, max_size=num_images))
    integer, tied = draw(st.booleans()), draw(st.booleans())
    classes = CATEGORY_IDS[:draw(st.integers(1, 4))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ids: list[int] = []
    for count in digits:
        while (image_id := int(rng.integers(10 ** (count - 1), 10 ** count))) in ids:
            pass
        ids.append(image_id)
    images, annotations, results = [], [], []
    for image_id in ids:
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": 400, "height": 400})
        boxes = []
        for _ in range(int(rng.integers(0, 7))):
            box = _box(rng, integer)
            boxes.append(box)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice(classes)), "bbox": box,
                                "area": box[2] * box[3] * float(rng.uniform(0.3, 1.0)),  # a polygon's
                                "iscrowd": int(rng.random() < 0.15)})
        for _ in range(int(rng.integers(0, 16))):
            if boxes and rng.random() < 0.7:  # most detections sit on a ground-truth box, jittered
                x, y, w, h = boxes[int(rng.integers(len(boxes)))]
                box = [x + _number(rng, -0.1, 0.1, False) * w, y + _number(rng, -0.1, 0.1, False) * h,
                       w * _number(rng, 0.8, 1.2, False), h * _number(rng, 0.8, 1.2, False)]
                box = [float(round(v)) if integer else round(v, 2) for v in box]
            else:
                box = _box(rng, integer)
            score = float(rng.random())
            results.append({"image_id": image_id, "category_id": int(rng.choice(classes)), "bbox": box,
                            "score": round(score, 1) if tied else score})
    if not results:  # pycocotools' loadRes cannot take an empty list
        results.append({"image_id": ids[0], "category_id": classes[0], "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5})
    categories = [{"id": c, "name": f"c{c}"} for c in classes]
    return {"images": images, "annotations": annotations, "categories": categories}, results


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=coco_files(), batch_size=st.integers(1, 4))
def test_random_coco_files_read_and_scored_equal_pycocotools_on_the_files(files, batch_size):
    gt, results = files
    with tempfile.TemporaryDirectory() as folder:
        gt_path, results_path = Path(folder) / "instances.json", Path(folder) / "results.json"
        gt_path.write_text(json.dumps(gt))
        results_path.write_text(json.dumps(results))
        reference = pycocotools_on_files(gt_path, results_path)
        for backend in BACKENDS:
            assert_same_stats(score_files(gt_path, results_path, backend, batch_size), reference)


def test_records_carry_area_crowd_and_the_integer_id(coco_fake100_dir):
    gt = json.loads((coco_fake100_dir / "instances_val2014_100.json").read_text())
    readout = read_coco(coco_fake100_dir / "instances_val2014_100.json")
    records = {record.original_id: record for record in readout.records}
    annotation = next(a for a in gt["annotations"] if a["iscrowd"])
    record = records[annotation["image_id"]]
    assert record.image_id == str(annotation["image_id"]) and isinstance(record.original_id, int)
    x, y, w, h = annotation["bbox"]
    row = int(np.flatnonzero(np.all(record.boxes == [y, x, y + h, x + w], axis=1))[0])
    assert record.area[row] == annotation["area"] != w * h and record.is_crowd[row]
    assert math.isclose(record.coco_areas()[row], annotation["area"])


def test_tied_scores_across_images_follow_numeric_id_order(tmp_path):
    """Image 139 before 1000, as pycocotools sorts integer ids; as strings "1000" would come first
    and the false positive of image 1000 would rank above the hit of image 139."""
    gt = {"images": [{"id": 1000, "file_name": "a.jpg"}, {"id": 139, "file_name": "b.jpg"}],
          "annotations": [{"id": 1, "image_id": image_id, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0} for image_id in (1000, 139)],
          "categories": [{"id": 1, "name": "a"}]}
    results = [{"image_id": 1000, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.5},
               {"image_id": 139, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.5}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "results.json").write_text(json.dumps(results))
    reference = pycocotools_on_files(tmp_path / "gt.json", tmp_path / "results.json")
    assert reference.stats[1] > 0.5  # the hit ranks first: AP50 is 0.5 * 1.0, not 0.5 * 0.5
    for backend in BACKENDS:
        assert_same_stats(score_files(tmp_path / "gt.json", tmp_path / "results.json", backend), reference)
