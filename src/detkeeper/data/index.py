"""The dataset index: what reading and checking each file of a dataset found, kept between starts.

Reading a large dataset is what makes a start slow: every record parsed, every image opened. The
index keeps, for each source file (a TFRecord shard), the records reading it gave (ids, boxes,
classes, where each image lies; never an image) as columns, the reader's problems and what checking
each record alone found (:func:`record_problems`: opening its image, its boxes against its size),
in ``$DETKEEPER_CACHE/index``, the pattern of Ultralytics' ``labels.cache``. Each file's entry is
keyed by the file's path (a URL such as ``gs://...`` as it is: the index of a dataset in an object
store is kept on this machine), size and modification time (and a fingerprint of its first and
last bytes where the file system reports no time) and by the label map it was read with, so a
later start reads the index instead of the data, and a changed or added file is read again on its
own. Entries are written whole or not at all (temporary file + rename); one that does
not load, or does not describe the file as it is now, is never used: the file is read again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detkeeper.data.check import inspect_image, record_problems
from detkeeper.data.columns import RecordColumns
from detkeeper.data.label_map import LabelMap
from detkeeper.data.problems import Problem
from detkeeper.data.record import DetectionRecord
from detkeeper.errors import DataError, DetkeeperError
from detkeeper.files import atomic_write_bytes, cache_directory, is_atomic_temp, is_url

logger = logging.getLogger("detkeeper.data")

#: Bumped whenever what an entry holds changes: entries of another format are read again.
INDEX_FORMAT = 3

#: The arrays of an entry: a file's :class:`RecordColumns`.
_COLUMNS = ("file_index", "numbers", "offsets", "lengths", "sizes", "image_ids", "int_ids", "row_splits", "boxes",
            "class_ids", "is_crowd", "area", "crcs")


@dataclasses.dataclass
class FilePart:
    """What one file contributed: its records (in file order), the reader's problems (their
    ``record_index`` counts within this file), the (label, text) pairs it names (for deriving a
    label map), and what :func:`record_problems` found in its records (None: not checked yet), with
    their images opened when `images_checked`."""

    records: Sequence[DetectionRecord]
    problems: list[Problem]
    texts_of_label: dict[int, set[str]]
    checked: list[Problem] | None = None
    images_checked: bool = False


ReadFile = Callable[[str], FilePart]


def indexed_parts(files: Sequence[str], read_file: ReadFile, label_map: LabelMap | None, *,
                  check_images: bool, progress: Callable[[int], None] | None = None,
                  workers: int | None = None) -> list[FilePart]:
    """Each file's part, from the index where it holds the file as it is now, else read with
    `read_file` (and its images opened when `check_images`) and written to the index. Files are
    read side by side in threads, and the images of each opened side by side in threads of their
    own (Pillow decodes without the GIL), so one big shard is checked in parallel too; `progress`
    gets the records finished since its last call."""
    key = _label_map_key(label_map)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def part_of(file: str, images: concurrent.futures.Executor) -> FilePart:
        identity = file_identity(file)
        entry = _entry_path(file, key)
        part = _load(entry, file, identity, key, check_images)
        if part is None:
            part = read_file(file)
            records = part.records
            part.records = RecordColumns.from_records(records, str(file))
            facts = images.map(inspect_image, records) if check_images else itertools.repeat(None)
            part.checked = [problem for number, (record, found) in enumerate(zip(records, facts))
                            for problem in record_problems(record, found, number)]
            part.images_checked = check_images
            _save(entry, file, identity, key, part)
        if progress:
            progress(len(part.records))
        return part

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as files_pool, \
            concurrent.futures.ThreadPoolExecutor(max_workers=workers) as images:
        return list(files_pool.map(lambda file: part_of(file, images), files))


def file_identity(path: str | Path) -> tuple:
    """``(size, mtime in ns)``: what says a file is still the one an index entry was made from. Where
    the file system reports no modification time (0: ``ram://``, some object stores, archives that
    reset it) a fingerprint of the file's first and last bytes joins them, so a new version of the
    same size is still told apart. URLs (``gs://``...) are asked of tf.io.gfile; a folder is refused."""
    if not is_url(str(path)):
        stat = os.stat(path)
        if stat.st_mtime_ns:
            return stat.st_size, stat.st_mtime_ns
        with open(path, "rb") as handle:
            return stat.st_size, 0, _fingerprint(handle, stat.st_size)
    import tensorflow as tf  # light: imports TensorFlow

    try:
        stat = tf.io.gfile.stat(str(path))
        if stat.is_directory:
            raise DataError(f"{path}: a folder, not a file; make the pattern match files only "
                            "(e.g. .../train-*)")
        if stat.mtime_nsec:
            return int(stat.length), int(stat.mtime_nsec)
        with tf.io.gfile.GFile(str(path), "rb") as handle:
            return int(stat.length), 0, _fingerprint(handle, int(stat.length))
    except tf.errors.OpError as error:
        raise DataError(f"{path}: cannot read it ({error.message.strip().splitlines()[0]})") from None


#: Bytes read from each end of a file for its fingerprint.
_FINGERPRINT_BYTES = 64 * 1024


def _fingerprint(handle, size: int) -> str:
    """sha256 of the first and last 64 KiB of an open file of `size` bytes (of all of it when smaller)."""
    if size <= 2 * _FINGERPRINT_BYTES:
        return hashlib.sha256(handle.read()).hexdigest()
    digest = hashlib.sha256(handle.read(_FINGERPRINT_BYTES))
    handle.seek(size - _FINGERPRINT_BYTES)
    digest.update(handle.read(_FINGERPRINT_BYTES))
    return digest.hexdigest()


def forget(file: str, label_map: LabelMap | None) -> None:
    """Remove `file`'s entries (read without a label map, to derive one, and with `label_map`): its
    bytes were found changed while its size and modification time were not, so the index cannot
    tell; the next start reads the file again."""
    for key in {"", _label_map_key(label_map)}:
        _entry_path(file, key).unlink(missing_ok=True)


def _label_map_key(label_map: LabelMap | None) -> str:
    return "" if label_map is None else label_map.to_pbtxt()


def _entry_path(file: str | Path, label_map_key: str) -> Path:
    digest = hashlib.sha256(json.dumps([INDEX_FORMAT, str(file), label_map_key]).encode("utf-8")).hexdigest()
    return cache_directory("index") / digest[:2] / f"{digest}.npz"


def _save(entry: Path, file: str, identity: tuple, label_map_key: str, part: FilePart) -> None:
    """Write `part` as the index entry of `file` (atomically); a cache that cannot be written only
    costs the next start its speed, so that is logged, not raised."""
    columns = part.records  # the file's RecordColumns
    meta = {
        "format": INDEX_FORMAT, "file": str(file), "identity": list(identity), "label_map": label_map_key,
        "problems": [dataclasses.asdict(problem) for problem in part.problems],
        "texts_of_label": {str(label): sorted(texts) for label, texts in part.texts_of_label.items()},
        "checked": [dataclasses.asdict(problem) for problem in part.checked or ()],
        "images_checked": part.images_checked,
    }
    arrays = {"meta": np.array(json.dumps(meta)), **{name: getattr(columns, name) for name in _COLUMNS}}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        for leftover in entry.parent.glob(f".{entry.name}.*"):  # a killed write's temporary file, never read
            if is_atomic_temp(leftover.name, entry.name):
                leftover.unlink(missing_ok=True)
        atomic_write_bytes(entry, buffer.getvalue())
    except (OSError, DetkeeperError) as error:  # a read-only or full cache must not stop a start
        logger.warning("%s: the dataset index could not be written to %s (%s); the next start reads the "
                       "file again", file, entry, error)


def _load(entry: Path, file: str, identity: tuple, label_map_key: str,
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
            or meta.get("label_map") != label_map_key or (check_images and not meta.get("images_checked"))
            or not set(_COLUMNS) <= arrays.keys()):
        return None
    columns = RecordColumns(files=[str(file)], **{name: arrays[name] for name in _COLUMNS})
    # Checks made with the images opened are not those of an annotations-only read, which checks anew.
    checked = [Problem(**problem) for problem in meta["checked"]] if meta["images_checked"] == check_images else None
    return FilePart(columns, [Problem(**problem) for problem in meta["problems"]],
                    {int(label): set(texts) for label, texts in meta["texts_of_label"].items()},
                    checked, meta["images_checked"])
