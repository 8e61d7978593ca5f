"""The dataset index: what reading and checking each file of a dataset found, kept between starts.

Reading a large dataset is what makes a start slow: every record parsed, every image opened. The
index keeps, for each source file (a TFRecord shard), the records reading it gave (ids, boxes,
classes, where each image lies; never an image), the reader's problems, what opening each image
found and what checking each record alone found (:func:`record_problems`), in ``$DETKEEPER_CACHE/index``, the pattern of Ultralytics' ``labels.cache``. Each file's
entry is keyed by the file's path, size and modification time and by the label map it was read
with, so a later start reads the index instead of the data, and a changed or added file is read
again on its own. Entries are written whole or not at all (temporary file + rename); one that does
not load, or does not describe the file as it is now, is never used: the file is read again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detkeeper.data.check import ImageFacts, inspect_image, record_problems
from detkeeper.data.label_map import LabelMap
from detkeeper.data.problems import Problem
from detkeeper.data.record import ByteSpan, DetectionRecord
from detkeeper.errors import DetkeeperError
from detkeeper.files import atomic_write_bytes, cache_directory, is_url

logger = logging.getLogger("detkeeper.data")

#: Bumped whenever what an entry holds changes: entries of another format are read again.
INDEX_FORMAT = 2


@dataclasses.dataclass
class FilePart:
    """What one file contributed: its records (in file order), the reader's problems (their
    ``record_index`` counts within this file), the (label, text) pairs it names (for deriving a
    label map), per record what opening its image found (None: images not opened), and what
    :func:`record_problems` found in its records with those facts (None: not checked yet)."""

    records: list[DetectionRecord]
    problems: list[Problem]
    texts_of_label: dict[int, set[str]]
    image_facts: list[ImageFacts] | None = None
    checked: list[Problem] | None = None


ReadFile = Callable[[Path], FilePart]


def indexed_parts(files: Sequence[Path], read_file: ReadFile, label_map: LabelMap | None, *,
                  check_images: bool, progress: Callable[[int], None] | None = None,
                  workers: int | None = None) -> list[FilePart]:
    """Each file's part, from the index where it holds the file as it is now, else read with
    `read_file` (and its images opened when `check_images`) and written to the index. Files are
    read side by side in threads; `progress` gets the records finished since its last call."""
    key = _label_map_key(label_map)

    def part_of(file: Path) -> FilePart:
        identity = file_identity(file)
        entry = _entry_path(file, key)
        part = _load(entry, file, identity, key, check_images)
        if part is None:
            part = read_file(file)
            if check_images:
                part.image_facts = [inspect_image(record) for record in part.records]
            part.checked = [problem for number, (record, facts) in enumerate(zip(
                part.records, part.image_facts or [None] * len(part.records)))
                for problem in record_problems(record, facts, number)]
            _save(entry, file, identity, key, part)
        if progress:
            progress(len(part.records))
        return part

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(part_of, files))


def file_identity(path: Path) -> tuple[int, int]:
    """``(size, mtime in ns)``: what says a file is still the one an index entry was made from."""
    if is_url(str(path)):
        import tensorflow as tf  # light: imports TensorFlow

        stat = tf.io.gfile.stat(str(path))
        return int(stat.length), int(stat.mtime_nsec)
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _label_map_key(label_map: LabelMap | None) -> str:
    return "" if label_map is None else label_map.to_pbtxt()


def _entry_path(file: Path, label_map_key: str) -> Path:
    digest = hashlib.sha256(json.dumps([INDEX_FORMAT, str(file), label_map_key]).encode("utf-8")).hexdigest()
    return cache_directory("index") / digest[:2] / f"{digest}.npz"


def _save(entry: Path, file: Path, identity: tuple[int, int], label_map_key: str, part: FilePart) -> None:
    """Write `part` as the index entry of `file` (atomically); a cache that cannot be written only
    costs the next start its speed, so that is logged, not raised."""
    records = part.records
    counts = [record.num_boxes for record in records]
    spans = [record.image_span for record in records]
    if any(span is None or span.path != str(file) for span in spans):
        raise ValueError(f"{file}: only records whose images lie in the file itself are indexed")
    meta = {
        "format": INDEX_FORMAT, "file": str(file), "identity": list(identity), "label_map": label_map_key,
        "original_ids": [record.original_id for record in records],
        "sources": [record.source for record in records],
        "problems": [dataclasses.asdict(problem) for problem in part.problems],
        "checked": [dataclasses.asdict(problem) for problem in part.checked or ()],
        "texts_of_label": {str(label): sorted(texts) for label, texts in part.texts_of_label.items()},
        "image_facts": None if part.image_facts is None else [
            [list(facts.size) if facts.size else None, [dataclasses.asdict(p) for p in facts.problems]]
            for facts in part.image_facts],
    }
    arrays = {
        "meta": np.array(json.dumps(meta)),
        "offsets": np.array([span.offset for span in spans], np.int64),
        "lengths": np.array([span.length for span in spans], np.int64),
        "sizes": np.array([[record.height or 0, record.width or 0] for record in records], np.int64).reshape(-1, 2),
        "box_counts": np.array(counts, np.int64),
        "boxes": np.concatenate([record.boxes for record in records]) if records else np.zeros((0, 4)),
        "class_ids": np.concatenate([record.class_ids for record in records]) if records else np.zeros(0, np.int64),
        "is_crowd": np.concatenate([record.is_crowd for record in records]) if records else np.zeros(0, bool),
        "area": np.concatenate([record.area for record in records]) if records else np.zeros(0),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(entry, buffer.getvalue())
    except (OSError, DetkeeperError) as error:  # a read-only or full cache must not stop a start
        logger.warning("%s: the dataset index could not be written to %s (%s); the next start reads the "
                       "file again", file, entry, error)


def _load(entry: Path, file: Path, identity: tuple[int, int], label_map_key: str,
          check_images: bool) -> FilePart | None:
    """The part `entry` holds for `file`, or None when there is none to trust: missing, unreadable,
    of another format, made from another version of the file or label map, or without the image
    checks asked for."""
    try:
        with np.load(entry, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(str(arrays["meta"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning("%s: its dataset index entry %s does not load (%s); reading the file again", file, entry, error)
        return None
    if (meta.get("format") != INDEX_FORMAT or meta.get("file") != str(file) or meta.get("identity") != list(identity)
            or meta.get("label_map") != label_map_key or (check_images and meta.get("image_facts") is None)):
        return None
    ends = np.cumsum(arrays["box_counts"])
    starts = ends - arrays["box_counts"]
    records = []
    for index, (original_id, source) in enumerate(zip(meta["original_ids"], meta["sources"])):
        rows = slice(int(starts[index]), int(ends[index]))
        height, width = (int(value) for value in arrays["sizes"][index])
        records.append(DetectionRecord(
            image_id=str(original_id), boxes=arrays["boxes"][rows], class_ids=arrays["class_ids"][rows],
            is_crowd=arrays["is_crowd"][rows], source=source, area=arrays["area"][rows],
            image_span=ByteSpan(str(file), int(arrays["offsets"][index]), int(arrays["lengths"][index])),
            width=width or None, height=height or None, original_id=original_id))
    facts = None
    if meta["image_facts"] is not None:
        facts = [ImageFacts(tuple(size) if size else None, tuple(Problem(**problem) for problem in problems))
                 for size, problems in meta["image_facts"]]
    # The stored checks used the image facts when there are some: an annotations-only read checks anew.
    checked = [Problem(**problem) for problem in meta["checked"]] if check_images or facts is None else None
    return FilePart(records, [Problem(**problem) for problem in meta["problems"]],
                    {int(label): set(texts) for label, texts in meta["texts_of_label"].items()}, facts, checked)
