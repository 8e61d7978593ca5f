"""Writing TFRecords of ``tf.train.Example`` in the TF Object Detection API's format.

Every record becomes one example with the keys and dtypes :mod:`detkeeper.data.tfrecord` lists
(those of the API's ``create_pascal_tf_record.py`` / ``create_coco_tf_record.py``), boxes
normalized by the image's true size. Shards are named ``<prefix>-00000-of-00004`` and filled
round-robin (record ``i`` goes to shard ``i % num_shards``), as
``tf_record_creation_util.open_sharded_output_tfrecords`` and the API's converters do.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data.image_format import header_size, sniff_format
from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord, normalize_yxyx
from detkeeper.errors import DataError
from detkeeper.files import is_out_of_space, is_url, out_of_space


def shard_paths(output_prefix: str | os.PathLike, num_shards: int) -> list[Path]:
    """``<prefix>-00000-of-0000N`` names, as the TF OD API's sharding utility makes them."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    return [Path(f"{output_prefix}-{index:05d}-of-{num_shards:05d}") for index in range(num_shards)]


def write_tfrecords(records: Sequence[DetectionRecord], label_map: LabelMap,
                    output_prefix: str | os.PathLike, num_shards: int = 1) -> list[Path]:
    """Write `records` round-robin into `num_shards` shards; returns the shard paths.

    Each shard is written under a temporary name and renamed when all are complete, so a crash
    never leaves a shard that looks finished but is not.
    """
    if is_url(os.fspath(output_prefix)):
        raise DataError(f"{output_prefix}: detkeeper writes local files only (a write must be atomic: "
                        "temporary file + rename); write the shards locally and copy them to the store "
                        "(gsutil cp, gcloud storage cp)")
    paths = shard_paths(output_prefix, num_shards)
    stale = sorted(set(Path(p) for p in glob.glob(f"{glob.escape(str(output_prefix))}-?????-of-?????")) - set(paths))
    if stale:
        raise DataError(
            f"{output_prefix}: shards of another sharding already exist ({', '.join(p.name for p in stale[:3])}"
            f"{' ...' if len(stale) > 3 else ''}); a glob over the prefix would mix them with the new ones. "
            "Remove them or choose another output prefix.")
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    temporary: list[str] = []
    try:
        for path in paths:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            temporary.append(name)
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(tf.io.TFRecordWriter(name)) for name in temporary]
            for index, record in enumerate(records):
                writers[index % num_shards].write(record_to_example(record, label_map).SerializeToString())
        for name, path in zip(temporary, paths):
            _fsync(name)
            os.replace(name, path)
    except BaseException as error:
        for name in temporary:
            Path(name).unlink(missing_ok=True)
        if is_out_of_space(error):
            raise out_of_space(output_prefix, error, f"{num_shards} TFRecord shard(s)") from None
        raise
    return paths


def record_to_example(record: DetectionRecord, label_map: LabelMap) -> tf.train.Example:
    """One record as the API's converters build it; boxes normalized by the image's true size."""
    unknown = [int(c) for c in record.class_ids if not label_map.has_id(c)]
    if unknown:
        raise DataError(f"{record.source}: class id {unknown[0]} is not in the label map "
                        f"(ids: {label_map.ids})")
    try:
        encoded = record.read_encoded()
    except OSError as error:
        raise DataError(f"{record.source}: cannot read image {record.image_path} ({error})") from None
    image_format = sniff_format(encoded)
    if image_format is None:
        raise DataError(f"{record.source}: the image is not JPEG, PNG, GIF or BMP; "
                        "TensorFlow cannot decode it from a TFRecord")
    size = (record.height, record.width) if record.height and record.width else header_size(encoded)
    if size is None:
        raise DataError(f"{record.source}: the record declares no size and its image header cannot "
                        "be read, so its boxes cannot be normalized")
    height, width = size
    ymin, xmin, ymax, xmax = normalize_yxyx(record.boxes, height, width).T
    filename = record.image_path.name if record.image_path is not None else record.image_id
    zeros = [0] * record.num_boxes
    feature = {
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/filename": _bytes([filename.encode("utf-8")]),
        "image/source_id": _bytes([record.image_id.encode("utf-8")]),
        "image/key/sha256": _bytes([hashlib.sha256(encoded).hexdigest().encode("utf-8")]),
        "image/encoded": _bytes([encoded]),
        "image/format": _bytes([image_format.encode()]),
        "image/object/bbox/xmin": _floats(xmin),
        "image/object/bbox/xmax": _floats(xmax),
        "image/object/bbox/ymin": _floats(ymin),
        "image/object/bbox/ymax": _floats(ymax),
        "image/object/class/text": _bytes([label_map.item_of_id(c).name.encode("utf-8")
                                           for c in record.class_ids]),
        "image/object/class/label": _ints(record.class_ids.tolist()),
        "image/object/is_crowd": _ints(record.is_crowd.astype(np.int64).tolist()),
        "image/object/difficult": _ints(zeros),
        "image/object/truncated": _ints(zeros),
    }
    if not np.isnan(record.area).all():  # objects without one get their box's, as evaluation would
        feature["image/object/area"] = _floats(record.coco_areas())
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _fsync(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bytes(values: list[bytes]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values: list[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist()))
