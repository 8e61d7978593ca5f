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

A VOC split or a COCO annotations file is one entry too (a VOC split's identity covers every XML
file it lists: :func:`files_digest`). Their images are files of their own, which the source's
identity does not cover, so the entry also keeps each image file's size and modification time
when its image was opened, and a start that checks images stats them all (about 3 us a file, 0.3 s
for 100k) and opens again only the images that changed, as Ultralytics' ``labels.cache`` hashes
every image file's size but without reading the whole dataset again for one changed file.
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

from detkeeper.data.check import ImageFacts, inspect_image, record_problems
from detkeeper.data.columns import SHARD_SOURCES, RecordColumns
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
    their images opened when `images_checked`. A reader that derives its label map itself (VOC,
    COCO) gives it as `label_map`; `image_files` is (size, mtime in ns) of each of the records'
    image files (``records.files``, -1 where missing) when their images were opened, for records
    whose images are files of their own."""

    records: Sequence[DetectionRecord]
    problems: list[Problem]
    texts_of_label: dict[int, set[str]]
    checked: list[Problem] | None = None
    images_checked: bool = False
    label_map: LabelMap | None = None
    image_files: np.ndarray | None = None


ReadFile = Callable[[str], FilePart]


def indexed_parts(files: Sequence[str], read_file: ReadFile, label_map: LabelMap | None, *,
                  check_images: bool, progress: Callable[[int], None] | None = None,
                  workers: int | None = None, identity: Callable[[Path], Sequence[int | str]] | None = None,
                  variant: str = "") -> list[FilePart]:
    """Each file's part, from the index where it holds the file as it is now, else read with
    `read_file` (and its images opened when `check_images`) and written to the index. Files are
    read side by side in threads, and the images of each opened side by side in threads of their
    own (Pillow decodes without the GIL), so one big shard is checked in parallel too; `progress`
    gets the records finished since its last call.

    `identity` says what a file is now (default :func:`file_identity`; a VOC split's covers its XML
    files too); `variant` is whatever else the reading depends on (a COCO file's images folder), and
    keys the entry with the file and the label map."""
    key = _label_map_key(label_map)
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    identity_of = identity or file_identity

    def inspect_counted(record: DetectionRecord) -> ImageFacts:
        facts = inspect_image(record)
        if progress:
            progress(1)
        return facts

    def part_of(file: str, images: concurrent.futures.Executor) -> FilePart:
        identity = list(identity_of(file))
        entry = _entry_path(file, key, variant)
        part = _load(entry, file, identity, key, check_images, variant)
        if part is None:
            part = read_file(file)
            if not isinstance(part.records, RecordColumns):
                part.records = RecordColumns.from_records(part.records, str(file))
            columns = part.records
            if check_images and (columns.lengths < 0).any():  # stat before opening: a change meanwhile is seen
                part.image_files = file_identities(columns.files)
            facts = images.map(inspect_counted, columns) if check_images else itertools.repeat(None)
            part.checked = [problem for number, (record, found) in enumerate(zip(columns, facts))
                            for problem in record_problems(record, found, number)]
            part.images_checked = check_images
            _save(entry, file, identity, key, part, variant)
            if progress and not check_images:
                progress(len(part.records))
        else:
            if check_images and _recheck_changed_images(part, images):
                _save(entry, file, identity, key, part, variant)
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


def files_digest(paths: Sequence[str | Path]) -> str:
    """One identity for many files (a VOC split's XML files): a digest of each one's path, size and
    modification time (-1 for a missing one), so a changed, added or removed file changes it."""
    digest = hashlib.sha256()
    for path, (size, mtime) in zip(paths, file_identities(paths).tolist()):
        digest.update(f"{path}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def file_identities(paths: Sequence[str | Path]) -> np.ndarray:
    """(size, mtime in ns) of each file, ``[N, 2]`` int64, as :func:`file_identity` for many local
    files (image files, a VOC split's XML files); -1 for one that cannot be stat'ed."""
    found = np.full((len(paths), 2), -1, np.int64)
    for row, path in enumerate(paths):
        try:
            stat = os.stat(path)
        except OSError:  # missing or unreadable: its identity says so, the checks report why
            continue
        found[row] = stat.st_size, stat.st_mtime_ns
    return found


def _recheck_changed_images(part: FilePart, images: concurrent.futures.Executor) -> bool:
    """Open again the images of `part` whose files changed since they were opened, and put what
    checking their records finds in place of what was found before; True when any had changed."""
    if part.image_files is None or part.checked is None:
        return False
    columns = part.records
    now = file_identities(columns.files)
    changed_files = np.flatnonzero((now != part.image_files).any(axis=1))
    if not len(changed_files):
        return False
    changed = np.flatnonzero(np.isin(columns.file_index, changed_files)).tolist()
    facts = images.map(inspect_image, (columns[number] for number in changed))
    fresh = [problem for number, found in zip(changed, facts)
             for problem in record_problems(columns[number], found, number)]
    stale = set(changed)
    # Sorted by record, stably: every record's problems stay in the order checking it gives them.
    part.checked = sorted([problem for problem in part.checked if problem.record_index not in stale] + fresh,
                          key=lambda problem: problem.record_index)
    part.image_files = now
    logger.info("%d image file(s) changed since they were checked; checked again", len(changed_files))
    return True


def forget(file: str, label_map: LabelMap | None) -> None:
    """Remove `file`'s entries (read without a label map, to derive one, and with `label_map`): its
    bytes were found changed while its size and modification time were not, so the index cannot
    tell; the next start reads the file again."""
    for key in {"", _label_map_key(label_map)}:
        _entry_path(file, key).unlink(missing_ok=True)


def _label_map_key(label_map: LabelMap | None) -> str:
    return "" if label_map is None else label_map.to_pbtxt()


def _entry_path(file: str | Path, label_map_key: str, variant: str = "") -> Path:
    keyed = [INDEX_FORMAT, str(file), label_map_key] + ([variant] if variant else [])
    digest = hashlib.sha256(json.dumps(keyed).encode("utf-8")).hexdigest()
    return cache_directory("index") / digest[:2] / f"{digest}.npz"


def _save(entry: Path, file: str | Path, identity: Sequence[int | str], label_map_key: str, part: FilePart,
          variant: str = "") -> None:
    """Write `part` as the index entry of `file` (atomically); a cache that cannot be written only
    costs the next start its speed, so that is logged, not raised."""
    columns = part.records  # the file's RecordColumns
    meta = {
        "format": INDEX_FORMAT, "file": str(file), "identity": list(identity), "label_map": label_map_key,
        "problems": [dataclasses.asdict(problem) for problem in part.problems],
        "texts_of_label": {str(label): sorted(texts) for label, texts in part.texts_of_label.items()},
        "checked": [dataclasses.asdict(problem) for problem in part.checked or ()],
        "images_checked": part.images_checked,
        "variant": variant, "source_pattern": columns.source_pattern,
        "label_map_read": None if part.label_map is None else [part.label_map.to_pbtxt(), part.label_map.source],
    }
    arrays = {"meta": np.array(json.dumps(meta)), **{name: getattr(columns, name) for name in _COLUMNS}}
    if columns.files != [str(file)]:  # a TFRecord's images lie in the shard itself; others name their files
        arrays["files"] = np.array(columns.files, str)
    if part.image_files is not None:
        arrays["image_files"] = part.image_files
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


def _load(entry: Path, file: str | Path, identity: Sequence[int | str], label_map_key: str,
          check_images: bool, variant: str = "") -> FilePart | None:
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
            or meta.get("variant", "") != variant or not set(_COLUMNS) <= arrays.keys()):
        return None
    files = arrays["files"].tolist() if "files" in arrays else [str(file)]
    if "image_files" in arrays and arrays["image_files"].shape != (len(files), 2):
        return None
    columns = RecordColumns(files=files, source_pattern=meta.get("source_pattern", SHARD_SOURCES),
                            **{name: arrays[name] for name in _COLUMNS})
    # Checks made with the images opened are not those of an annotations-only read, which checks anew.
    checked = [Problem(**problem) for problem in meta["checked"]] if meta["images_checked"] == check_images else None
    read = meta.get("label_map_read")
    return FilePart(columns, [Problem(**problem) for problem in meta["problems"]],
                    {int(label): set(texts) for label, texts in meta["texts_of_label"].items()},
                    checked, meta["images_checked"],
                    None if read is None else LabelMap.from_pbtxt_text(read[0], source=read[1]),
                    arrays.get("image_files"))
