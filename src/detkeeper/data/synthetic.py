"""The built-in shapes dataset, so that detkeeper trains, evaluates and exports with no data at all.

Circles, squares, triangles and crosses on textured backgrounds, written as a VOC folder. The
classes differ by shape only (every object gets a random colour), and objects never overlap one
another or leave the image, so every box is the exact extent of the pixels drawn for its object:
a model that does badly here points at a bug, not at the labels.

Each image is drawn from its own generator, ``default_rng([seed, split number, image index])``:
the same seed gives byte-identical files, each split has its own stream, and growing one split
leaves the images already in it unchanged. Only PIL and numpy are used (no TensorFlow import).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord
from detkeeper.data.voc import write_voc
from detkeeper.errors import DataError
from detkeeper.files import atomic_write_text

CLASSES = ("circle", "square", "triangle", "cross")
#: Bumped whenever the same parameters would draw different images, so old folders are not reused.
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LABEL_MAP_NAME = "label_map.pbtxt"
_SPLIT_NUMBERS = {"train": 0, "val": 1, "test": 2}
_SIDE_RANGE = (0.08, 0.45)  # object size as a fraction of the image side
_ASPECT_RANGE = (0.7, 1.4)  # width / height, for triangles and crosses
_GAP = 2  # free pixels kept between the boxes of two objects
_PLACEMENT_TRIES = 50
_JPEG_QUALITY = 92
_MIN_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ShapesImage:
    """One image as drawn, before JPEG encoding, with the ground truth it was drawn from."""

    pixels: np.ndarray  # uint8 [size, size, 3]
    instance_map: np.ndarray  # int32 [size, size]: 0 background, k + 1 where object k was drawn
    boxes: np.ndarray  # float32 [N, 4] yxyx pixels, the extent of instance_map == k + 1
    class_ids: np.ndarray  # int64 [N], label-map ids: 1 + position in CLASSES


def generate_shapes_dataset(out_dir: str | os.PathLike, *, num_train: int = 400, num_val: int = 100,
                            num_test: int = 100, image_size: int = 256, max_objects: int = 6,
                            seed: int = 0) -> Path:
    """Write the shapes dataset into `out_dir` (VOC layout plus label_map.pbtxt and manifest.json).

    A folder already holding the same dataset is returned untouched; any other non-empty folder
    is refused, never overwritten. The dataset is built in a temporary sibling folder and renamed
    into place when complete, so an interrupted run never leaves a folder that looks finished.
    """
    out_dir = Path(out_dir)
    parameters = {"num_train": num_train, "num_val": num_val, "num_test": num_test,
                  "image_size": image_size, "max_objects": max_objects, "seed": seed}
    _check_parameters(parameters)
    manifest = {"format_version": FORMAT_VERSION, "generator": "detkeeper shapes dataset",
                "classes": list(CLASSES), "jpeg_quality": _JPEG_QUALITY, "parameters": parameters}
    if _holds_dataset(out_dir, manifest):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_dataset(staging, manifest)
        _move_into_place(staging, out_dir, manifest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def render_shapes_image(rng: np.random.Generator, image_size: int, max_objects: int) -> ShapesImage:
    """Draw one image: a textured background and 1..`max_objects` non-overlapping shapes.

    Each shape is drawn as a binary mask cropped to the pixels it covers, so pasting the mask at
    (x, y) makes ``[y, x, y + h, x + w]`` its exact box. An object that finds no free spot after
    a few tries is left out; the first always fits (shapes are at most about half the side).
    """
    pixels = _background(rng, image_size)
    instance_map = np.zeros((image_size, image_size), dtype=np.int32)
    boxes: list[tuple[int, int, int, int]] = []
    class_ids: list[int] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        class_index = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, CLASSES[class_index], image_size)
        spot = _free_spot(rng, mask.shape, boxes, image_size)
        if spot is None:
            continue
        y, x = spot
        height, width = mask.shape
        region = pixels[y:y + height, x:x + width]
        region[mask] = _contrasting_colour(rng, region[mask].mean(axis=0))
        instance_map[y:y + height, x:x + width][mask] = len(boxes) + 1
        boxes.append((y, x, y + height, x + width))
        class_ids.append(class_index + 1)
    return ShapesImage(pixels=pixels, instance_map=instance_map,
                       boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                       class_ids=np.asarray(class_ids, dtype=np.int64))


# --- the folder ---------------------------------------------------------------------------------
def _check_parameters(parameters: dict[str, int]) -> None:
    for name, value in parameters.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"shapes dataset: {name} must be a whole number >= 0, got {value!r}")
    if parameters["image_size"] < _MIN_IMAGE_SIZE:
        raise DataError(f"shapes dataset: image_size must be at least {_MIN_IMAGE_SIZE}, "
                        f"got {parameters['image_size']}")
    if parameters["max_objects"] < 1:
        raise DataError("shapes dataset: max_objects must be at least 1")


def _holds_dataset(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """True when `out_dir` already holds this dataset; False when it is absent or empty."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a folder; choose another place for the "
                        "shapes dataset")
    manifest_path = out_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        if any(out_dir.iterdir()):
            raise DataError(f"{out_dir}: the folder holds files and no shapes-dataset {MANIFEST_NAME}; "
                            "detkeeper never writes into a folder it did not create. Choose a new "
                            "or empty folder for the shapes dataset.")
        return False
    try:
        found = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{manifest_path}: cannot read the manifest ({error}); the folder is left "
                        "untouched. Choose another folder, or delete this one to regenerate.") from None
    if found == manifest:
        return True
    raise DataError(f"{out_dir}: holds a shapes dataset generated differently "
                    f"({_differences(found, manifest)}); it is left untouched. Choose another "
                    "folder, or delete this one to regenerate.")


