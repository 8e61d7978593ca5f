"""The tf.data input pipeline: records -> decoded, augmented, resized, padded batches.

Determinism is by construction: the order of epoch ``e`` is a permutation drawn statelessly from
``(seed, e)``, and every example's augmentation is drawn from ``(seed, e, position in epoch)``
(a mosaic's partner records too: :mod:`detkeeper.data.mosaic`).
So batch ``k`` of a run is a pure function of ``(records, seed, k)``: a run resumed at step ``k``
(:func:`training_dataset` with ``start_step=k``) sees exactly the batches the uninterrupted run
would have, and decoding in parallel threads changes nothing.

A batch is a dict:

* ``images``: float32 ``[B, S, S, 3]``, RGB 0..255, content at the top-left, zero padding;
* ``boxes``: float32 ``[B, M, 4]`` yxyx in model-input pixels, padded with -1;
* ``classes``: int32 ``[B, M]`` contiguous class indices (see :class:`LabelMap`), padded with -1;
* ``num_boxes``: int32 ``[B]``; ``image_ids``: string ``[B]``;
* ``image_scales``: float32 ``[B, 2]``, model pixels per original pixel ``(fy, fx)``;
* ``image_sizes``: int32 ``[B, 2]``, original ``(height, width)``.

Crowd regions are not trained on (they are kept in the records for COCO evaluation).

The functions given to ``map`` are traced as written, without AutoGraph (``do_not_convert``):
they have no Python control flow on tensors, and converting them cost about a second of CPU at
every start. Keras 3 converts none of a model's code either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Iterator, Sequence

import numpy as np
import tensorflow as tf

from detkeeper.data import augment, mosaic
from detkeeper.data.image_format import decode_rgb
from detkeeper.data.columns import RecordColumns, box_counts
from detkeeper.data.dataset_options import decoding_calls, untuned_options
from detkeeper.data.label_map import LabelMap
from detkeeper.data.index import forget
from detkeeper.data.record import ByteSpan, ChangedSinceRead, DetectionRecord
from detkeeper.errors import DataError, wrapped_data_error

_SEED_SALT = 0x5EED


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The training-time random transforms (mirrors ``data.augment`` in the config)."""

    horizontal_flip: bool = True
    scale_jitter: tuple[float, float] = (0.75, 1.25)
    colour_jitter: float = 0.1
    vertical_flip: bool = False
    rotate_90: bool = False
    mosaic: float = 0.0

    @classmethod
    def from_config(cls, config) -> "Augmentation":
        return cls(bool(config.horizontal_flip), tuple(config.scale_jitter), float(config.colour_jitter),
                   bool(config.vertical_flip), bool(config.rotate_90), float(config.mosaic))


