"""The one in-memory record every dataset reader produces.

Box convention inside detkeeper (converted only at the edges: readers, writers, export):

* order ``[ymin, xmin, ymax, xmax]`` -- the order of ``tf.image`` ops and of the TF Object
  Detection API;
* absolute pixel coordinates as float64 (so a COCO annotation's coordinates reach the evaluator
  as the file wrote them), continuous: a box covering pixel columns 0..9 has ``xmin = 0`` and
  ``xmax = 10``. VOC's integer corners are taken as they are (no -1 shift), as the TF OD API's
  VOC converter does;
* class ids are label-map ids (1-based, as in ``label_map.pbtxt``); the shift to the contiguous
  0-based indices a model predicts happens in one place, :class:`detkeeper.data.label_map.LabelMap`.

What COCO evaluation needs besides boxes travels with the record, so scoring a dataset gives the
numbers pycocotools gives on its files: each object's crowd flag and declared ``area`` (COCO's
segmentation area, which sorts objects into small/medium/large; NaN where the format has none,
and the box's area is used), and the image's ``original_id`` in its original type (COCO's
integer ids order images numerically, as pycocotools sorts them; see :func:`coco_order`).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from detkeeper.errors import DataError
from detkeeper.files import is_url


class ChangedSinceRead(DataError):
    """A file's bytes are not those it held when it was read (and indexed): nothing read from it can be trusted."""


@dataclasses.dataclass(frozen=True)
class ByteSpan:
    """`length` bytes at `offset` of the file at `path`: where a TFRecord keeps a record's encoded
    image. Readers keep this, not the bytes, so a dataset's images stay on disk until decoded.
    `crc32` (zlib's) of the bytes as they were read first, when known: a file rewritten since with
    its size and modification time kept (which the dataset index cannot tell from the same file
    without reading it) is caught when the span is read, not decoded as another image."""

    path: str
    offset: int
    length: int
    crc32: int | None = None

    def read(self) -> bytes:
        """The bytes (an OSError when the file is gone or now ends before them; a
        :class:`ChangedSinceRead` when they are not the bytes `crc32` was taken from)."""
        if is_url(self.path):  # gs:// and the like: what tf.io.gfile reads
            data, end = self._read_url()
        else:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read(self.length)
            end = self.offset + len(data)
        if len(data) != self.length:
            raise OSError(f"{self.path} ends at byte {end}, before the {self.length} bytes at "
                          f"{self.offset} (the file changed since it was read)")
        crc32 = None if self.crc32 is None else zlib.crc32(data)
        if crc32 != self.crc32:
            raise ChangedSinceRead(
                f"{self.path}: bytes {self.offset}-{self.offset + self.length} are not the image they held when the "
                f"file was read (crc32 {crc32:08x}, was {self.crc32:08x}): the file was rewritten since")
        return data

    def _read_url(self) -> tuple[bytes, int]:
        """The bytes through tf.io.gfile (a ranged read where the store has one) and where they end;
        TensorFlow's errors become the OSErrors a local read raises."""
        import tensorflow as tf  # light: imports TensorFlow

        try:
            with tf.io.gfile.GFile(self.path, "rb") as handle:
                try:
                    handle.seek(self.offset)
                except tf.errors.OutOfRangeError:  # the object now ends before the offset
                    return b"", int(handle.size())
                data = handle.read(self.length)
        except tf.errors.NotFoundError as error:
            raise FileNotFoundError(errno.ENOENT, f"{self.path}: {error.message.strip()}", self.path) from None
        except tf.errors.OpError as error:
            raise OSError(f"{self.path}: {error.message.strip()}") from None
        return data, self.offset + len(data)

    def describe(self) -> str:
        return f"bytes {self.offset}-{self.offset + self.length} of {os.fspath(self.path)}"


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One annotated image, before any decoding or augmentation.

    Exactly one of `image_path`, `image_span` and `encoded_image` is set: readers of image folders
    (VOC, COCO) point at files, the TFRecord reader at the bytes of the image inside its record;
    `encoded_image` holds images made in memory (the synthetic dataset, before it is written).
    `width` and `height` are what the annotation declares (None when it declares nothing).
    `source` names where the record came from (a file, or ``file.tfrecord#17``) for messages.
    `area` is each object's declared area in pixels (NaN: none declared). `original_id` is the
    image's id as the dataset gives it, in its type (COCO: the JSON's integer ``id``; VOC: the
    file stem; TFRecord: ``image/source_id``, an int when it is a canonical decimal integer); it
    defaults to `image_id`, which is always its string form: detkeeper's key in messages, the
    input pipeline and file names.
    """

    image_id: str
    boxes: np.ndarray  # float64 [N, 4], yxyx pixels
    class_ids: np.ndarray  # int64 [N], label-map ids
    is_crowd: np.ndarray  # bool [N], COCO crowd regions (kept for evaluation)
    source: str
    image_path: Path | None = None
    encoded_image: bytes | None = None
    image_span: ByteSpan | None = None
    width: int | None = None
    height: int | None = None
    area: np.ndarray | None = None  # float64 [N], NaN where the format declares none
    original_id: int | str | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", np.asarray(self.class_ids, dtype=np.int64).reshape(-1))
        crowd = np.zeros(len(boxes), bool) if self.is_crowd is None else self.is_crowd
        object.__setattr__(self, "is_crowd", np.asarray(crowd, dtype=bool).reshape(-1))
        area = np.full(len(boxes), np.nan) if self.area is None else self.area
        object.__setattr__(self, "area", np.asarray(area, dtype=np.float64).reshape(-1))
        if not (len(self.class_ids) == len(self.is_crowd) == len(self.area) == len(boxes)):
            raise ValueError(
                f"{self.source}: {len(boxes)} boxes, {len(self.class_ids)} class ids, "
                f"{len(self.is_crowd)} crowd flags and {len(self.area)} areas; they must be equal"
            )
        if self.original_id is None:
            object.__setattr__(self, "original_id", self.image_id)
        elif isinstance(self.original_id, bool) or not isinstance(self.original_id, (int, str)):
            raise ValueError(f"{self.source}: original_id must be an int or a str, got {self.original_id!r}")
        if str(self.original_id) != self.image_id:
            raise ValueError(f"{self.source}: image_id {self.image_id!r} must be the string form of "
                             f"original_id {self.original_id!r}")
        if sum(where is not None for where in (self.image_path, self.encoded_image, self.image_span)) != 1:
            raise ValueError(f"{self.source}: set exactly one of image_path, image_span and encoded_image")

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def coco_areas(self) -> np.ndarray:
        """The area COCO sorts each object by: the declared one, else the box's (float64)."""
        box_area = (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1])
        return np.where(np.isnan(self.area), box_area, self.area)

    def read_encoded(self) -> bytes:
        """The encoded image (JPEG/PNG bytes), read from disk unless the record holds it."""
        if self.encoded_image is not None:
            return self.encoded_image
        if self.image_span is not None:
            return self.image_span.read()
        assert self.image_path is not None
        return Path(self.image_path).read_bytes()

    def with_boxes(self, keep: np.ndarray, boxes: np.ndarray | None = None) -> "DetectionRecord":
        """A copy keeping only the boxes where `keep` is true (optionally with new coordinates)."""
        keep = np.asarray(keep, dtype=bool)
        new_boxes = self.boxes if boxes is None else np.asarray(boxes, np.float64)
        return dataclasses.replace(
            self,
            boxes=new_boxes[keep],
            class_ids=self.class_ids[keep],
            is_crowd=self.is_crowd[keep],
            area=self.area[keep],
        )