def _differences(found: Any, wanted: dict[str, Any]) -> str:
    """``seed: 3 on disk, 0 requested; ...`` over the manifest's top level and its parameters."""
    found = found if isinstance(found, dict) else {}
    found_parameters = found.get("parameters") if isinstance(found.get("parameters"), dict) else {}
    pairs = [(key, found.get(key), value) for key, value in wanted.items() if key != "parameters"]
    pairs += [(key, found_parameters.get(key), value) for key, value in wanted["parameters"].items()]
    return "; ".join(f"{key}: {there!r} on disk, {here!r} requested"
                     for key, there, here in pairs if there != here) or "manifest differs"


def _write_dataset(folder: Path, manifest: dict[str, Any]) -> None:
    parameters = manifest["parameters"]
    label_map = LabelMap.from_names(CLASSES, source="detkeeper shapes dataset")
    for split in _SPLIT_NUMBERS:
        records = [_record(split, index, parameters) for index in range(parameters[f"num_{split}"])]
        write_voc(folder, records, label_map, split=split)
    label_map.write(folder / LABEL_MAP_NAME)
    # Written last: a folder with a manifest is a complete one.
    atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _record(split: str, index: int, parameters: dict[str, int]) -> DetectionRecord:
    rng = np.random.default_rng([parameters["seed"], _SPLIT_NUMBERS[split], index])
    sample = render_shapes_image(rng, parameters["image_size"], parameters["max_objects"])
    encoded = io.BytesIO()
    Image.fromarray(sample.pixels).save(encoded, format="JPEG", quality=_JPEG_QUALITY)
    return DetectionRecord(
        image_id=f"shapes_{split}_{index:05d}",
        boxes=sample.boxes,
        class_ids=sample.class_ids,
        is_crowd=np.zeros(len(sample.boxes), dtype=bool),
        source=f"shapes dataset, {split} image {index}",
        encoded_image=encoded.getvalue(),
        width=parameters["image_size"],
        height=parameters["image_size"],
    )


def _move_into_place(staging: Path, out_dir: Path, manifest: dict[str, Any]) -> None:
    """Rename the finished folder onto `out_dir` (which is absent or empty)."""
    try:
        if out_dir.exists():
            out_dir.rmdir()  # empty (_holds_dataset refused anything else), unless filled meanwhile
        staging.rename(out_dir)
    except OSError:
        # Another process finished the same dataset first: theirs is as good as ours.
        if not _holds_dataset(out_dir, manifest):
            raise


