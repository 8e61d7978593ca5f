"""CocoEvaluator against the official COCO API's numbers, and its refusals of bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest

from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DataError
from detkeeper.evaluation import BACKENDS, STAT_NAMES, CocoEvaluator, EvaluationResult

# pycocotools 2.0.11 on coco-fake100 (bbox, all 100 images), from ../shared/data/README.md.
REFERENCE_STATS = [0.5045806987249628, 0.6969727247299577, 0.5729816669904824, 0.5856257209410443,
                   0.5193996948036719, 0.5013978986347466, 0.38681277964578054, 0.5936795762842003,
                   0.595352982877607, 0.6398109626113442, 0.5664205978994309, 0.5642905982905982]
BATCH_SIZES = (1, 7, 16, 3, 33, 40)  # 100 images in uneven batches
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]


def _yxyx(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [y, x, y + h, x + w]


def _padded(rows: list[list], width: int, fill) -> np.ndarray:
    return np.array([row + [fill] * (width - len(row)) for row in rows], dtype=np.float64)


def coco_batches(gt: dict, results: list[dict], use_counts: bool):
    """The COCO files as the arrays a model and the input pipeline would give, in uneven batches.

    Padding rows hold NaN boxes; with `use_counts` the padding classes are a valid id (1) so only
    ``num_boxes`` / ``num_detections`` mark them, otherwise they are -1.
    """
    anns, dets = defaultdict(list), defaultdict(list)
    for ann in gt["annotations"]:
        anns[ann["image_id"]].append(ann)
    for det in results:
        dets[det["image_id"]].append(det)
    image_ids = [image["id"] for image in gt["images"]]
    start = 0
    for size in BATCH_SIZES:
        ids = image_ids[start:start + size]
        start += size
        m = max(len(anns[i]) for i in ids) + 2
        n = max(len(dets[i]) for i in ids) + 3
        pad_class = 1 if use_counts else -1
        nan_box = [math.nan] * 4
        ground_truth = {
            "image_ids": np.array(ids),
            "boxes": np.array([[_yxyx(a["bbox"]) for a in anns[i]] + [nan_box] * (m - len(anns[i])) for i in ids]),
            "classes": _padded([[a["category_id"] for a in anns[i]] for i in ids], m, pad_class).astype(np.int64),
            "area": _padded([[a["area"] for a in anns[i]] for i in ids], m, 0.0),
            "is_crowd": _padded([[a["iscrowd"] for a in anns[i]] for i in ids], m, 0).astype(bool),
        }
        detections = {
            "boxes": np.array([[_yxyx(d["bbox"]) for d in dets[i]] + [nan_box] * (n - len(dets[i])) for i in ids]),
            "scores": _padded([[d["score"] for d in dets[i]] for i in ids], n, math.nan),
            "classes": _padded([[d["category_id"] for d in dets[i]] for i in ids], n, pad_class),
        }
        if use_counts:
            ground_truth["num_boxes"] = np.array([len(anns[i]) for i in ids])
            detections["num_detections"] = np.array([len(dets[i]) for i in ids])
        yield ground_truth, detections


@pytest.fixture(scope="module")
def coco_fake100(coco_fake100_dir):
    gt = json.loads((coco_fake100_dir / "instances_val2014_100.json").read_text())
    results = json.loads((coco_fake100_dir / "instances_val2014_fakebbox100_results.json").read_text())
    return gt, results


def _evaluate_files(coco_fake100_dir):
    """pycocotools on the JSON files, the way its README runs it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(coco_fake100_dir / "instances_val2014_100.json"))
        coco_dt = coco_gt.loadRes(str(coco_fake100_dir / "instances_val2014_fakebbox100_results.json"))
        evaluation = COCOeval(coco_gt, coco_dt, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


@pytest.mark.parametrize("use_counts", [False, True], ids=["padding-1", "num_boxes"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_coco_fake100_matches_pycocotools(coco_fake100, coco_fake100_dir, backend, use_counts, capsys):
    gt, results = coco_fake100
    evaluator = CocoEvaluator(gt["categories"], backend=backend)
    for ground_truth, detections in coco_batches(gt, results, use_counts):
        evaluator.update(ground_truth, detections)
    result = evaluator.result()

    assert list(result.stats) == list(STAT_NAMES)
    for name, got, want in zip(STAT_NAMES, result.stats.values(), REFERENCE_STATS):
        assert abs(got - want) <= 1e-12, (name, got, want)
    assert (result.num_images, result.num_detections, result.backend) == (100, len(results), backend)
    assert capsys.readouterr().out == ""  # the libraries' prints are swallowed

    reference = _evaluate_files(coco_fake100_dir)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    for k, category_id in enumerate(reference.params.catIds):
        for got, iou_slice in ((result.per_class_ap, slice(None)), (result.per_class_ap50, 0)):
            s = reference.eval["precision"][iou_slice, :, k, 0, 2]
            want = float(np.mean(s[s > -1])) if (s > -1).any() else -1.0
            assert abs(got[names[category_id]] - want) <= 1e-12, (names[category_id], got, want)
        curve = reference.eval["precision"][0, :, k, 0, 2]
        np.testing.assert_allclose(result.precision_recall[names[category_id]], curve, rtol=0, atol=1e-12)
    assert result.per_class_ap["fire hydrant"] == -1.0  # no ground truth in these 100 images
    assert 0 < result.per_class_ap["person"] < result.per_class_ap50["person"] <= 1


def test_string_image_ids_and_tf_tensors_give_the_same_numbers(coco_fake100):
    tf = pytest.importorskip("tensorflow")
    gt, results = coco_fake100
    evaluator = CocoEvaluator(gt["categories"])
    for ground_truth, detections in coco_batches(gt, results, use_counts=True):
        ground_truth = {k: tf.constant(v) for k, v in ground_truth.items()}
        ground_truth["image_ids"] = tf.constant([f"{i:012d}" for i in ground_truth["image_ids"].numpy()])
        evaluator.update(ground_truth, {k: tf.constant(v) for k, v in detections.items()})
    result = evaluator.result()
    assert max(abs(a - b) for a, b in zip(result.stats.values(), REFERENCE_STATS)) <= 1e-12
    assert result.image_ids == tuple(sorted(f"{image['id']:012d}" for image in gt["images"]))


def test_max_detections_caps_per_image_as_coco_does(coco_fake100, coco_fake100_dir):
    gt, results = coco_fake100
    from faster_coco_eval import COCO, COCOeval_faster

    reference = COCOeval_faster(COCO(json.loads(json.dumps(gt))), COCO(json.loads(json.dumps(gt))).loadRes(
        json.loads(json.dumps(results))), "bbox", print_function=lambda *a, **k: None)
    reference.params.maxDets = [1, 10, 12]
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    for backend in BACKENDS:
        evaluator = CocoEvaluator(gt["categories"], backend=backend, max_detections=12)
        for ground_truth, detections in coco_batches(gt, results, use_counts=False):
            evaluator.update(ground_truth, detections)
        stats = list(evaluator.result().stats.values())
        assert max(abs(a - b) for a, b in zip(stats, reference.stats[:12])) <= 1e-12, backend
        assert stats[0] < REFERENCE_STATS[0]  # 12 per image drops detections that count at 100


def _one_image(image_id=5, gt_boxes=((10, 10, 50, 60),), gt_classes=(1,), det_boxes=((12, 10, 50, 58),),
               scores=(0.9,), det_classes=(1,)):
    return ({"image_ids": [image_id], "boxes": [list(gt_boxes)], "classes": [list(gt_classes)]},
            {"boxes": [list(det_boxes)], "scores": [list(scores)], "classes": [list(det_classes)]})


@pytest.mark.parametrize("batch, match", [
    (_one_image(gt_classes=(2,)), r"ground_truth\['classes'\]: class id 2 \(image 5\) is not a category id"),
    (_one_image(det_classes=(0,)), r"detections\['classes'\]: class id 0 \(image 5\).*model indices"),
    (_one_image(gt_boxes=((10, math.nan, 50, 60),)), r"ground_truth\['boxes'\]: boxes must be finite.*image 5"),
    (_one_image(det_boxes=((10, 10, math.inf, 60),)), r"detections\['boxes'\]: boxes must be finite"),
    (_one_image(scores=(math.nan,)), r"detections\['scores'\]: scores must be finite.*image 5"),
    (_one_image(gt_boxes=((50, 10, 10, 60),)), r"ground_truth\['boxes'\]: negative size.*image 5"),
    (_one_image(det_boxes=((10, 60, 50, 10),)), r"detections\['boxes'\]: negative size"),
    (_one_image(gt_classes=(1, 3)),
     r"ground_truth\['classes'\] has shape \(1, 2\) but ground_truth\['boxes'\] has shape \(1, 1, 4\)"),
    (_one_image(scores=(0.9, 0.8)),
     r"detections\['scores'\] has shape \(1, 2\) but detections\['boxes'\] has shape \(1, 1, 4\)"),
    (({"image_ids": [1, 2], "boxes": [[[0, 0, 1, 1]]] * 2, "classes": [[1]] * 2},
      {"boxes": [[[0, 0, 1, 1]]], "scores": [[0.5]], "classes": [[1]]}),
     r"batch sizes disagree: ground_truth\['image_ids'\] has 2 images but detections\['boxes'\] has 1"),
    (({"image_ids": [7, 7], "boxes": np.zeros((2, 0, 4)), "classes": np.zeros((2, 0))},
      {"boxes": np.zeros((2, 0, 4)), "scores": np.zeros((2, 0)), "classes": np.zeros((2, 0))}),
     r"image id 7 was already seen"),
    (({"boxes": [[[0, 0, 1, 1]]], "classes": [[1]]}, _one_image()[1]), r"ground_truth\['image_ids'\] is missing"),
    ((_one_image()[0], {"boxes": [[[0, 0, 1, 1]]], "classes": [[1]]}), r"detections\['scores'\] is missing"),
    (({**_one_image()[0], "area": [[-1.0]]}, _one_image()[1]), r"ground_truth\['area'\]: area must be finite"),
    ((_one_image()[0], {**_one_image()[1], "classes": [[1.5]]}),
     r"detections\['classes'\]: expected whole numbers, got 1.5"),
    ((_one_image()[0], {**_one_image()[1], "num_detections": [2]}), r"num_detections'\]: counts must lie in 0..1"),
])
def test_bad_input_is_refused_with_a_message_naming_it(batch, match):
    evaluator = CocoEvaluator(CATEGORIES)
    with pytest.raises(DataError, match=match):
        evaluator.update(*batch)
    assert evaluator.num_images == 0  # a refused batch leaves nothing behind


def test_image_id_seen_in_an_earlier_batch_is_refused():
    evaluator = CocoEvaluator(CATEGORIES)
    evaluator.update(*_one_image(image_id="a.jpg"))
    with pytest.raises(DataError, match=r"image id 'a.jpg' was already seen"):
        evaluator.update(*_one_image(image_id="a.jpg"))
    evaluator.update(*_one_image(image_id=3))  # ints and strings may mix: COCO's order then compares strings
    with pytest.raises(DataError, match=r"image id '3' was already seen"):  # 3 and "3" are one image then
        evaluator.update(*_one_image(image_id="3"))
    assert evaluator.num_images == 2


def test_reset_forgets_everything_and_no_images_is_an_error():
    evaluator = CocoEvaluator(LabelMap.from_names(["cat", "bird", "dog"]))
    with pytest.raises(DataError, match="no images to evaluate"):
        evaluator.result()
    evaluator.update(*_one_image())
    assert evaluator.result().stats["mAP50"] == pytest.approx(1.0)
    evaluator.reset()
    assert evaluator.num_images == 0
    with pytest.raises(DataError, match="no images to evaluate"):
        evaluator.result()
    evaluator.update(*_one_image(det_boxes=((100, 100, 120, 120),)))  # same image id again, now a miss
    assert evaluator.num_images == 1 and evaluator.result().stats["mAP50"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_images_without_boxes_count_as_coco_counts_them(backend):
    evaluator = CocoEvaluator(CATEGORIES, backend=backend)
    empty = ({"image_ids": [1, 2], "boxes": np.zeros((2, 0, 4)), "classes": np.zeros((2, 0), int)},
             {"boxes": np.zeros((2, 0, 4)), "scores": np.zeros((2, 0)), "classes": np.zeros((2, 0), int)})
    evaluator.update(*empty)
    assert set(evaluator.result().stats.values()) == {-1.0}  # nothing to average: COCO's -1
    evaluator.update(*_one_image(image_id=3))  # a hit on a 40x50 px cat (medium)
    result = evaluator.result()
    assert result.num_images == 3 and result.num_detections == 1
    assert result.stats["mAP50"] == pytest.approx(1.0) and result.stats["mAP_small"] == -1.0
    assert result.per_class_ap["dog"] == -1.0
    # a false positive on an image without ground truth, ranked above the hit: precision 1/2 at recall 1
    evaluator.update(*_one_image(image_id=4, gt_classes=(-1,), scores=(0.95,)))
    assert evaluator.result().per_class_ap50["cat"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_boxes_keep_float64_precision_at_an_iou_threshold(backend):
    """IoU 0.49999999 must stay a miss at 0.5; float32 would round the box to IoU 0.5, a hit."""
    for xmax, expected in ((5.0, 1.0), (4.99999999, 0.0)):
        evaluator = CocoEvaluator(CATEGORIES, backend=backend)
        evaluator.update(*_one_image(gt_boxes=((0, 0, 10, 10),), det_boxes=((0, 0, 10, xmax),)))
        assert evaluator.result().stats["mAP50"] == pytest.approx(expected), xmax


def test_result_views(coco_fake100):
    gt, results = coco_fake100
    evaluator = CocoEvaluator(gt["categories"])
    for ground_truth, detections in coco_batches(gt, results, use_counts=True):
        evaluator.update(ground_truth, detections)
    result = evaluator.result()
    assert isinstance(result, EvaluationResult)
    assert result.as_logs() == {f"val_{name}": value for name, value in result.stats.items()}
    assert list(result.as_logs("test_"))[:2] == ["test_mAP", "test_mAP50"]
    tf_names = result.tf_od_api_metrics()
    assert tf_names["DetectionBoxes_Precision/mAP"] == result.stats["mAP"]
    assert tf_names["DetectionBoxes_Precision/mAP@.50IOU"] == result.stats["mAP50"]
    assert tf_names["DetectionBoxes_Precision/mAP (small)"] == result.stats["mAP_small"]
    assert tf_names["DetectionBoxes_Recall/AR@100 (large)"] == result.stats["AR_large"]
    assert len(tf_names) == 12
    per_class = result.tf_od_api_metrics(include_per_class=True)
    assert per_class["DetectionBoxes_PerformanceByCategory/mAP/person"] == result.per_class_ap["person"]
    assert len(per_class) == 12 + len(gt["categories"])

    encoded = json.loads(json.dumps(result.to_json_dict(), allow_nan=False))
    assert encoded["stats"] == result.stats and encoded["num_images"] == 100
    assert len(encoded["precision_recall"]["person"]) == len(encoded["recall_thresholds"]) == 101

    table = result.format_table().splitlines()
    assert table[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.505"
    assert table[11] == " Average Recall     (AR) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = 0.564"
    assert any(line.split()[:1] == ["fire"] and line.split()[2:] == ["-", "-"] for line in table)


def test_categories_are_checked_and_arguments_too():
    with pytest.raises(DataError, match="id 1 is used by two classes"):
        CocoEvaluator([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}])
    with pytest.raises(ValueError, match="backend must be one of"):
        CocoEvaluator(CATEGORIES, backend="torchmetrics")
    for bad in (0, -3, 2.5, True, None, "10"):
        with pytest.raises(ValueError, match="max_detections must be a whole number >= 1"):
            CocoEvaluator(CATEGORIES, max_detections=bad)


def test_importing_the_evaluator_does_not_import_tensorflow_or_matplotlib():
    code = ("import sys, detkeeper.evaluation; "
            "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
