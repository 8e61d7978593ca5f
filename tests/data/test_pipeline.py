"""The tf.data pipeline: deterministic order and augmentation, exact resume, correct targets."""

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.data import augment, mosaic, pipeline
from detkeeper.data.image_format import decode_rgb
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import Augmentation, InputShard, epoch_order, evaluation_dataset, training_dataset
from detkeeper.data.record import DetectionRecord
from detkeeper.data.tfrecord import read_tfrecords
from detkeeper.data.tfrecord_writer import write_tfrecords

LABELS = LabelMap.from_names(["a", "b"])


def _png(height, width, value):
    buffer = io.BytesIO()
    Image.fromarray(np.full([height, width, 3], value, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _records(folder):
    made = []
    for i in range(10):
        height, width = 40 + 4 * i, 60 - 2 * i
        path = folder / f"img{i}.png"
        path.write_bytes(_png(height, width, 10 * i))
        made.append(DetectionRecord(
            image_id=f"img{i}", boxes=[[2, 3, 20, 30], [5, 5, 15, 25]], class_ids=[1, 2],
            is_crowd=[False, i == 0], source=str(path), image_path=path, width=width, height=height))
    return made


@pytest.fixture
def records(tmp_path):
    return _records(tmp_path)


@pytest.fixture(scope="module")
def module_records(tmp_path_factory):
    """The same records, shared by the mosaic tests: a mosaic pipeline takes about 1.5 s to trace."""
    return _records(tmp_path_factory.mktemp("records"))


@pytest.fixture(scope="module")
def mosaic_stream(module_records):
    """The first 10 batches of the uninterrupted run with mosaic 1.0 (4 epochs of the 10 records)."""
    return _batches(_train(module_records, augmentation=MOSAIC), 10)


def _batches(dataset, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(count)]


def _assert_batches_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


MOSAIC = Augmentation(colour_jitter=0.2, mosaic=1.0)


def _train(records, seed=1, start_step=0, augmentation=Augmentation(colour_jitter=0.2)):
    return training_dataset(records, LABELS, image_size=32, batch_size=4, max_boxes=5,
                            augmentation=augmentation, seed=seed, start_step=start_step)


def test_batches_have_the_static_shape_a_model_is_built_for(records):
    """[B, S, S, 3]: a first convolution fed images of unknown channels takes Keras' XLA path for
    grouped convolutions (keras.src.backend.tensorflow.nn.conv), compiled in every training process."""
    assert _train(records).element_spec["images"].shape.as_list() == [4, 32, 32, 3]
    assert _train(records, augmentation=None).element_spec["images"].shape.as_list() == [4, 32, 32, 3]
    evaluation = evaluation_dataset(records, LABELS, image_size=32, batch_size=4, max_boxes=5)
    assert evaluation.element_spec["images"].shape.as_list() == [None, 32, 32, 3]


def test_no_pipeline_starts_tf_datas_autotuning_thread(records):
    """Dropping an iterator can wait up to a minute for that thread in TensorFlow 2.21
    (detkeeper/data/dataset_options.py); every validation pass and evaluation drops one."""
    datasets = {
        "training": _train(records),
        "evaluation": evaluation_dataset(records, LABELS, image_size=32, batch_size=4, max_boxes=5),
        "sharded evaluation": pipeline.sharded_evaluation_dataset(records, LABELS, image_size=32, batch_size=4,
                                                                  max_boxes=5, shard=InputShard(0, 2, 2)),
    }
    assert {name: dataset.options().autotune.enabled for name, dataset in datasets.items()} == dict.fromkeys(
        datasets, False)
    assert {name: dataset.options().deterministic for name, dataset in datasets.items()} == dict.fromkeys(
        datasets, True)


def test_same_seed_gives_identical_batches(records):
    _assert_batches_equal(_batches(_train(records), 6), _batches(_train(records), 6))


def test_other_seed_gives_other_order(records):
    ids_one = [b["image_ids"].tolist() for b in _batches(_train(records, seed=1), 3)]
    ids_two = [b["image_ids"].tolist() for b in _batches(_train(records, seed=2), 3)]
    assert ids_one != ids_two


@pytest.mark.parametrize("start_step", [1, 3, 7])
def test_resume_at_a_step_sees_the_batches_of_the_uninterrupted_run(records, start_step):
    full = _batches(_train(records), start_step + 3)
    resumed = _batches(_train(records, start_step=start_step), 3)
    _assert_batches_equal(full[start_step:], resumed)


@pytest.mark.parametrize("start_step", [1, 7])  # within the first epoch, and in the third
def test_resume_with_mosaic_sees_the_batches_of_the_uninterrupted_run(module_records, mosaic_stream, start_step):
    resumed = _batches(_train(module_records, start_step=start_step, augmentation=MOSAIC), 3)
    _assert_batches_equal(mosaic_stream[start_step:start_step + 3], resumed)


def test_without_mosaic_each_example_is_its_record_through_random_augment_with_its_seed(records):
    """mosaic 0 (the default) leaves the examples as they were: record ``order[p]`` through
    augment.random_augment with the seed of (seed, epoch, p), nothing else drawn."""
    setting = Augmentation(colour_jitter=0.2, mosaic=0.0)
    batches = _batches(_train(records, augmentation=setting), 3)  # 12 examples: past the first epoch of 10
    for position in range(12):
        epoch, within = divmod(position, len(records))
        record = records[int(epoch_order(len(records), 1, epoch)[within])]
        image = tf.cast(decode_rgb(tf.io.read_file(str(record.image_path))), tf.float32)
        boxes = tf.constant(record.boxes[~record.is_crowd], tf.float32)
        seed = pipeline._example_seed(1, tf.constant(epoch, tf.int64), tf.constant(within, tf.int64))
        expected, expected_boxes, keep, _ = augment.random_augment(
            image, boxes, 32, seed=seed, horizontal_flip=True, scale_range=(0.75, 1.25), colour_strength=0.2)
        got = {key: value[position % 4] for key, value in batches[position // 4].items()}
        assert got["image_ids"].decode() == record.image_id
        np.testing.assert_array_equal(got["images"], expected.numpy())
        np.testing.assert_array_equal(got["boxes"][:got["num_boxes"]], expected_boxes.numpy()[keep.numpy()])


def test_examples_not_chosen_for_a_mosaic_are_the_examples_without_it(records):
    """With 0 < mosaic < 1 an example is either a mosaic or exactly the example a run without mosaic
    has there: the mosaic's draws come from a stream of their own."""
    half = _batches(_train(records, augmentation=Augmentation(colour_jitter=0.2, mosaic=0.5)), 5)
    none = _batches(_train(records, augmentation=Augmentation(colour_jitter=0.2)), 5)
    chosen = []
    for position in range(20):
        epoch, within = divmod(position, len(records))
        seed = pipeline._example_seed(1, tf.constant(epoch, tf.int64), tf.constant(within, tf.int64))
        chosen.append(bool(mosaic.chosen(seed, 0.5)))
        got, without = (batches[position // 4] for batches in (half, none))
        same = all(np.array_equal(got[key][position % 4], without[key][position % 4]) for key in got)
        assert same != chosen[-1], position
        assert got["image_ids"][position % 4] == without["image_ids"][position % 4]  # the order is the same
    assert 0 < sum(chosen) < 20


def test_mosaic_examples_carry_boxes_of_four_images_within_max_boxes(mosaic_stream):
    """Each record has one or two trained boxes; a mosaic of four carries more (up to max_boxes, 5 here),
    every box on the canvas, the classes beside them; its id, scales and size are its own record's."""
    counts = np.concatenate([batch["num_boxes"] for batch in mosaic_stream])
    assert counts.max() > 2 and counts.max() <= 5
    for batch in mosaic_stream:
        assert batch["images"].shape == (4, 32, 32, 3)
        for boxes, classes, count, image_id, size in zip(batch["boxes"], batch["classes"], batch["num_boxes"],
                                                         batch["image_ids"], batch["image_sizes"]):
            assert np.all(classes[count:] == -1) and np.all(boxes[count:] == -1) and np.all(classes[:count] >= 0)
            assert np.all(boxes[:count, 2:] > boxes[:count, :2])
            assert np.all(boxes[:count] >= 0) and np.all(boxes[:count] <= 32)
            index = int(image_id.decode()[3:])
            assert tuple(size) == (40 + 4 * index, 60 - 2 * index)


def test_sharded_pipelines_with_mosaic_make_the_batches_of_one(module_records, mosaic_stream):
    """Under tf.distribute each pipeline makes its slice of every global batch; a mosaic's partners and
    draws come from the example's seed, so the slices put together are one pipeline's batches."""
    shards = [_batches(training_dataset(module_records, LABELS, image_size=32, batch_size=4, max_boxes=5,
                                        augmentation=MOSAIC, seed=1, shard=InputShard(index, 2, 2)), 3)
              for index in range(2)]
    joined = [{key: np.concatenate([first[key], second[key]]) for key in first} for first, second in zip(*shards)]
    _assert_batches_equal(mosaic_stream[:3], joined)


def test_every_epoch_visits_every_record_once(records):
    dataset = training_dataset(records, LABELS, image_size=32, batch_size=1, max_boxes=5,
                               augmentation=None, seed=5)
    seen = [b["image_ids"][0].decode() for b in _batches(dataset, 30)]
    for epoch in range(3):
        assert sorted(seen[epoch * 10:(epoch + 1) * 10]) == sorted(r.image_id for r in records)
    assert seen[:10] != seen[10:20]
    assert list(epoch_order(10, 5, 0).numpy()) == [int(s[3:]) for s in seen[:10]]


def test_training_batches_have_fixed_shapes_and_padding(records):
    batch = _batches(_train(records), 1)[0]
    assert batch["images"].shape == (4, 32, 32, 3)
    assert batch["boxes"].shape == (4, 5, 4) and batch["classes"].shape == (4, 5)
    for boxes, classes, count in zip(batch["boxes"], batch["classes"], batch["num_boxes"]):
        assert np.all(classes[count:] == -1) and np.all(boxes[count:] == -1)
        assert np.all(classes[:count] >= 0)
        assert np.all(boxes[:count, 2:] > boxes[:count, :2])
        assert np.all(boxes[:count] >= 0) and np.all(boxes[:count] <= 32)


def test_evaluation_boxes_are_the_record_boxes_times_the_resize_factor(records):
    dataset = evaluation_dataset(records, LABELS, image_size=32, batch_size=4, max_boxes=5)
    batches = _batches(dataset, 10)
    assert [len(b["image_ids"]) for b in batches] == [4, 4, 2]
    position = 0
    for batch in batches:
        for j in range(len(batch["image_ids"])):
            record = records[position]
            position += 1
            assert batch["image_ids"][j].decode() == record.image_id
            assert tuple(batch["image_sizes"][j]) == (record.height, record.width)
            fy, fx = batch["image_scales"][j]
            assert max(round(record.height * fy), round(record.width * fx)) == 32
            kept = ~record.is_crowd
            expected = record.boxes[kept] * np.array([fy, fx, fy, fx], np.float32)
            count = batch["num_boxes"][j]
            np.testing.assert_allclose(batch["boxes"][j][:count], expected, rtol=1e-5)
            np.testing.assert_array_equal(batch["classes"][j][:count],
                                          LABELS.ids_to_indices(record.class_ids[kept]))


def test_crowd_boxes_are_not_trained_on(records):
    dataset = evaluation_dataset(records[:1], LABELS, image_size=32, batch_size=1, max_boxes=5)
    assert _batches(dataset, 1)[0]["num_boxes"].tolist() == [1]


def test_classes_become_contiguous_indices_for_gapped_label_map_ids(tmp_path):
    labels = LabelMap.from_pbtxt_text("item { id: 3 name: 'x' } item { id: 7 name: 'y' }")
    record = DetectionRecord(image_id="e", boxes=[[1, 1, 5, 5], [2, 2, 6, 6]], class_ids=[7, 3],
                             is_crowd=None, source="mem#0", encoded_image=_png(8, 8, 255))
    batch = _batches(evaluation_dataset([record], labels, image_size=8, batch_size=1, max_boxes=2), 1)[0]
    assert batch["classes"].tolist() == [[1, 0]]
    assert batch["images"].shape == (1, 8, 8, 3) and batch["images"].max() == 255.0


def test_jpeg_decodes_to_the_pixels_pil_decodes_and_png_as_it_is():
    """One decoder for training, evaluation and the export: JPEG with the accurate IDCT (as PIL,
    OpenCV and the TF OD API's Python tools), where tf.io.decode_image's default is a few levels off."""
    pixels = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, quality=90)
        data = buffer.getvalue()
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        np.testing.assert_array_equal(decode_rgb(tf.constant(data)).numpy(), expected)
        decoded_in_a_graph = tf.function(decode_rgb)(tf.constant(data))
        np.testing.assert_array_equal(decoded_in_a_graph.numpy(), expected)
        fast = tf.io.decode_image(data, channels=3).numpy()
        assert (fast != expected).any() == (fmt == "JPEG")  # the default the pipeline used before


def test_tfrecord_images_stream_from_their_shards_as_the_same_batches(records, tmp_path):
    """Records read from TFRecords keep only where each image lies in its shard, not its bytes;
    the pipeline reads them from there and makes the batches the image files make."""
    write_tfrecords(records, LABELS, tmp_path / "shards" / "train.record", num_shards=3)
    streamed = read_tfrecords(str(tmp_path / "shards" / "train.record-*"), LABELS).records
    assert all(record.encoded_image is None and record.image_span is not None for record in streamed)
    by_id = {record.image_id: record for record in records}
    files = [by_id[record.image_id] for record in streamed]  # the same records, in the shards' order
    evaluated = evaluation_dataset(streamed, LABELS, image_size=32, batch_size=4, max_boxes=5)
    expected = evaluation_dataset(files, LABELS, image_size=32, batch_size=4, max_boxes=5)
    for got, wanted in zip(_batches(_train(streamed), 4) + _batches(evaluated, 3),
                           _batches(_train(files), 4) + _batches(expected, 3)):
        for key in ("images", "image_ids", "classes", "image_sizes"):
            np.testing.assert_array_equal(got[key], wanted[key], err_msg=key)
        np.testing.assert_allclose(got["boxes"], wanted["boxes"], atol=1e-5)  # TFRecords keep them normalized


def test_a_shard_cut_short_after_reading_is_an_error_naming_it(records, tmp_path):
    (path,) = write_tfrecords(records, LABELS, tmp_path / "train.record", num_shards=1)
    streamed = read_tfrecords(path, LABELS).records
    path.write_bytes(path.read_bytes()[: streamed[-1].image_span.offset + 10])
    with pytest.raises(OSError, match=f"{path} ends at byte .*the file changed since it was read"):
        streamed[-1].read_encoded()
    with pytest.raises(Exception, match=f"{path} ends at byte"):
        _batches(evaluation_dataset(streamed, LABELS, image_size=32, batch_size=10, max_boxes=5), 1)


def test_record_tensors_map_every_class_at_once_and_keep_each_records_boxes(records, monkeypatch):
    """The boxes and classes of a split become tensors in one pass over all boxes (a 100k-record split
    took seconds of per-record calls): the label map is asked once, and each record's rows are its own."""
    mixed = [records[0], dataclasses.replace(records[1], boxes=np.zeros((0, 4)), class_ids=[], is_crowd=[], area=None),
             dataclasses.replace(records[2], class_ids=[2, 1], is_crowd=[True, True]), records[3]]
    calls = []
    labels = LabelMap.from_names(["a", "b"])
    monkeypatch.setattr(labels, "ids_to_indices", lambda ids: calls.append(ids) or LABELS.ids_to_indices(ids))
    tensors = pipeline._RecordTensors(mixed, labels)
    assert len(calls) == 1
    splits = tensors.row_splits.numpy()
    assert splits.tolist() == [0, 1, 1, 1, 3]
    for index, record in enumerate(mixed):
        kept = ~record.is_crowd
        rows = slice(splits[index], splits[index + 1])
        np.testing.assert_array_equal(tensors.boxes.numpy()[rows], record.boxes[kept].astype(np.float32))
        np.testing.assert_array_equal(tensors.classes.numpy()[rows], LABELS.ids_to_indices(record.class_ids[kept]))