# --- drawing ------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random texture (gradient, stripes, smooth noise or soft blotches) plus grain, uint8."""
    first, second = rng.uniform(0, 255, size=(2, 3))
    kind = int(rng.integers(4))
    if kind in (0, 1):
        angle = rng.uniform(0, np.pi)
        steps = np.arange(size, dtype=np.float32) / size
        t = steps[None, :] * np.float32(np.cos(angle)) + steps[:, None] * np.float32(np.sin(angle))
        if kind == 0:  # linear gradient
            t = (t - t.min()) / (t.max() - t.min())
        else:  # sinusoidal stripes
            t = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * rng.uniform(3, 15)) * t
                                   + np.float32(rng.uniform(0, 2 * np.pi)))
        image = first.astype(np.float32) + t[..., None] * (second - first).astype(np.float32)
    elif kind == 2:  # smooth colour noise: a coarse random grid, upsampled
        cells = int(rng.integers(3, 9))
        coarse = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float32)
    else:  # blurred blotches: soft-edged, so they are never mistaken for a drawn circle
        canvas = Image.new("RGB", (size, size), tuple(int(c) for c in first))
        draw = ImageDraw.Draw(canvas)
        for _ in range(int(rng.integers(4, 12))):
            x0, y0 = rng.uniform(-0.2, 1.0, size=2) * size
            width, height = rng.uniform(0.1, 0.5, size=2) * size
            colour = first + rng.uniform(0, 1) * (second - first)
            draw.ellipse([x0, y0, x0 + width, y0 + height], fill=tuple(int(c) for c in colour))
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=size / 24))
        image = np.asarray(canvas, dtype=np.float32)
    grain = rng.standard_normal(size=(size, size, 3), dtype=np.float32) * np.float32(rng.uniform(2, 12))
    image = image + grain
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, shape: str, image_size: int) -> np.ndarray:
    """A boolean mask of one shape, cropped to the pixels it covers."""
    low, high = _SIDE_RANGE
    side = image_size * np.exp(rng.uniform(np.log(low), np.log(high)))
    aspect = rng.uniform(*_ASPECT_RANGE) if shape in ("triangle", "cross") else 1.0
    width = max(2, int(round(side * np.sqrt(aspect))))
    height = max(2, int(round(side / np.sqrt(aspect))))
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    right, bottom = width - 1, height - 1
    if shape == "circle":
        draw.ellipse([0, 0, right, bottom], fill=1)
    elif shape == "square":
        draw.rectangle([0, 0, right, bottom], fill=1)
    elif shape == "triangle":
        apex = rng.uniform(0.2, 0.8) * right
        draw.polygon([(apex, 0), (0, bottom), (right, bottom)], fill=1)
    else:  # cross: a plus sign with arms of random thickness
        arm_x = max(1, int(round(rng.uniform(0.25, 0.4) * width)))
        arm_y = max(1, int(round(rng.uniform(0.25, 0.4) * height)))
        left, top = (width - arm_x) // 2, (height - arm_y) // 2
        draw.rectangle([left, 0, left + arm_x - 1, bottom], fill=1)
        draw.rectangle([0, top, right, top + arm_y - 1], fill=1)
    mask = np.asarray(canvas, dtype=bool)
    if shape == "triangle" and rng.integers(2):
        mask = mask[::-1]  # apex down
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.ascontiguousarray(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])


def _free_spot(rng: np.random.Generator, shape: tuple[int, int],
               boxes: list[tuple[int, int, int, int]], image_size: int) -> tuple[int, int] | None:
    """A top-left corner where a `shape`-sized box fits inside the image, `_GAP` from all `boxes`."""
    height, width = shape
    for _ in range(_PLACEMENT_TRIES):
        y = int(rng.integers(0, image_size - height + 1))
        x = int(rng.integers(0, image_size - width + 1))
        if all(y >= bottom + _GAP or y + height + _GAP <= top or x >= right + _GAP
               or x + width + _GAP <= left for top, left, bottom, right in boxes):
            return y, x
    return None


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random colour, the one of a few candidates farthest from the mean colour behind it."""
    candidates = rng.integers(0, 256, size=(8, 3))
    return candidates[np.argmax(np.linalg.norm(candidates - behind, axis=1))].astype(np.uint8)
