"""The records of TFRecord shards as columns: a few dozen bytes a record, not a Python object each.

A split of 100k records held as :class:`DetectionRecord` s takes ~2 KB a record (the object, four
small arrays, its strings and :class:`ByteSpan`) and seconds to build from the dataset index.
:class:`RecordColumns` keeps the same in NumPy arrays (per record: file, position in it, image
span, size and id; per box: corners, class, crowd flag, area) and builds a record only when one is
indexed, so callers keep indexing and iterating a split as a sequence of records, while the checks
and the input pipeline read the columns whole.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from detkeeper.data.record import ByteSpan, DetectionRecord


class RecordColumns(Sequence[DetectionRecord]):
    """Records whose images lie in the files they were read from (TFRecord shards), as columns.

    Record ``i`` is ``#numbers[i]`` of ``files[file_index[i]]`` (its `source`), its image the
    ``lengths[i]`` bytes at ``offsets[i]`` there; ``sizes[i]`` is its declared (height, width), 0
    where none; its boxes are rows ``row_splits[i]:row_splits[i + 1]`` of the box columns. Its id
    is ``image_ids[i]``, an int (``original_id``) where ``int_ids[i]``. ``crcs[i]`` is the crc32 of its
    image's bytes when they were read (see :class:`ByteSpan`), -1 where not known.
    """

    def __init__(self, *, files: Sequence[str], file_index: np.ndarray, numbers: np.ndarray, offsets: np.ndarray,
                 lengths: np.ndarray, sizes: np.ndarray, image_ids: np.ndarray, int_ids: np.ndarray,
                 row_splits: np.ndarray, boxes: np.ndarray, class_ids: np.ndarray, is_crowd: np.ndarray,
                 area: np.ndarray, crcs: np.ndarray | None = None) -> None:
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
        """Columns of `records` read from `file` (each source ``file#number``, each image a span of it)."""
        spans = [record.image_span for record in records]
        if any(span is None or span.path != file for span in spans) or any(
                not record.source.startswith(f"{file}#") for record in records):
            raise ValueError(f"{file}: only records whose images lie in the file itself are kept as columns")
        counts = [record.num_boxes for record in records]

        def joined(field: str, empty: np.ndarray) -> np.ndarray:
            return np.concatenate([getattr(record, field) for record in records]) if records else empty

        return cls(files=[file], file_index=np.zeros(len(records), np.int32),
                   numbers=[int(record.source.rsplit("#", 1)[1]) for record in records],
                   offsets=[span.offset for span in spans], lengths=[span.length for span in spans],
                   sizes=[[record.height or 0, record.width or 0] for record in records],
                   image_ids=[record.image_id for record in records],
                   int_ids=[isinstance(record.original_id, int) for record in records],
                   row_splits=np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]),
                   boxes=joined("boxes", np.zeros((0, 4))), class_ids=joined("class_ids", np.zeros(0, np.int64)),
                   is_crowd=joined("is_crowd", np.zeros(0, bool)), area=joined("area", np.zeros(0)),
                   crcs=[-1 if span.crc32 is None else span.crc32 for span in spans])

    @classmethod
    def concatenate(cls, parts: Sequence["RecordColumns"]) -> "RecordColumns":
        """The records of `parts` (at least one), one after the other."""
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
                   area=joined("area"), crcs=joined("crcs"))

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
        return DetectionRecord(
            image_id=image_id, boxes=self.boxes[rows], class_ids=self.class_ids[rows], is_crowd=self.is_crowd[rows],
            source=f"{file}#{self.numbers[position]}", area=self.area[rows],
            image_span=ByteSpan(file, int(self.offsets[position]), int(self.lengths[position]),
                                None if self.crcs[position] < 0 else int(self.crcs[position])),
            width=width or None, height=height or None,
            original_id=int(image_id) if self.int_ids[position] else image_id)

    def __iter__(self) -> Iterator[DetectionRecord]:
        return (self[position] for position in range(len(self)))

    @property
    def box_counts(self) -> np.ndarray:
        return np.diff(self.row_splits)

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
            crcs=self.crcs[keep_records])


def image_ids(records: Sequence[DetectionRecord]) -> list[str]:
    """The image id of every record, from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return records.image_ids.tolist()
    return [record.image_id for record in records]


def box_counts(records: Sequence[DetectionRecord]) -> np.ndarray:
    """The number of boxes of every record, from the columns when `records` has them."""
    if isinstance(records, RecordColumns):
        return records.box_counts
    return np.fromiter((record.num_boxes for record in records), np.int64, len(records))
