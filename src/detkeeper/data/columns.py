"""The records of a split as columns: a few dozen bytes a record, not a Python object each.

A split of 100k records held as :class:`DetectionRecord` s takes ~2 KB a record (the object, four
small arrays, its strings and :class:`ByteSpan`) and seconds to build from the dataset index.
:class:`RecordColumns` keeps the same in NumPy arrays (per record: file, position in it, image
span, size and id; per box: corners, class, crowd flag, area) and builds a record only when one is
indexed, so callers keep indexing and iterating a split as a sequence of records, while the checks
and the input pipeline read the columns whole. Every reader's records fit: a TFRecord's images are
spans of its shards, a VOC or COCO dataset's are image files of their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from detkeeper.data.record import ByteSpan, DetectionRecord


#: The `source` of a record read from a TFRecord shard: the shard and the record's number in it.
SHARD_SOURCES = "{file}#{number}"



class RecordColumns(Sequence[DetectionRecord]):
    """Records whose images lie in files (spans of TFRecord shards, or image files), as columns.

    Record ``i``'s image is the ``lengths[i]`` bytes at ``offsets[i]`` of ``files[file_index[i]]``,
    or that whole file where ``lengths[i]`` is -1; ``numbers[i]`` is its position in what it was
    read from, and its `source` is `source_pattern` formatted with ``file`` (its image's file),
    ``number`` and ``image_id`` (a shard's record: ``{file}#{number}``). ``sizes[i]`` is its
    declared (height, width), 0 where none; its boxes are rows ``row_splits[i]:row_splits[i + 1]``
    of the box columns. Its id is ``image_ids[i]``, an int (``original_id``) where ``int_ids[i]``.
    ``crcs[i]`` is the crc32 of a span's bytes when they were read (see :class:`ByteSpan`), -1 where
    not known (and for image files).
    """

    def __init__(self, *, files: Sequence[str], file_index: np.ndarray, numbers: np.ndarray, offsets: np.ndarray,
                 lengths: np.ndarray, sizes: np.ndarray, image_ids: np.ndarray, int_ids: np.ndarray,
                 row_splits: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, is_crowd: np.ndarray,
                 area: np.ndarray, source_pattern: str = SHARD_SOURCES, crcs: np.ndarray | None = None) -> None:
        self.source_pattern = source_pattern
        self.files = list(files)
        self.file_index = np.asarray(file_index, np.int32)
        self.numbers = np.asarray(numbers, np.int64)
        self.offsets = np.asarray(offsets, np.int64)
        self.lengths = np.asarray(lengths, np.int64)
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.image_ids = np.asarray(image_ids, str)
        self.int_ids = np.asarray(int_ids, bool)
        self.row_splits = np.asarray(row_splits, np.int64)
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.class_ids = np.asarray(class_ids, np.int64)
        self.is_crowd = np.asarray(is_crowd, bool)
        self.area = np.asarray(area, np.float64)
        self.crcs = np.full(len(self.file_index), -1, np.int64) if crcs is None else np.asarray(crcs, np.int64)

    @classmethod
    def from_records(cls, records: Sequence[DetectionRecord], file: str) -> "RecordColumns":
        """Columns of `records` read from the TFRecord `file` (each source ``file#number``, each image a span of it)."""
        spans = [record.image_span for record in records]
        if any(span is None or span.path != file for span in spans) or any(
                not record.source.startswith(f"{file}#") for record in records):
            raise ValueError(f"{file}: only records whose images lie in the file itself are kept as columns")
        return cls._of(records, [int(record.source.rsplit("#", 1)[1]) for record in records], SHARD_SOURCES, [file])

    @classmethod
    def of_image_files(cls, records: Sequence[DetectionRecord], numbers: Sequence[int],
                       source_pattern: str) -> "RecordColumns":
        """Columns of `records` whose images are files of their own (VOC, COCO), record ``i`` being
        ``numbers[i]`` of what it was read from and named by `source_pattern` (see the class)."""
        if any(record.image_path is None for record in records):
            raise ValueError("only records whose images are files are kept as image-file columns")
        columns = cls._of(records, numbers, source_pattern)
        for position, record in enumerate(records):
            if columns.source_of(position) != record.source:
                raise ValueError(f"{record.source}: {source_pattern!r} names it {columns.source_of(position)!r}")
        return columns

    @classmethod
    def _of(cls, records: Sequence[DetectionRecord], numbers: Sequence[int], source_pattern: str,
            files_first: Sequence[str] = ()) -> "RecordColumns":
        files = {file: position for position, file in enumerate(files_first)}
        file_index, offsets, lengths = [], [], []
        for record in records:
            span = record.image_span
            path = span.path if span is not None else str(record.image_path)
            file_index.append(files.setdefault(path, len(files)))
            offsets.append(span.offset if span is not None else 0)
            lengths.append(span.length if span is not None else -1)
        counts = [record.num_boxes for record in records]

        def joined(field: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([getattr(record, field) for record in records]) if records else empty

        return cls(files=list(files), file_index=file_index, numbers=numbers, offsets=offsets, lengths=lengths,
                   sizes=[[record.height or 0, record.width or 0] for record in records],
                   image_ids=[record.image_id for record in records],
                   int_ids=[isinstance(record.original_id, int) for record in records],
                   row_splits=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
                   boxes=joined("boxes", np.zeros((0, 4))), class_ids=joined("class_ids", np.zeros(0, np.int64)),
                   is_crowd=joined("is_crowd", np.zeros(0, bool)), area=joined("area", np.zeros(0)),
                   source_pattern=source_pattern,
                   crcs=[-1 if record.image_span is None or record.image_span.crc32 is None
                         else record.image_span.crc32 for record in records])

    @classmethod
    def concatenate(cls, parts: Sequence["RecordColumns"]) -> "RecordColumns":
        """The records of `parts` (at least one, all named by one source pattern), one after the other."""
        if len({part.source_pattern for part in parts}) > 1:
            raise ValueError("columns whose records are named by different source patterns are not joined")
        file_starts = np.cumsum([0] + [len(part.files) for part in parts])
        box_starts = np.cumsum([0] + [len(part.boxes) for part in parts])

        def joined(field: str) -> np.ndarray:
            return np.concatenate([getattr(part, field) for part in parts])

        return cls(files=[file for part in parts for file in part.files],
                   file_index=np.concatenate([part.file_index + start for part, start in zip(parts, file_starts)]),
                   numbers=joined("numbers"), offsets=joined("offsets"), lengths=joined("lengths"),
                   sizes=joined("sizes"), image_ids=joined("image_ids"), int_ids=joined("int_ids"),
                   row_splits=np.concatenate([[0]] + [part.row_splits[1:] + start
                                                      for part, start in zip(parts, box_starts)]),
                   boxes=joined("boxes"), class_ids=joined("class_ids"), is_crowd=joined("is_crowd"),
                   area=joined("area"), source_pattern=parts[0].source_pattern, crcs=joined("crcs"))

    def __len__(self) -> int:
        return len(self.file_index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        position = range(len(self))[index]  # negative indices, and IndexError past the end
        rows = slice(self.row_splits[position], self.row_splits[position + 1])
        file = self.files[self.file_index[position]]
        image_id = str(self.image_ids[position])
        height, width = self.sizes[position].tolist()
        length = int(self.lengths[position])
        return DetectionRecord(
            image_id=image_id, boxes=self.boxes[rows], class_ids=self.class_ids[rows], is_crowd=self.is_crowd[rows],
            source=self.source_of(position), area=self.area[rows],
            image_path=Path(file) if length < 0 else None,
            image_span=ByteSpan(file, int(self.offsets[position]), length,
                                None if self.crcs[position] < 0 else int(self.crcs[position])) if length >= 0 else None,
            width=width or None, height=height or None,
            original_id=int(image_id) if self.int_ids[position] else image_id)

    def source_of(self, position: int) -> str:
        """Where record `position` came from, for messages: its `source`, without building the record."""
        return self.source_pattern.format(file=self.files[self.file_index[position]],
                                          number=int(self.numbers[position]), image_id=str(self.image_ids[position]))

    def __iter__(self) -> Iterator[DetectionRecord]:
        return (self[position] for position in range(len(self)))

    @property
    def box_counts(self) -> np.ndarray:
        return np.diff(self.row_splits)

    def with_class_ids(self, class_ids: np.ndarray) -> "RecordColumns":
        """The same records with every box's class id replaced (`class_ids`, one per box)."""
        return RecordColumns(
            files=self.files, file_index=self.file_index, numbers=self.numbers, offsets=self.offsets,
            lengths=self.lengths, sizes=self.sizes, image_ids=self.image_ids, int_ids=self.int_ids,
            row_splits=self.row_splits, boxes=self.boxes, class_ids=class_ids, is_crowd=self.is_crowd, area=self.area,
            source_pattern=self.source_pattern, crcs=self.crcs)

    def edited(self, keep_records: np.ndarray, keep_boxes: np.ndarray, boxes: np.ndarray) -> "RecordColumns":
        """The records where `keep_records`, with the boxes where `keep_boxes` (of `boxes`, the new corners)."""
        record_of_box = np.repeat(np.arange(len(self)), self.box_counts)
        keep_boxes = keep_boxes & keep_records[record_of_box]
        counts = np.bincount(record_of_box[keep_boxes], minlength=len(self))[keep_records]
        return RecordColumns(
            files=self.files, file_index=self.file_index[keep_records], numbers=self.numbers[keep_records],
            offsets=self.offsets[keep_records], lengths=self.lengths[keep_records], sizes=self.sizes[keep_records],
            image_ids=self.image_ids[keep_records], int_ids=self.int_ids[keep_records],
            row_splits=np.concatenate([[0], np.cumsum(counts)]), boxes=boxes[keep_boxes],
            class_ids=self.class_ids[keep_boxes], is_crowd=self.is_crowd[keep_boxes], area=self.area[keep_boxes],
            source_pattern=self.source_pattern, crcs=self.crcs[keep_records])


def image_ids(records: Sequence[DetectionRecord]) -> list[str]:
    """The image id of every record, from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return records.image_ids.tolist()
    return [record.image_id for record in records]


def original_ids(records: Sequence[DetectionRecord]) -> list[int | str]:
    """The original id of every record (its type kept), from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return [int(image_id) if is_int else image_id
                for image_id, is_int in zip(records.image_ids.tolist(), records.int_ids.tolist())]
    return [record.original_id for record in records]


def box_counts(records: Sequence[DetectionRecord]) -> np.ndarray:
    """The number of boxes of every record, from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return records.box_counts
    return np.fromiter((record.num_boxes for record in records), np.int64, len(records))


def all_class_ids(records: Sequence[DetectionRecord]) -> np.ndarray:
    """The class id of every box of every record, in order, from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return records.class_ids
    return np.concatenate([np.zeros(0, np.int64)] + [record.class_ids for record in records])
