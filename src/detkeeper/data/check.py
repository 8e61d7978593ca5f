"""Validate records against their images, and apply the bad-record policy.

Readers keep what the annotation says; this module compares it with the image files: it opens
every image (in threads: Pillow reads headers and TensorFlow decodes without holding the GIL),
checks format, colour mode and size, checks every box against the real image size, and finds
duplicate ids. Its problems index into the record list it was given, so :func:`drop_bad` can remove
exactly what they name.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import itertools
import os
import warnings
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from detkeeper.data.columns import RecordColumns, box_counts, image_ids
from detkeeper.data.image_format import decoded_size, sniff_format
from detkeeper.data.problems import Problem
from detkeeper.data.record import DetectionRecord
from detkeeper.errors import DataError

#: Formats `tf.io.decode_image` decodes.
DECODABLE_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}

_MODE_WARNINGS = {
    "L": "grayscale_image", "1": "grayscale_image", "I": "grayscale_image", "I;16": "grayscale_image",
    "F": "grayscale_image", "LA": "rgba_image", "RGBA": "rgba_image", "PA": "rgba_image",
    "CMYK": "cmyk_image",
}


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """What opening one image revealed: its size (None if unreadable) and problems."""

    size: tuple[int, int] | None  # (height, width)
    problems: tuple[Problem, ...]


def inspect_image(record: DetectionRecord, record_index: int | None = None) -> ImageFacts:
    """Open and fully decode one record's image; report why it cannot be used, if it cannot.

    Pillow reads the header (format, colour mode; a decompression bomb is refused before any pixel
    is decoded); the pixels are decoded once, by the decoder training and exports use
    (:func:`decoded_size`), so an image that passes here decodes in the input pipeline: Pillow
    decodes some that TensorFlow refuses (a PNG without its last chunk, a 1-bit BMP)."""

    def problem(kind: str, detail: str) -> ImageFacts:
        return ImageFacts(None, (Problem(kind, record.source, detail, record.image_id, record_index),))

    try:
        data = record.read_encoded()
    except FileNotFoundError:
        return problem("missing_image", f"image file {record.image_path} does not exist")
    except OSError as error:
        return problem("missing_image", f"cannot read {record.image_path}: {error.strerror or error}")
    if not data:
        return problem("corrupt_image", f"image {_image_name(record)} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format, mode = image.format, image.mode
        if image_format not in DECODABLE_FORMATS:
            return problem("not_an_image", f"{_image_name(record)} is {image_format}; "
                           f"detkeeper reads {', '.join(sorted(DECODABLE_FORMATS))}")
        height, width = decoded_size(data)
    except DataError as error:  # the pipeline's decoder refuses it
        return problem("corrupt_image", f"{_image_name(record)} cannot be decoded: {error}")
    except UnidentifiedImageError:
        if sniff_format(data) is not None:  # looks like an image, yet will not open
            return problem("corrupt_image", f"{_image_name(record)} starts like an image but cannot be decoded")
        return problem("not_an_image", f"{_image_name(record)} is not an image file")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return problem("huge_image", f"{_image_name(record)}: {error}")
    except (OSError, SyntaxError, ValueError) as error:
        return problem("corrupt_image", f"{_image_name(record)} cannot be decoded: {error}")

    found: list[Problem] = []
    mode_kind = _MODE_WARNINGS.get(mode, None if mode == "RGB" else "other_mode_image")
    if mode_kind:
        found.append(Problem(mode_kind, record.source, f"{_image_name(record)} has mode {mode}",
                             record.image_id, record_index))
    declared = (record.height, record.width)
    if record.height and record.width and declared != (height, width):
        found.append(Problem(
            "size_mismatch", record.source,
            f"annotation says {record.width}x{record.height} (WxH), image is {width}x{height}",
            record.image_id, record_index))
    return ImageFacts((height, width), tuple(found))


def check_boxes(record: DetectionRecord, image_size: tuple[int, int] | None,
                record_index: int | None = None) -> list[Problem]:
    """Geometry of every box against the image size (the declared size when the image is unreadable)."""
    height, width = image_size or (record.height, record.width)
    boxes = record.boxes
    ymin, xmin, ymax, xmax = boxes.T
    # One pass in NumPy finds the boxes that may have a problem; only those are looked at one by one.
    with np.errstate(invalid="ignore"):
        suspect = ~np.isfinite(boxes).all(axis=1) | (ymin >= ymax) | (xmin >= xmax)
        if height and width:
            suspect |= (ymin < 0) | (xmin < 0) | (ymax > height) | (xmax > width)
    found = []
    for box_index in np.flatnonzero(suspect).tolist():
        ymin, xmin, ymax, xmax = boxes[box_index].tolist()

        def add(kind: str, detail: str) -> None:
            found.append(Problem(kind, record.source, detail, record.image_id, record_index, box_index))

        coords = f"(ymin, xmin, ymax, xmax) = ({ymin:g}, {xmin:g}, {ymax:g}, {xmax:g})"
        if not np.all(np.isfinite([ymin, xmin, ymax, xmax])):
            add("non_finite_box", f"box {coords} has a non-finite coordinate")
        elif ymin > ymax or xmin > xmax:
            add("inverted_box", f"box {coords} has min > max")
        elif ymin == ymax or xmin == xmax:
            add("zero_area_box", f"box {coords} has zero {'height' if ymin == ymax else 'width'}")
        elif height and width:
            if ymax <= 0 or xmax <= 0 or ymin >= height or xmin >= width:
                add("box_outside_image", f"box {coords} is outside the {width}x{height} image")
            elif ymin < 0 or xmin < 0 or ymax > height or xmax > width:
                add("box_clipped", f"box {coords} crosses the border of the {width}x{height} image")
    return found


def record_problems(record: DetectionRecord, facts: ImageFacts | None,
                    record_index: int | None = None) -> list[Problem]:
    """What checking `record` alone finds: its image's problems (`facts`; None: the image is not
    opened) and its boxes against the image's size. It depends on nothing else, so the dataset
    index keeps it and later starts do not check again."""
    if facts is None:
        return check_boxes(record, None, record_index)
    found = [dataclasses.replace(problem, record_index=record_index) for problem in facts.problems]
    if facts.size is not None or not any(problem.scope == "record" for problem in facts.problems):
        found.extend(check_boxes(record, facts.size, record_index))
    return found


def find_duplicates(records: Sequence[DetectionRecord]) -> list[Problem]:
    """Every record whose image id an earlier record already used."""
    ids = image_ids(records)
    if len(set(ids)) == len(ids):  # the usual case, without a loop in Python
        return []
    first_seen: dict[str, int] = {}
    found = []
    for index, image_id in enumerate(ids):
        if image_id in first_seen:
            found.append(Problem("duplicate_image_id", records[index].source,
                                 f"image id {image_id!r} already used by {records[first_seen[image_id]].source}",
                                 image_id, index))
        else:
            first_seen[image_id] = index
    return found


def find_crowded(records: Sequence[DetectionRecord], max_boxes: int) -> list[Problem]:
    """Records with more boxes than the pipeline pads to (the extra boxes are not trained on)."""
    counts = box_counts(records)
    return [Problem("too_many_boxes", records[index].source,
                    f"{counts[index]} boxes, data.max_boxes is {max_boxes}", records[index].image_id, index)
            for index in np.flatnonzero(counts > max_boxes).tolist()]


def check_records(records: Sequence[DetectionRecord], *, max_boxes: int | None = None,
                  check_images: bool = True, workers: int | None = None,
                  progress: Callable[[int], None] | None = None,
                  checked: Sequence[Problem] | None = None) -> list[Problem]:
    """All problems of `records`; their `record_index`/`box_index` point into `records`.

    With ``check_images=False`` only the annotations are checked (boxes against the declared
    size): fast, but a corrupt image is then only found when training decodes it. `checked` is
    what :func:`record_problems` found for every record already, in the same mode and record order
    (the dataset index keeps it): then only what depends on the whole list (duplicates, crowding)
    is checked here. `progress` is called with the number of records finished since the last call.
    """
    found = find_duplicates(records)
    if max_boxes is not None:
        found.extend(find_crowded(records, max_boxes))
    if checked is not None:
        found.extend(checked)
        if progress:
            progress(len(records))
        return found
    pool = None
    if not check_images:
        opened: Iterable[ImageFacts | None] = itertools.repeat(None, len(records))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2))
        opened = pool.map(inspect_image, records)
    try:
        for index, facts in enumerate(opened):
            found.extend(record_problems(records[index], facts, index))
            if progress:
                progress(1)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return found


def drop_bad(records: Sequence[DetectionRecord], problems: Sequence[Problem]) -> Sequence[DetectionRecord]:
    """Apply the `skip` policy: drop named records and boxes, clip boxes that cross the border.

    Only problems produced by :func:`check_records` on this same list are applied (their indices
    refer to it); reader problems were already applied by the reader, which never produced the
    record or box they name. :class:`RecordColumns` stay columns (only the named records are built).
    """
    dropped_records = {p.record_index for p in problems if p.scope == "record" and p.record_index is not None}
    dropped_boxes: dict[int, set[int]] = {}
    clipped: dict[int, set[int]] = {}
    for p in problems:
        if p.record_index is None or p.box_index is None:
            continue
        if p.scope == "box":
            dropped_boxes.setdefault(p.record_index, set()).add(p.box_index)
        elif p.kind == "box_clipped":
            clipped.setdefault(p.record_index, set()).add(p.box_index)
    edited = (dropped_boxes.keys() | clipped.keys()) - dropped_records
    if isinstance(records, RecordColumns):
        if not dropped_records and not edited:  # the usual case: the same columns, not a copy
            return records
        keep_records = np.ones(len(records), bool)
        keep_records[list(dropped_records)] = False
        keep_boxes, boxes = np.ones(len(records.boxes), bool), records.boxes.copy()
        for index in edited:
            rows = slice(records.row_splits[index], records.row_splits[index + 1])
            keep_boxes[rows], boxes[rows] = _edited(records[index], dropped_boxes.get(index, ()),
                                                    clipped.get(index, ()))
        return records.edited(keep_records, keep_boxes, boxes)
    kept = []
    for index, record in enumerate(records):
        if index in dropped_records:
            continue
        if index in edited:
            record = record.with_boxes(*_edited(record, dropped_boxes.get(index, ()), clipped.get(index, ())))
        kept.append(record)
    return kept


def _edited(record: DetectionRecord, dropped: Iterable[int], clipped: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which boxes of `record` stay (not `dropped`), and its boxes with the `clipped` ones clipped to the image."""
    keep = np.ones(record.num_boxes, bool)
    keep[list(dropped)] = False
    boxes = record.boxes.copy()
    rows = list(clipped)
    if rows:
        height, width = record.height, record.width
        if height is None or width is None:  # clip needs the real size; it was checked readable
            with Image.open(io.BytesIO(record.read_encoded())) as image:
                width, height = image.size
        limits = np.array([height, width, height, width], np.float32)
        boxes[rows] = np.clip(boxes[rows], 0.0, limits)
    return keep, boxes


def _image_name(record: DetectionRecord) -> str:
    return str(record.image_path) if record.image_path is not None else f"the image in {record.source}"