@dataclasses.dataclass(frozen=True)
class InputShard:
    """The part of every global batch one input pipeline makes under ``tf.distribute``.

    Pipeline `index` of `count` (one per worker) makes the `index`-th of `count` equal slices of
    each global batch, as consecutive batches of `replica_batch_size` (one per local replica).
    Together the pipelines make exactly the global batches one pipeline would, and no pipeline
    decodes another's images (the slicing happens on record indices, before decoding).
    """

    index: int
    count: int
    replica_batch_size: int

    @classmethod
    def from_input_context(cls, context: tf.distribute.InputContext, global_batch_size: int) -> "InputShard":
        return cls(context.input_pipeline_id, context.num_input_pipelines,
                   context.get_per_replica_batch_size(global_batch_size))

    def slice_of(self, global_batch_size: int) -> tuple[int, int]:
        if global_batch_size % self.count or (global_batch_size // self.count) % self.replica_batch_size:
            raise ValueError(f"a global batch of {global_batch_size} does not split into {self.count} pipelines "
                             f"of batches of {self.replica_batch_size}")
        size = global_batch_size // self.count
        return self.index * size, (self.index + 1) * size


class _RecordTensors:
    """The records as flat tensors that a tf.data map function can index by position.

    Images stay where the records say they are (a file, a span of a TFRecord shard, or bytes made
    in memory) and are read when a record is loaded: memory grows with the boxes, not the images.
    """

    def __init__(self, records: Sequence[DetectionRecord], label_map: LabelMap) -> None:
        if not records:
            raise ValueError("the input pipeline needs at least one record")
        if isinstance(records, RecordColumns):  # a TFRecord split: every column is there already
            files, file_index, offsets, lengths = records.files, records.file_index, records.offsets, records.lengths
            crcs, inline, image_ids = records.crcs, None, records.image_ids.astype(object)
            counts, is_crowd, boxes, class_ids = records.box_counts, records.is_crowd, records.boxes, records.class_ids
        else:
            files, file_index, offsets, lengths, crcs, inline = _locations(records)
            image_ids = [record.image_id for record in records]
            counts = box_counts(records)
            is_crowd, boxes, class_ids = (np.concatenate([getattr(record, field) for record in records])
                                          for field in ("is_crowd", "boxes", "class_ids"))
        self.count = len(records)
        self.files = tf.constant(list(files) or [""], tf.string)
        self.file_index = tf.constant(file_index, tf.int32)
        self.offsets = tf.constant(offsets, tf.int64)
        self.lengths = tf.constant(lengths, tf.int64)
        self.crcs = tf.constant(crcs, tf.int64)
        self.read_span = functools.partial(_read_span, label_map)
        # Bytes made in memory (tests, generated records); a dataset read from disk has none.
        self.inline = tf.constant(inline, tf.string) if inline is not None and any(inline) else None
        self.image_ids = tf.constant(image_ids, tf.string)
        # Every box of every record at once; crowd regions are not trained on.
        trained = ~is_crowd
        trained_before = np.concatenate([[0], np.cumsum(trained)])  # trained boxes before each box
        self.row_splits = tf.constant(trained_before[np.concatenate([[0], np.cumsum(counts)])], tf.int64)
        # Cast by NumPy: tf.constant's own cast of a split's float64 boxes is 40x slower.
        self.boxes = tf.constant(boxes.reshape(-1, 4)[trained].astype(np.float32))
        self.classes = tf.constant(label_map.ids_to_indices(class_ids[trained]).astype(np.int32), tf.int32)

    def encoded(self, index: tf.Tensor) -> tf.Tensor:
        """The encoded image of record `index`: its file, its span of a file, or its bytes."""
        file = self.file_index[index]
        path = self.files[tf.maximum(file, 0)]
        offset, length, crc = self.offsets[index], self.lengths[index], self.crcs[index]

        def from_disk():
            return tf.cond(length < 0, lambda: tf.io.read_file(path),
                           lambda: tf.ensure_shape(tf.numpy_function(self.read_span, [path, offset, length, crc],
                                                                     tf.string, stateful=False), []))

        if self.inline is None:
            return from_disk()
        return tf.cond(file < 0, lambda: self.inline[index], from_disk)

    def example(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Decoded RGB image (float32), boxes, classes and image id of record `index`."""
        image = decode_rgb(self.encoded(index))
        start, end = self.row_splits[index], self.row_splits[index + 1]
        return (tf.cast(image, tf.float32), self.boxes[start:end], self.classes[start:end],
                self.image_ids[index])


def _locations(records: Sequence[DetectionRecord]) -> tuple[list[str], list[int], list[int], list[int], list[int],
                                                             list[bytes]]:
    """Where each record's image is: the files, each record's file (-1: none, its bytes are inline),
    byte offset and length there (-1: the whole file), the crc32 of a span's bytes (-1: not known),
    and its inline bytes (empty when on disk)."""
    files: dict[str, int] = {}
    file_index, offsets, lengths, crcs, inline = [], [], [], [], []
    for record in records:
        span = record.image_span
        path = span.path if span is not None else record.image_path
        file_index.append(files.setdefault(str(path), len(files)) if path is not None else -1)
        offsets.append(span.offset if span is not None else 0)
        lengths.append(span.length if span is not None else -1)
        crcs.append(-1 if span is None or span.crc32 is None else span.crc32)
        inline.append(record.encoded_image or b"")
    return list(files), file_index, offsets, lengths, crcs, inline


def _read_span(label_map: LabelMap, path: bytes, offset: np.int64, length: np.int64, crc: np.int64) -> bytes:
    """A span of a file, for tf.numpy_function: TensorFlow has no op that reads part of a file
    without reading what comes before it (FixedLengthRecordDataset skips by reading).

    A file that now ends before the span, or holds other bytes there than when it was indexed, is a
    DataError naming it (:func:`data_errors` raises it as itself); a rewritten one's index entries
    are removed first, so the next start reads it again instead of trusting them."""
    span = ByteSpan(path.decode("utf-8"), int(offset), int(length), None if crc < 0 else int(crc))
    try:
        return span.read()
    except ChangedSinceRead as error:
        forget(span.path, label_map)
        raise DataError(f"{error}. Stopped before training on it; its dataset index entry was removed, so the "
                        "next start reads the file again.") from None
    except OSError as error:
        raise DataError(f"{span.path}: cannot read the image at {span.describe()} ({error}). Stopped before training "
                        "on it; run again to read the dataset anew.") from None


@contextlib.contextmanager
def data_errors() -> Iterator[None]:
    """Around code that iterates the pipeline (Keras fit): a DataError raised while reading a record
    (:func:`_read_span`) arrives as a TensorFlow error holding its message; it is raised as the
    DataError it was, which names the file, instead of TensorFlow's error and traceback."""
    try:
        yield
    except tf.errors.OpError as error:
        wrapped = wrapped_data_error(error.message)
        if wrapped is None:
            raise
        raise wrapped from None


def epoch_order(num_records: int, seed: int, epoch: int) -> tf.Tensor:
    """The record order of one epoch: a permutation drawn statelessly from ``(seed, epoch)``."""
    keys = tf.random.stateless_uniform([num_records], seed=tf.stack(
        [tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return tf.argsort(keys, stable=True)


def _example_seed(seed: int, epoch: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    base = tf.constant([seed, _SEED_SALT], tf.int64)
    per_epoch = tf.random.experimental.stateless_fold_in(base, epoch)
    return tf.random.experimental.stateless_fold_in(per_epoch, position)


def _finish(image, boxes, classes, keep, image_id, image_size, factors, max_boxes):
    """Drop boxes cropped away, pad to `max_boxes`, and package one example."""
    boxes = tf.boolean_mask(boxes, keep)[:max_boxes]
    classes = tf.boolean_mask(classes, keep)[:max_boxes]
    count = tf.shape(boxes)[0]
    padding = max_boxes - count
    return {
        "images": image,
        "boxes": tf.pad(boxes, [[0, padding], [0, 0]], constant_values=-1.0),
        "classes": tf.pad(classes, [[0, padding]], constant_values=-1),
        "num_boxes": count,
        "image_ids": image_id,
        "image_scales": tf.cast(factors, tf.float32),
        "image_sizes": tf.cast(image_size, tf.int32),
    }


def training_dataset(records: Sequence[DetectionRecord], label_map: LabelMap, *, image_size: int,
                     batch_size: int, max_boxes: int, augmentation: Augmentation | None, seed: int,
                     start_step: int = 0, shard: InputShard | None = None,
                     resize: augment.Resize = augment.Resize()) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented batches; batch ``k`` depends only on ``(seed, k)``.

    `start_step` skips the first batches cheaply (on record indices, before any decoding), so a
    resumed run continues with the batch it would have seen next. With `shard` this pipeline makes
    only its slice of each global batch of `batch_size` (see :class:`InputShard`); every example
    keeps the augmentation it has without sharding.
    """
    tensors = _RecordTensors(records, label_map)
    count = tensors.count
    first_example = start_step * batch_size
    start_epoch, skip_in_epoch = divmod(first_example, count)

    @tf.autograph.experimental.do_not_convert
    def epoch_indices(epoch: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(count, seed, epoch)
        positions = tf.range(count, dtype=tf.int64)
        epochs = tf.fill([count], epoch)
        return tf.data.Dataset.from_tensor_slices((epochs, positions, tf.cast(order, tf.int64)))

    @tf.autograph.experimental.do_not_convert
    def load(epoch, position, index):
        image, boxes, classes, image_id = tensors.example(index)
        original_size = tf.shape(image)[:2]  # of the example's own image, for a mosaic too
        if augmentation is None:
            image, boxes, keep, factors = augment.resize_for_model(image, boxes, image_size, resize)
            return _finish(image, boxes, classes, keep, image_id, original_size, factors, max_boxes)
        example_seed = _example_seed(seed, epoch, position)
        settings = dict(horizontal_flip=augmentation.horizontal_flip, vertical_flip=augmentation.vertical_flip,
                        rotate_90=augmentation.rotate_90, scale_range=augmentation.scale_jitter,
                        colour_strength=augmentation.colour_jitter, resize=resize)

        def single():
            augmented, moved, keep, factors = augment.random_augment(image, boxes, image_size, seed=example_seed,
                                                                     **settings)
            return augmented, moved, classes, keep, factors

        def four():  # decodes three more images
            return mosaic.random_mosaic((image, boxes, classes), lambda i: tensors.example(i)[:3], count, image_size,
                                        seed=example_seed, pad_value=resize.pad_value,
                                        transform=functools.partial(augment.random_content, output_size=image_size,
                                                                    **settings))

        if augmentation.mosaic > 0:  # a Python float: without mosaic the graph is the one before it
            image, boxes, classes, keep, factors = tf.cond(mosaic.chosen(example_seed, augmentation.mosaic),
                                                           four, single)
        else:
            image, boxes, classes, keep, factors = single()
        return _finish(image, boxes, classes, keep, image_id, original_size, factors, max_boxes)

    indices = (tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
               .flat_map(epoch_indices)
               .skip(skip_in_epoch))
    if shard is not None:
        first, end = shard.slice_of(batch_size)
        indices = (indices.batch(batch_size, drop_remainder=True)
                   .map(tf.autograph.experimental.do_not_convert(
                       lambda epochs, positions, order: (epochs[first:end], positions[first:end], order[first:end])))
                   .unbatch())
        batch_size = shard.replica_batch_size
    dataset = (indices
               .map(load, num_parallel_calls=decoding_calls(), deterministic=True)
               .batch(batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_deterministic_options())


def evaluation_dataset(records: Sequence[DetectionRecord], label_map: LabelMap, *, image_size: int,
                       batch_size: int, max_boxes: int, resize: augment.Resize = augment.Resize()
                       ) -> tf.data.Dataset:
    """One pass over `records` in order, resized for the model, no augmentation; last batch may be short."""
    tensors = _RecordTensors(records, label_map)

    @tf.autograph.experimental.do_not_convert
    def load(index):
        image, boxes, classes, image_id = tensors.example(index)
        original_size = tf.shape(image)[:2]
        image, boxes, keep, factors = augment.resize_for_model(image, boxes, image_size, resize)
        return _finish(image, boxes, classes, keep, image_id, original_size, factors, max_boxes)

    dataset = (tf.data.Dataset.range(tensors.count)
               .map(load, num_parallel_calls=decoding_calls(), deterministic=True)
               .batch(batch_size)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_deterministic_options())


def evaluation_steps(num_records: int, global_batch_size: int) -> int:
    """Global batches a sharded evaluation pass takes (the last one padded)."""
    return -(-num_records // global_batch_size)


def sharded_evaluation_dataset(records: Sequence[DetectionRecord], label_map: LabelMap, *, image_size: int,
                               batch_size: int, max_boxes: int, shard: InputShard,
                               resize: augment.Resize = augment.Resize()) -> tf.data.Dataset:
    """One pass over `records` in global batches of `batch_size`, this pipeline's slice of each.

    The last global batch is padded to full size (with copies of record 0) so every replica runs
    the same number of equal steps, as collective ops need. Each example carries
    ``record_index``: its position in `records`, -1 for padding.
    """
    tensors = _RecordTensors(records, label_map)
    total = evaluation_steps(tensors.count, batch_size) * batch_size
    first, end = shard.slice_of(batch_size)

    @tf.autograph.experimental.do_not_convert
    def load(index):
        real = index < tensors.count
        image, boxes, classes, image_id = tensors.example(tf.where(real, index, 0))
        original_size = tf.shape(image)[:2]
        image, boxes, keep, factors = augment.resize_for_model(image, boxes, image_size, resize)
        example = _finish(image, boxes, classes, keep, image_id, original_size, factors, max_boxes)
        example["record_index"] = tf.where(real, tf.cast(index, tf.int32), -1)
        return example

    dataset = (tf.data.Dataset.range(total)
               .batch(batch_size)
               .map(tf.autograph.experimental.do_not_convert(lambda indices: indices[first:end]))
               .unbatch()
               .map(load, num_parallel_calls=decoding_calls(), deterministic=True)
               .batch(shard.replica_batch_size, drop_remainder=True)
               .prefetch(tf.data.AUTOTUNE))
    return dataset.with_options(_deterministic_options())


def _deterministic_options() -> tf.data.Options:
    """Deterministic order; each pipeline op single-threaded (parallelism comes from the map),
    so decoding does not oversubscribe the cores the model's training step runs on; no autotuning
    thread to wait for when an iterator is dropped (:mod:`detkeeper.data.dataset_options`)."""
    options = untuned_options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return options
