"""TFRecords of ``tf.train.Example`` in the TF Object Detection API's format.

The keys and dtypes are those of the API's ``TfExampleDecoder.keys_to_features``
(``research/object_detection/data_decoders/tf_example_decoder.py``) as written by its
``create_pascal_tf_record.py`` / ``create_coco_tf_record.py``:

================================  =====  ================================================
key                               dtype  content
================================  =====  ================================================
image/encoded                     bytes  the JPEG/PNG file
image/format                      bytes  ``jpeg`` / ``png`` (decoder default ``jpeg``)
image/filename                    bytes  file name
image/source_id                   bytes  image id (detkeeper's ``image_id``; see below)
image/key/sha256                  bytes  hex digest of image/encoded
image/height, image/width         int64  image size in pixels (decoder default 1)
image/object/bbox/{y,x}{min,max}  float  box corners NORMALIZED to [0, 1] by the image size
image/object/class/label          int64  label-map id (1-based)
image/object/class/text           bytes  label-map name
image/object/is_crowd             int64  COCO crowd flag
image/object/area                 float  COCO annotation area in pixels (written when known)
image/object/difficult            int64  VOC difficult flag (written as 0)
image/object/truncated            int64  VOC truncated flag (written as 0; decoder skips it)
================================  =====  ================================================

``image/object/view`` (VOC pose) is not written: the decoder never reads it. When the decoder is
given a label map it maps ``class/text`` through it and uses ``class/label`` only as a fallback;
detkeeper reads ``class/label`` and stops with an error where the two disagree.

``image/source_id`` (else the file name, else ``file#position``) is the record's ``original_id``:
an int when it is a canonical decimal integer (``create_coco_tf_record.py`` writes COCO's ids so;
evaluation then orders them as numbers, as pycocotools does COCO's), else the string, as the API
treats it. ``image/object/area`` (the COCO converter writes each annotation's area) is kept.

Writing them is :mod:`detkeeper.data.tfrecord_writer`. Reader problems follow :class:`Readout`:
what is named is left out.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from detkeeper.data.columns import RecordColumns
from detkeeper.data.dataset_options import tfrecord_dataset
from detkeeper.data.image_format import header_size
from detkeeper.data.index import FilePart, indexed_parts
from detkeeper.data.label_map import LabelMap, LabelMapItem
from detkeeper.data.problems import Problem
from detkeeper.data.readout import Readout
from detkeeper.data.record import ByteSpan, DetectionRecord, denormalize_yxyx
from detkeeper.errors import DataError
from detkeeper.files import is_url

_BOX_KEYS = ("image/object/bbox/ymin", "image/object/bbox/xmin",
             "image/object/bbox/ymax", "image/object/bbox/xmax")
#: ``image/source_id`` values read as integers: canonical decimal ones that fit in an int64.
_CANONICAL_INT = re.compile(r"0|[1-9][0-9]{0,17}")


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Files named by a path, a glob, a comma-separated string of them, or a sequence of those;
    without duplicates, local files first (absolute, sorted as paths), then URLs (sorted). A pattern
    that matches no file is an error, not an empty list.

    A URL (``gs://``, ``s3://``, ``ram://``: whatever tf.io.gfile reads) is globbed by
    ``tf.io.gfile.glob`` and kept as the string it is: a :class:`Path` would make ``gs://b/x``
    ``gs:/b/x``. As in the TF OD API's input reader, what the glob returns is taken as it is; a
    folder among it is refused when it is read (:func:`detkeeper.data.index.file_identity`)."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    found: set[str] = set()
    for item in items:
        parts = item.split(",") if isinstance(item, str) else [os.fspath(item)]
        for pattern in (part.strip() for part in parts):
            if not pattern:
                continue
            if is_url(pattern):
                files = _url_matches(pattern)
            else:
                pattern = os.path.expanduser(pattern)
                matches = [pattern] if os.path.isfile(pattern) else glob.glob(pattern)
                files = [os.path.abspath(match) for match in matches if os.path.isfile(match)]
            if not files:
                raise DataError(f"no TFRecord file matches {pattern!r}")
            found.update(files)
    if not found:
        raise DataError(f"no TFRecord files given ({paths!r})")
    urls = sorted(file for file in found if is_url(file))
    return sorted(found - set(urls), key=Path) + urls  # local files in Path's order: the records' order as before


def _url_matches(pattern: str) -> list[str]:
    """What ``tf.io.gfile.glob`` finds for `pattern`; a store that cannot be listed is a DataError."""
    try:
        return list(tf.io.gfile.glob(pattern))
    except tf.errors.OpError as error:
        raise DataError(f"cannot list {pattern!r} ({error.message.strip().splitlines()[0]})") from None


def read_tfrecords(paths: str | os.PathLike | Sequence[str | os.PathLike],
                   label_map: LabelMap | None = None, *, check_images: bool = False,
                   progress: Callable[[int], None] | None = None) -> Readout:
    """Records of TF OD API TFRecords, boxes in pixels, each image left in its file (a
    :class:`ByteSpan` of the shard), as :class:`RecordColumns`: memory grows by a few dozen bytes a
    record and with the boxes, not with the images.

    Shards are read side by side, through the dataset index (:mod:`detkeeper.data.index`): a
    shard read before, unchanged, is not read again. With `check_images` every image is opened
    in the same pass (and the readout's ``checked`` says what was found). Without `label_map`
    one is derived from the (class/label, class/text) pairs of the files. A damaged file keeps the
    records before the damage and is reported as ``corrupt_record``.
    """
    parts = indexed_parts(expand_paths(paths), lambda file: read_tfrecord_file(file, label_map), label_map,
                          check_images=check_images, progress=progress)
    problems: list[Problem] = []
    checked: list[Problem] | None = [] if all(part.checked is not None for part in parts) else None
    texts_of_label: dict[int, set[str]] = {}
    first_record = 0
    for part in parts:
        problems += _shifted(part.problems, first_record)
        if checked is not None:
            checked += _shifted(part.checked, first_record)
        first_record += len(part.records)
        for label, texts in part.texts_of_label.items():
            texts_of_label.setdefault(label, set()).update(texts)
    if label_map is None:
        if not first_record and problems:  # nothing readable to take class names from: say why, not "no classes"
            raise DataError(f"no record could be read, so no label map can be derived from them: "
                            f"{'; '.join(str(problem) for problem in problems[:3])}"
                            f"{' ...' if len(problems) > 3 else ''}. Give the label map they were made with "
                            "(--label-map, data.label_map) to have every problem counted.")
        label_map = _derived_label_map(texts_of_label)
    return Readout(RecordColumns.concatenate([part.records for part in parts]), label_map, problems, checked)


def _shifted(problems: list[Problem], first_record: int) -> list[Problem]:
    """A file's problems with ``record_index`` counting in the list its records start at `first_record` of."""
    return [problem if problem.record_index is None or not first_record
            else dataclasses.replace(problem, record_index=problem.record_index + first_record)
            for problem in problems]


def read_tfrecord_file(file: str, label_map: LabelMap | None) -> FilePart:
    """One shard's records and problems (``record_index`` counting within the shard)."""
    records: list[DetectionRecord] = []
    problems: list[Problem] = []
    texts_of_label: dict[int, set[str]] = {}
    for number, (raw, offset) in enumerate(_framed_records(file)):
        if isinstance(raw, _Damage):
            problems.append(Problem("corrupt_record", f"{file}#{number}", raw.detail))
            break
        source = f"{file}#{number}"
        try:
            example = _parse(raw, source)
            class_ids = _class_ids(example, label_map, source)
        except _Unusable as error:
            problems.append(Problem(error.kind, source, str(error), error.image_id))
            continue
        if label_map is None:
            _collect_texts(example, texts_of_label, source)
        keep = np.ones(len(class_ids), bool)
        for box_index, class_id in enumerate(class_ids):
            if label_map is not None and not label_map.has_id(class_id):
                keep[box_index] = False
                text = f" ({example.texts[box_index]!r})" if example.texts else ""
                problems.append(Problem("unknown_class", source,
                                        f"class {class_id}{text} is not in the label map; box left out",
                                        example.image_id, len(records), box_index))
        # The image's bytes lie verbatim in the serialized example (protobuf stores bytes as they are).
        span = ByteSpan(file, offset + raw.find(example.encoded), len(example.encoded), zlib.crc32(example.encoded))
        records.append(DetectionRecord(
            image_id=str(example.original_id), boxes=example.boxes[keep], class_ids=class_ids[keep],
            is_crowd=example.is_crowd[keep], source=source, image_span=span,
            width=example.width, height=example.height, area=example.area[keep],
            original_id=example.original_id))
    return FilePart(records, problems, texts_of_label)


@dataclasses.dataclass(frozen=True)
class _Damage:
    """Why a file's records stop being readable at this record."""

    detail: str


#: A TFRecord frames each record as uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
_HEADER_BYTES, _FOOTER_BYTES = 12, 4


def _framed_records(file: str):
    """``(serialized record, offset of its data in the file)`` in file order, read one at a time
    (TensorFlow checks every CRC); a :class:`_Damage` in place of the first unreadable record."""
    offset = _HEADER_BYTES
    number = 0
    try:
        for raw in tfrecord_dataset(file).as_numpy_iterator():
            yield raw, offset
            offset += len(raw) + _FOOTER_BYTES + _HEADER_BYTES
            number += 1
    except tf.errors.DataLossError as error:
        found = re.search(r"(corrupted|truncated) record at \d+( \(Is this even a TFRecord file\?\))?",
                          error.message)
        reason = found.group(0) if found else error.message.splitlines()[0]
        yield _Damage(f"cannot read record {number} or any after it ({reason}); "
                      f"the {number} record(s) before it are kept"), offset
    except tf.errors.OpError as error:
        raise DataError(f"{file}: cannot read the TFRecord file ({error.message})") from None


@dataclasses.dataclass(frozen=True)
class _Example:
    """The fields detkeeper uses from one tf.train.Example, boxes already in pixels."""

    image_id: str
    encoded: bytes
    width: int | None
    height: int | None
    boxes: np.ndarray
    labels: list[int]
    texts: list[str]
    is_crowd: np.ndarray
    area: np.ndarray  # NaN where not given
    original_id: int | str


class _Unusable(Exception):
    """A record that cannot be produced: the problem `kind` and the image id it names."""

    def __init__(self, detail: str, image_id: str | None = None, kind: str = "malformed_annotation") -> None:
        super().__init__(detail)
        self.image_id = image_id
        self.kind = kind


def _parse(raw: bytes, source: str) -> _Example:
    """The fields of one serialized example; raises _Unusable when no record can be built from it."""
    try:
        features = tf.train.Example.FromString(raw).features.feature
    except DecodeError as error:
        raise _Unusable(f"not a tf.train.Example ({error})") from None
    source_id = _bytes_text(_scalar(features, "image/source_id", "bytes_list"))
    filename = _bytes_text(_scalar(features, "image/filename", "bytes_list"))
    image_id = source_id or filename or source
    encoded = _scalar(features, "image/encoded", "bytes_list", image_id)
    if encoded is None:
        raise _Unusable("no image/encoded: the example carries no image", image_id)
    height = _scalar(features, "image/height", "int64_list", image_id)
    width = _scalar(features, "image/width", "int64_list", image_id)
    if (height is not None and height < 1) or (width is not None and width < 1):
        raise _Unusable(f"image size {width}x{height} (WxH) is not positive", image_id)
    corners = [_values(features, key, "float_list", image_id) for key in _BOX_KEYS]
    labels = _values(features, "image/object/class/label", "int64_list", image_id)
    texts = [_bytes_text(t) for t in _values(features, "image/object/class/text", "bytes_list", image_id)]
    crowd = _values(features, "image/object/is_crowd", "int64_list", image_id)
    area = _values(features, "image/object/area", "float_list", image_id)
    count = len(corners[0])
    lengths = {key: len(values) for key, values in zip(_BOX_KEYS, corners)}
    lengths.update({"image/object/class/label": len(labels), "image/object/class/text": len(texts),
                    "image/object/is_crowd": len(crowd), "image/object/area": len(area)})
    # The class, crowd and area lists may be absent (length 0); present, they have one value per box.
    uneven = {key: n for key, n in lengths.items() if n != count and (n or key in _BOX_KEYS)}
    if uneven:
        listing = ", ".join(f"{key}: {n}" for key, n in lengths.items())
        raise _Unusable(f"per-object lists differ in length ({listing})", image_id)
    areas = np.asarray(area, np.float64) if area else np.full(count, np.nan)
    if area and not (np.isfinite(areas) & (areas >= 0)).all():
        raise _Unusable(f"image/object/area must be finite and >= 0 (pixels), found {area}", image_id)
    boxes = np.asarray(corners, np.float32).T
    if count:
        size = (height, width) if height and width else header_size(encoded)
        if size is None:
            raise _Unusable("no image/height and image/width, and the image header cannot be read, so "
                            "the normalized boxes cannot be converted to pixels", image_id, "corrupt_image")
        boxes = denormalize_yxyx(boxes, *size)
    return _Example(image_id, encoded, width, height, boxes, labels, texts,
                    np.asarray(crowd, bool) if crowd else np.zeros(count, bool), areas,
                    int(source_id) if _CANONICAL_INT.fullmatch(source_id) else image_id)


def _class_ids(example: _Example, label_map: LabelMap | None, source: str) -> np.ndarray:
    """Ids from class/label; from class/text through the label map when labels are absent."""
    count = len(example.boxes)
    if example.labels or not count:
        ids = np.asarray(example.labels, np.int64)
    elif label_map is not None and example.texts:
        ids = np.asarray([label_map.id_of_name(t) or 0 for t in example.texts], np.int64)
    else:
        raise _Unusable("objects have no image/object/class/label (with data.label_map set, "
                        "image/object/class/text would be mapped through it)", example.image_id)
    if label_map is not None and example.labels and example.texts:
        for label, text in zip(ids.tolist(), example.texts):
            text_id = label_map.id_of_name(text)
            if text_id is not None and label_map.has_id(label) and text_id != label:
                raise DataError(
                    f"{source}: an object has class/label {label} and class/text {text!r}, but "
                    f"{label_map.source} gives {text!r} id {text_id} and id {label} to "
                    f"{label_map.item_of_id(label).name!r}. The TF OD API would train it as "
                    f"{text_id} (it maps the text); check that data.label_map is the label map "
                    "these TFRecords were made with.")
    return ids


def _collect_texts(example: _Example, texts_of_label: dict[int, set[str]], source: str) -> None:
    if len(example.boxes) and not example.texts:
        raise DataError(f"{source}: objects have no image/object/class/text, so class names cannot "
                        "be derived from the TFRecords; set data.label_map to the label map "
                        "these TFRecords were made with.")
    for label, text in zip(example.labels, example.texts):
        texts_of_label.setdefault(label, set()).add(text)


def _derived_label_map(texts_of_label: dict[int, set[str]]) -> LabelMap:
    """The label map the (label, text) pairs imply; any ambiguity needs the user's label map."""
    hint = "set data.label_map to the label map these TFRecords were made with."
    labels_of_text: dict[str, list[int]] = {}
    for label, texts in sorted(texts_of_label.items()):
        if len(texts) > 1:
            raise DataError(f"TFRecords give class/label {label} several class/text values "
                            f"({', '.join(sorted(map(repr, texts)))}); {hint}")
        labels_of_text.setdefault(next(iter(texts)), []).append(label)
    for text, labels in labels_of_text.items():
        if len(labels) > 1:
            raise DataError(f"TFRecords give class/text {text!r} several class/label values {labels}; {hint}")
    items = [LabelMapItem(label, text, text) for text, (label,) in labels_of_text.items()]
    return LabelMap(items, source="the class/label and class/text pairs of the TFRecords")


def _scalar(features: Mapping[str, tf.train.Feature], key: str, kind: str,
            image_id: str | None = None) -> bytes | int | float | None:
    """The single value of `key` (FixedLenFeature in the decoder), None when absent."""
    values = _values(features, key, kind, image_id)
    if len(values) > 1:
        raise _Unusable(f"{key} has {len(values)} values; the TF OD API reads exactly one", image_id)
    return values[0] if values else None


def _values(features: Mapping[str, tf.train.Feature], key: str, kind: str,
            image_id: str | None = None) -> list:
    """The values of `key` (VarLenFeature in the decoder), [] when absent; a wrong dtype is malformed."""
    if key not in features:
        return []
    found = features[key].WhichOneof("kind")
    if found not in (None, kind):
        raise _Unusable(f"{key} is a {found}; the TF OD API reads it as a {kind}", image_id)
    return list(getattr(features[key], kind).value)


def _bytes_text(value: bytes | None) -> str:
    return value.decode("utf-8", "backslashreplace") if value else ""
