"""The one in-memory record every dataset reader produces.

Box convention inside detkeeper (converted only at the edges: readers, writers, export):

* order ``[ymin, xmin, ymax, xmax]`` -- the order of ``tf.image`` ops and of the TF Object
  Detection API;
* absolute pixel coordinates as float32, continuous: a box covering pixel columns 0..9 has
  ``xmin = 0`` and ``xmax = 10``. VOC's integer corners are taken as they are (no -1 shift),
  as the TF OD API's VOC converter does;
* class ids are label-map ids (1-based, as in ``label_map.pbtxt``); the shift to the contiguous
  0-based indices a model predicts happens in one place, :class:`detkeeper.data.label_map.LabelMap`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One annotated image, before any decoding or augmentation.

    Exactly one of `image_path` and `encoded_image` is set: readers of image folders (VOC, COCO)
    point at files, the TFRecord reader carries the encoded bytes it found in the record.
    `width` and `height` are what the annotation declares (None when it declares nothing).
    `source` names where the record came from (a file, or ``file.tfrecord#17``) for messages.
    """

    image_id: str
    boxes: np.ndarray  # float32 [N, 4], yxyx pixels
    class_ids: np.ndarray  # int64 [N], label-map ids
    is_crowd: np.ndarray  # bool [N], COCO crowd regions (kept for evaluation)
    source: str
    image_path: Path | None = None
    encoded_image: bytes | None = None
    width: int | None = None
    height: int | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "class_ids", np.asarray(self.class_ids, dtype=np.int64).reshape(-1))
        crowd = np.zeros(len(boxes), bool) if self.is_crowd is None else self.is_crowd
        object.__setattr__(self, "is_crowd", np.asarray(crowd, dtype=bool).reshape(-1))
        if not (len(self.class_ids) == len(self.is_crowd) == len(boxes)):
            raise ValueError(
                f"{self.source}: {len(boxes)} boxes, {len(self.class_ids)} class ids and "
                f"{len(self.is_crowd)} crowd flags; they must be equal"
            )
        if (self.image_path is None) == (self.encoded_image is None):
            raise ValueError(f"{self.source}: set exactly one of image_path and encoded_image")

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)

    def read_encoded(self) -> bytes:
        """The encoded image (JPEG/PNG bytes), read from disk when the record points at a file."""
        if self.encoded_image is not None:
            return self.encoded_image
        assert self.image_path is not None
        return Path(self.image_path).read_bytes()

    def with_boxes(self, keep: np.ndarray, boxes: np.ndarray | None = None) -> "DetectionRecord":
        """A copy keeping only the boxes where `keep` is true (optionally with new coordinates)."""
        keep = np.asarray(keep, dtype=bool)
        new_boxes = self.boxes if boxes is None else np.asarray(boxes, np.float32)
        return dataclasses.replace(
            self,
            boxes=new_boxes[keep],
            class_ids=self.class_ids[keep],
            is_crowd=self.is_crowd[keep],
        )


def xyxy_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """``[xmin, ymin, xmax, ymax]`` (VOC, Pascal-style) to detkeeper's ``[ymin, xmin, ymax, xmax]``."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return boxes[:, [1, 0, 3, 2]]


def yxyx_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """detkeeper's ``[ymin, xmin, ymax, xmax]`` to ``[xmin, ymin, xmax, ymax]``."""
    return xyxy_to_yxyx(boxes)  # the swap is its own inverse


def xywh_to_yxyx(boxes: np.ndarray) -> np.ndarray:
    """COCO ``[x, y, width, height]`` to ``[ymin, xmin, ymax, xmax]``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x, y, w, h = boxes.T
    return np.stack([y, x, y + h, x + w], axis=1).astype(np.float32)


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
    """[0, 1] boxes to pixels."""
    scale = np.array([height, width, height, width], dtype=np.float64)
    return (np.asarray(boxes, np.float64).reshape(-1, 4) * scale).astype(np.float32)
