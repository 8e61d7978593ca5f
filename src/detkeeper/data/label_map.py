"""`label_map.pbtxt` in the TF Object Detection API's format, and the class-id offset.

Label-map ids are 1-based and may have gaps (COCO's run 1..90 for 80 classes); a model predicts
contiguous 0-based indices. :class:`LabelMap` is the one place that converts between the two:
``index = position of the id in sorted order``. Everything on disk (annotations, TFRecords,
exports, COCO JSON) uses ids; only tensors inside a model use indices.

The file is parsed with protobuf's own text-format parser against the API's
``StringIntLabelMap`` message (rebuilt here from its ``.proto`` definition, so the Object
Detection API does not need to be installed), so comments, either quote style and the optional
fields (``keypoints``, ``frequency``, ...) behave exactly as in the API.
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from detkeeper.errors import DataError
from detkeeper.files import atomic_write_text, read_user_text


@lru_cache(maxsize=1)
def _label_map_message_class():
    """``object_detection.protos.StringIntLabelMap`` (string_int_label_map.proto), field for field."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="detkeeper_string_int_label_map.proto", package="detkeeper.object_detection.protos", syntax="proto2"
    )
    F = descriptor_pb2.FieldDescriptorProto
    keypoint = proto.message_type.add(name="LabelMapKeypoint")
    keypoint.field.add(name="id", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    keypoint.field.add(name="label", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    frequency = proto.enum_type.add(name="LVISFrequency")
    for number, name in enumerate(["UNSPECIFIED", "FREQUENT", "COMMON", "RARE"]):
        frequency.value.add(name=name, number=number)
    item = proto.message_type.add(name="StringIntLabelMapItem")
    item.field.add(name="name", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(name="id", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    item.field.add(name="display_name", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item.field.add(
        name="keypoints", number=4, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
        type_name=".detkeeper.object_detection.protos.LabelMapKeypoint",
    )
    item.field.add(name="ancestor_ids", number=5, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(name="descendant_ids", number=6, type=F.TYPE_INT32, label=F.LABEL_REPEATED)
    item.field.add(
        name="frequency", number=7, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
        type_name=".detkeeper.object_detection.protos.LVISFrequency",
    )
    item.field.add(name="instance_count", number=8, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    label_map = proto.message_type.add(name="StringIntLabelMap")
    label_map.field.add(
        name="item", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
        type_name=".detkeeper.object_detection.protos.StringIntLabelMapItem",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("detkeeper.object_detection.protos.StringIntLabelMap")
    return message_factory.GetMessageClass(descriptor)


@dataclasses.dataclass(frozen=True)
class LabelMapItem:
    id: int
    name: str
    display_name: str


class LabelMap:
    """Classes of a dataset: label-map ids (1-based, on disk) <-> contiguous indices (in models)."""

    def __init__(self, items: Iterable[LabelMapItem], source: str = "label map") -> None:
        items = sorted(items, key=lambda item: item.id)
        if not items:
            raise DataError(f"{source}: the label map has no classes")
        seen_names: dict[str, int] = {}
        for position, item in enumerate(items):
            if item.id < 1:
                raise DataError(
                    f"{source}: class {item.name!r} has id {item.id}; ids start at 1 "
                    "(0 is reserved for the background in the TF Object Detection API)"
                )
            if position and items[position - 1].id == item.id:
                raise DataError(f"{source}: id {item.id} is used by two classes "
                                f"({items[position - 1].name!r} and {item.name!r})")
            if not item.name:
                raise DataError(f"{source}: the class with id {item.id} has no name")
            if item.name in seen_names:
                raise DataError(f"{source}: name {item.name!r} is used by ids "
                                f"{seen_names[item.name]} and {item.id}")
            seen_names[item.name] = item.id
        self.items: tuple[LabelMapItem, ...] = tuple(items)
        self.source = source
        self._index_of_id = {item.id: index for index, item in enumerate(self.items)}
        self._id_of_name = seen_names

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Sequence[str], source: str = "class names") -> "LabelMap":
        """Ids 1..K in the order given (display names equal to names)."""
        return cls((LabelMapItem(i + 1, n, n) for i, n in enumerate(names)), source=source)

    @classmethod
    def from_pbtxt_text(cls, text: str, source: str = "label map") -> "LabelMap":
        message = _label_map_message_class()()
        try:
            text_format.Parse(text, message)
        except text_format.ParseError as error:
            raise DataError(f"{source}: not a valid label map ({error}). Expected entries like\n"
                            "  item { id: 1 name: 'cat' display_name: 'Cat' }") from None
        items = []
        for position, entry in enumerate(message.item, start=1):
            if not entry.HasField("id"):
                raise DataError(f"{source}: item {position} ({entry.name!r}) has no id")
            name = entry.name or entry.display_name
            items.append(LabelMapItem(entry.id, name, entry.display_name or name))
        return cls(items, source=source)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "LabelMap":
        text = read_user_text(path, "label map file")
        return cls.from_pbtxt_text(text, source=str(path))

    # --- output -------------------------------------------------------------------------------
    def to_pbtxt(self) -> str:
        message = _label_map_message_class()()
        for item in self.items:
            message.item.add(id=item.id, name=item.name, display_name=item.display_name)
        return text_format.MessageToString(message)

    def write(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, self.to_pbtxt())

    # --- lookups ------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[int]:
        return [item.id for item in self.items]

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.items]

    def id_of_name(self, name: str) -> int | None:
        """The id for `name` (matched against `name`, then `display_name`), or None."""
        if name in self._id_of_name:
            return self._id_of_name[name]
        for item in self.items:
            if item.display_name == name:
                return item.id
        return None

    def has_id(self, class_id: int) -> bool:
        return int(class_id) in self._index_of_id

    def item_of_id(self, class_id: int) -> LabelMapItem:
        return self.items[self._index_of_id[int(class_id)]]

    def ids_to_indices(self, class_ids: np.ndarray) -> np.ndarray:
        """Label-map ids -> contiguous 0-based model indices (the class-id offset lives here)."""
        class_ids = np.asarray(class_ids, dtype=np.int64)
        ids = np.asarray(self.ids, np.int64)  # sorted: an id's index is its position among them
        found = np.minimum(np.searchsorted(ids, class_ids), len(ids) - 1)
        unknown = class_ids[ids[found] != class_ids]
        if unknown.size:
            raise DataError(f"{self.source}: class id {int(unknown[0])} is not in the label map (ids: {self.ids})")
        return found.astype(np.int64)

    def indices_to_ids(self, indices: np.ndarray) -> np.ndarray:
        """Contiguous 0-based model indices -> label-map ids."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.num_classes):
            raise DataError(f"{self.source}: class index out of range 0..{self.num_classes - 1}")
        return np.asarray(self.ids, dtype=np.int64)[indices]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and self.items == other.items

    def __repr__(self) -> str:
        return f"LabelMap({', '.join(f'{i.id}:{i.name}' for i in self.items)})"
