"""COCO ``instances_*.json`` annotations: reading into records and writing them back.

Reading keeps every entry of ``images`` (images without annotations included, in file order) and
goes through the dataset index (:mod:`detkeeper.data.index`): the file is one entry, so a later
start with the file unchanged does not parse the JSON (0.8 s at 5,000 images, ~20 s for COCO
train), and opens again only the images whose files changed.
What cannot be used becomes a :class:`Problem` and is left out (see :class:`Readout`): an image
with a malformed annotation gives no record; a box whose class is not in the label map is left
out of its record, and its problem's ``box_index`` is the annotation's position among that
image's annotations in the file. Box geometry is not checked here (:mod:`detkeeper.data.check`
does that against the real images).

What COCO's evaluation reads is kept, so scoring the records equals pycocotools on the file: each
annotation's ``area`` (its segmentation's area, which decides small/medium/large; the box's area
when absent), ``iscrowd``, and the image ``id`` in the file's own type as the record's
``original_id`` (integers sort numerically; ``image_id`` is its string form).

Writing gives COCO tools the integer image ids they expect. When every record's original id is an
integer (as in COCO itself) it is written as it is; otherwise images are numbered 1..N in the
order COCO evaluates the original ids (:func:`coco_order`, so pycocotools on the file breaks ties
as detkeeper does on the records) and the original id is kept in ``detkeeper_image_id``, which
:func:`read_coco` prefers, so ``read_coco(write_coco(records))`` gives back the same ids.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, UnidentifiedImageError

from detkeeper.data.columns import RecordColumns
from detkeeper.data.index import FilePart, indexed_parts
from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.data.problems import Problem
from detkeeper.data.readout import Readout
from detkeeper.data.record import DetectionRecord, coco_order, xywh_to_yxyx, yxyx_to_xywh
from detkeeper.errors import DataError
from detkeeper.files import atomic_write_bytes, atomic_write_text, read_user_text, resolve_inside

#: Image-entry key that keeps a non-integer detkeeper image id through a COCO file.
ORIGINAL_ID_KEY = "detkeeper_image_id"

_REQUIRED_KEYS = ("images", "annotations", "categories")


def read_coco(annotations_path: str | os.PathLike, images_dir: str | os.PathLike | None = None,
              label_map: LabelMap | None = None, *, check_images: bool = False,
              progress: Callable[[int], None] | None = None) -> Readout:
    """Records of a COCO instances file as :class:`RecordColumns`; `images_dir` defaults to the JSON's folder.

    Without `label_map` the file's categories are the label map (their ids as in the file); with
    one, categories are matched to it by name, since ids of different label maps disagree. The file
    is read through the dataset index; with `check_images` every image is opened in the same pass
    (the readout's ``checked`` says what was found), and `progress` counts the records done.
    """
    path = Path(annotations_path)
    root = Path(images_dir) if images_dir is not None else path.parent
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    # Sources name the file as the caller spells it, so the spelling keys the entry too.
    variant = json.dumps(["coco", str(path), str(root.resolve())])
    (part,) = indexed_parts([path.resolve()], lambda _: _read_file(path, root, label_map), label_map,
                            check_images=check_images, progress=progress, variant=variant)
    return Readout(part.records, part.label_map, part.problems, part.checked)


def _read_file(path: Path, root: Path, label_map: LabelMap | None) -> FilePart:
    """The records of the file (as columns: each image a file, named ``path#images[position]``)."""
    data = _load_json(path)
    file_label_map = _categories_label_map(data["categories"], path)
    class_of_category = {item.id: item.id if label_map is None else label_map.id_of_name(item.name)
                         for item in file_label_map.items}

    problems: list[Problem] = []
    images: list[tuple[int, str, int | str, dict[str, Any]]] = []  # (position, source, original id, entry)
    unusable: set[str] = set()  # raw ids of image entries already reported
    for position, entry in enumerate(data["images"]):
        source = f"{path}#images[{position}]"
        original_id = _original_id(entry)
        if original_id is None or not isinstance(entry.get("file_name"), str):
            problems.append(Problem("malformed_annotation", source, "image entry needs an 'id' and a string "
                                    "'file_name'", None if original_id is None else str(original_id)))
            if isinstance(entry, dict) and "id" in entry:
                unusable.add(str(entry["id"]))
        else:
            images.append((position, source, original_id, entry))
    id_of_raw = {str(entry["id"]): str(original_id) for _, _, original_id, entry in images}
    known_ids = set(id_of_raw.values())

    objects: dict[str, list[tuple[int, list[float], int, bool, float]]] = defaultdict(list)
    dropped: set[str] = set()  # image ids with a malformed annotation
    for position, annotation in enumerate(data["annotations"]):
        source = f"{path}#annotations[{position}]"
        if isinstance(annotation, dict) and str(annotation.get("image_id")) in unusable:
            continue  # its image entry is already reported
        try:
            image_id, bbox, category_id, crowd, area = _parse_annotation(annotation, id_of_raw)
        except _Malformed as error:
            known = error.image_id in known_ids
            detail = f"{error}; image {error.image_id!r} left out" if known else str(error)
            problems.append(Problem("malformed_annotation", source, detail, error.image_id))
            if known:
                dropped.add(error.image_id)
            continue
        objects[image_id].append((position, bbox, category_id, crowd, area))

    records: list[DetectionRecord] = []
    numbers: list[int] = []
    for number, source, original_id, entry in images:
        image_id = str(original_id)
        if image_id in dropped:
            continue
        try:
            image_path = resolve_inside(root, entry["file_name"], what="file_name", source=source)
            width, height = _declared_size(entry)
        except (DataError, ValueError) as error:
            detail = str(error).removeprefix(f"{source}: ")
            problems.append(Problem("malformed_annotation", source, detail, image_id))
            continue
        boxes, class_ids, crowd, areas = [], [], [], []
        for box_index, (position, bbox, category_id, is_crowd, area) in enumerate(objects.get(image_id, [])):
            class_id = class_of_category.get(category_id)
            if class_id is None:
                problems.append(Problem(
                    "unknown_class", f"{path}#annotations[{position}]",
                    f"category_id {category_id} ({_category_name(file_label_map, category_id)}) "
                    "is not in the label map; box left out", image_id, len(records), box_index))
                continue
            boxes.append(bbox)
            class_ids.append(class_id)
            crowd.append(is_crowd)
            areas.append(area)
        records.append(DetectionRecord(
            image_id=image_id, boxes=xywh_to_yxyx(boxes), class_ids=class_ids, is_crowd=crowd,
            source=source, image_path=image_path, width=width, height=height, area=areas,
            original_id=original_id))
        numbers.append(number)
    pattern = str(path).replace("{", "{{").replace("}", "}}") + "#images[{number}]"
    return FilePart(RecordColumns.of_image_files(records, numbers, pattern), problems, {},
                    label_map=label_map or file_label_map)


def write_coco(records: Sequence[DetectionRecord], label_map: LabelMap,
               annotations_path: str | os.PathLike,
               images_dir: str | os.PathLike | None = None) -> Path:
    """Write `records` as a COCO instances file; returns its path.

    ``file_name`` is relative to `images_dir` (default: the JSON's folder), so every image file
    must lie inside it; images carried as bytes (from TFRecords) are written into it. A record
    that declares no size gets it from its image header: COCO tools expect width and height.
    An object's ``area`` is its declared one, else its box's.
    """
    path = Path(annotations_path)
    root = Path(images_dir) if images_dir is not None else path.parent
    keep_ids = all(isinstance(r.original_id, int) for r in records) and (
        len({r.original_id for r in records}) == len(records))
    numbers = [0] * len(records)
    for rank, position in enumerate(coco_order([r.original_id for r in records]), start=1):
        numbers[position] = rank
    used_names: set[str] = set()
    images, annotations = [], []
    for number, record in zip(numbers, records):
        unknown = [int(c) for c in record.class_ids if not label_map.has_id(c)]
        if unknown:
            raise DataError(f"{record.source}: class id {unknown[0]} is not in the label map "
                            f"(ids: {label_map.ids})")
        image: dict[str, Any] = {"id": record.original_id if keep_ids else number}
        if not keep_ids:
            image[ORIGINAL_ID_KEY] = record.image_id
        image["file_name"] = _file_name(record, root, used_names)
        if record.width and record.height:
            image["width"], image["height"] = record.width, record.height
        else:
            image["width"], image["height"] = _probe(record.read_encoded(), record)[1]
        images.append(image)
        for xywh, class_id, crowd, area in zip(yxyx_to_xywh(record.boxes).tolist(), record.class_ids.tolist(),
                                               record.is_crowd.tolist(), record.area.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"], "category_id": class_id,
                "bbox": xywh, "area": xywh[2] * xywh[3] if math.isnan(area) else area, "iscrowd": int(crowd),
            })
    categories = [{"id": item.id, "name": item.name, "supercategory": "none"} for item in label_map.items]
    document = {"images": images, "annotations": annotations, "categories": categories}
    return atomic_write_text(path, json.dumps(document))


class _Malformed(Exception):
    """An annotation that cannot be parsed; `image_id` is what it names (None if nothing)."""

    def __init__(self, detail: str, image_id: str | None) -> None:
        super().__init__(detail)
        self.image_id = image_id


def _load_json(path: Path) -> dict[str, Any]:
    text = read_user_text(path, "COCO annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: "
                        f"{error.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO instances file is a JSON object, found {type(data).__name__}")
    for key in _REQUIRED_KEYS:
        if key not in data:
            raise DataError(f"{path}: top-level key {key!r} is missing; a COCO instances file "
                            f"has {', '.join(repr(k) for k in _REQUIRED_KEYS)}")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: {key!r} must be a list, found {type(data[key]).__name__}")
    return data


def _categories_label_map(categories: list[Any], path: Path) -> LabelMap:
    """The file's categories as a label map (ids kept); a broken category breaks the whole file."""
    items = []
    for position, category in enumerate(categories):
        if not (isinstance(category, dict) and _is_int(category.get("id"))
                and isinstance(category.get("name"), str)):
            raise DataError(f"{path}: categories[{position}] needs an integer 'id' and a string "
                            f"'name', found {category!r}")
        items.append(LabelMapItem(category["id"], category["name"], category["name"]))
    return LabelMap(items, source=f"{path} categories")


def _original_id(entry: Any) -> int | str | None:
    """The original id of an image entry: the one detkeeper kept when it numbered the file, else
    ``id`` in its JSON type (COCO's are integers); None when there is none."""
    if not isinstance(entry, dict):
        return None
    original = entry.get(ORIGINAL_ID_KEY)
    if isinstance(original, str) and original:
        return original
    raw = entry.get("id")
    return raw if _is_int(raw) or (isinstance(raw, str) and raw) else None


def _parse_annotation(annotation: Any, id_of_raw: dict[str, str]) -> tuple[str, list[float], int, bool, float]:
    """(image id, xywh, category id, crowd, area: NaN when absent); raises _Malformed saying why not."""
    if not isinstance(annotation, dict):
        raise _Malformed(f"annotation is not an object: {annotation!r}", None)
    name = f"annotation id {annotation.get('id', '(none)')}"
    raw_image_id = annotation.get("image_id")
    image_id = id_of_raw.get(str(raw_image_id))
    if raw_image_id is None or image_id is None:
        raise _Malformed(f"{name} refers to image_id {raw_image_id!r}, which is not in 'images'",
                         None if raw_image_id is None else str(raw_image_id))
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        raise _Malformed(f"{name}: bbox must be 4 numbers [x, y, width, height], found {bbox!r}",
                         image_id)
    category_id = annotation.get("category_id")
    if not _is_int(category_id):
        raise _Malformed(f"{name}: category_id must be an integer, found {category_id!r}", image_id)
    area = annotation.get("area")
    if area is not None and not (_is_number(area) and math.isfinite(area) and area >= 0):
        raise _Malformed(f"{name}: area must be a finite number >= 0 (the object's area in pixels), "
                         f"found {area!r}", image_id)
    return (image_id, [float(v) for v in bbox], category_id, bool(annotation.get("iscrowd", 0)),
            math.nan if area is None else float(area))


def _declared_size(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """(width, height) as declared: absent is None, anything but a positive integer an error."""
    size = []
    for key in ("width", "height"):
        value = entry.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            raise ValueError(f"image {key} must be a positive integer, found {value!r}")
        size.append(value)
    return size[0], size[1]


def _category_name(label_map: LabelMap, category_id: int) -> str:
    if label_map.has_id(category_id):
        return repr(label_map.item_of_id(category_id).name)
    return "not in the file's categories"


def _file_name(record: DetectionRecord, root: Path, used_names: set[str]) -> str:
    """The record's ``file_name`` relative to `root`; image bytes are first written there, under
    a name no other image uses (an identical file left by an earlier run is overwritten)."""
    if record.image_path is not None:
        try:
            name = Path(record.image_path).resolve().relative_to(root.resolve()).as_posix()
            used_names.add(name)
            return name
        except ValueError:
            raise DataError(
                f"{record.source}: image {record.image_path} is not inside {root.resolve()}; COCO "
                "file names are relative to the images folder: pass images_dir= a folder that "
                "contains every image") from None
    encoded = record.read_encoded()
    image_format = _probe(encoded, record)[0]
    extension = ".jpg" if image_format in ("JPEG", "MPO") else f".{image_format.lower()}"  # MPO: multi-picture JPEG
    name = re.sub(r"[^A-Za-z0-9._-]", "_", record.image_id)  # ids from TFRecords can hold anything
    if Path(name).suffix.lower() not in {extension, ".jpeg" if extension == ".jpg" else extension}:
        name += extension
    stem, suffix, copy = Path(name).stem, Path(name).suffix, 1
    while name in used_names or ((root / name).exists() and (root / name).read_bytes() != encoded):
        copy += 1
        name = f"{stem}_{copy}{suffix}"
    used_names.add(name)
    atomic_write_bytes(root / name, encoded)
    return name


def _probe(encoded: bytes, record: DetectionRecord) -> tuple[str, tuple[int, int]]:
    """(PIL format name, (width, height)) from the image header."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            return str(image.format), image.size
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{record.source}: cannot read the record's image ({error})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
