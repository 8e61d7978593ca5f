"""Writing predictions down: COCO-format JSON and images with labelled boxes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.data.record import yxyx_to_xywh
from detkeeper.files import atomic_path, atomic_write_text
from detkeeper.visualize import draw_boxes

PREDICTIONS_FILE = "predictions.json"


def write_predictions(found: Sequence, predictor, out: Path, *, min_score: float = 0.0,
                      draw: bool = True) -> Path:
    """`found` (:class:`ImageDetections` per image) as ``OUT/predictions.json`` in COCO format (images
    with file names and sizes, categories from the label map, annotations with scores) and, when
    `draw`, ``OUT/images/<name>`` with boxes scoring at least `min_score` drawn and labelled."""
    label_map = predictor.label_map or _label_map_of(found)
    images, annotations, names = [], [], _unique_names(found)
    for image_id, (item, name) in enumerate(zip(found, names), start=1):
        images.append({"id": image_id, "file_name": item.image, "height": item.height, "width": item.width})
        keep = item.scores >= min_score
        for box, score, class_id in zip(yxyx_to_xywh(item.boxes[keep]).tolist(), item.scores[keep].tolist(),
                                        item.class_ids[keep].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(class_id),
                                "bbox": [round(value, 2) for value in box], "area": round(box[2] * box[3], 2),
                                "score": round(float(score), 5), "iscrowd": 0})
        if draw:
            _draw(item, keep, label_map, out / "images" / name)
    document = {"info": {"description": f"detections of {predictor.source}", "min_score": min_score,
                         "bbox": "[x, y, width, height] in image pixels"},
                "images": images,
                "categories": [{"id": entry.id, "name": entry.name} for entry in label_map.items],
                "annotations": annotations}
    return atomic_write_text(out / PREDICTIONS_FILE, json.dumps(document, indent=1) + "\n")


def _draw(item, keep: np.ndarray, label_map: LabelMap, path: Path) -> None:
    with Image.open(item.image) as image:
        drawn = draw_boxes(image.convert("RGB"), item.boxes[keep], item.class_ids[keep].tolist(), label_map,
                           item.scores[keep].tolist())
    with atomic_path(path, suffix=".tmp" + path.suffix) as tmp:
        drawn.save(tmp, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=92)


def _unique_names(found: Sequence) -> list[str]:
    """Output file names: the image's own name, numbered when two inputs share one."""
    names: list[str] = []
    for item in found:
        stem, suffix = Path(item.image).stem, Path(item.image).suffix.lower()
        suffix = suffix if suffix in (".png", ".jpg", ".jpeg") else ".png"
        name, count = stem + suffix, 0
        while name in names:
            count += 1
            name = f"{stem}-{count}{suffix}"
        names.append(name)
    return names


def _label_map_of(found: Sequence) -> LabelMap:
    """A TF OD API export carries no label map: name each id seen as "class N"."""
    ids = sorted({int(class_id) for item in found for class_id in item.class_ids} or {1})
    return LabelMap([LabelMapItem(class_id, f"class {class_id}", f"class {class_id}") for class_id in ids],
                    "ids seen in the detections")