def coco_order(original_ids: Sequence[int | str]) -> list[int]:
    """Positions of `original_ids` in the order pycocotools evaluates images (it sorts ``imgIds``,
    and breaks score ties across images by that order): numerically when every id is an int, else
    every id compared as a string, as the TF OD API's string ``source_id`` s would be."""
    every_int = all(isinstance(value, int) and not isinstance(value, bool) for value in original_ids)
    keys = list(original_ids) if every_int else [str(value) for value in original_ids]
    return sorted(range(len(keys)), key=keys.__getitem__)


def xyxy_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """``[xmin, ymin, xmax, ymax]`` (VOC, Pascal-style) to detkeeper's ``[ymin, xmin, ymax, xmax]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return boxes[:, [1, 0, 3, 2]]


def yxyx_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """detkeeper's ``[ymin, xmin, ymax, xmax]`` to ``[xmin, ymin, xmax, ymax]``."""
    return xyxy_to_yxyx(boxes)  # the swap is its own inverse


def xywh_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, width, height]`` to ``[ymin, xmin, ymax, xmax]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    return np.stack([y, x, y + h, x + w], axis=1)


def yxyx_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``[ymin, xmin, ymax, xmax]`` to COCO ``[x, y, width, height]`` (float64 for JSON)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ymin, xmin, ymax, xmax = boxes.T
    return np.stack([xmin, ymin, xmax - xmin, ymax - ymin], axis=1)


def normalize_yxyx(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """Pixel boxes to the [0, 1] coordinates TF OD API TFRecords and exports use."""
    scale = np.array([height, width, height, width], dtype=np.float64)
    return (np.asarray(boxes, np.float64).reshape(-1, 4) / scale).astype(np.float32)


def denormalize_yxyx(boxes: np.ndarray, height: float, width: float) -> np.ndarray:
    """[0, 1] boxes to pixels (float64, the record's precision)."""
    scale = np.array([height, width, height, width], dtype=np.float64)
    return np.asarray(boxes, np.float64).reshape(-1, 4) * scale


def normalize_yxyx_batch(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Pixel boxes ``[..., N, 4]`` of images of `sizes` ``[..., 2]`` (height, width) to [0, 1], in
    the float32 of detections (the exports' ``detection_boxes``), not the record's float64."""
    return np.asarray(boxes) / _yxyx_sizes(sizes)


def denormalize_yxyx_batch(boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize_yxyx_batch`: [0, 1] boxes ``[..., N, 4]`` to pixels, float32."""
    return np.asarray(boxes) * _yxyx_sizes(sizes)


def _yxyx_sizes(sizes: np.ndarray) -> np.ndarray:
    """``[..., 2]`` (height, width) -> float32 ``[..., 1, 4]``, to scale the boxes of each image."""
    sizes = np.asarray(sizes, np.float32)
    return np.concatenate([sizes, sizes], axis=-1)[..., None, :]
