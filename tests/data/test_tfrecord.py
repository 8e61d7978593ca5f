"""TFRecords: compatibility with the TF Object Detection API's format, sharding, damaged files.

The API itself cannot be installed here, so its parsing spec and its VOC converter are
reproduced below from its source (tensorflow/models, research/object_detection).
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.data.label_map import LabelMap
from detkeeper.data.record import DetectionRecord, normalize_yxyx
from detkeeper.data.tfrecord import read_tfrecords
from detkeeper.data.tfrecord_writer import record_to_example, shard_paths, write_tfrecords
from detkeeper.errors import DataError

LABEL_MAP = LabelMap.from_names(["RBC", "WBC", "Platelets"])

# TfExampleDecoder.keys_to_features in data_decoders/tf_example_decoder.py (the part every
# detection model uses; masks, keypoints, DensePose and context features are opt-in).
TF_OD_API_KEYS_TO_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    "image/filename": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/key/sha256": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/source_id": tf.io.FixedLenFeature((), tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature((), tf.int64, default_value=1),
    "image/width": tf.io.FixedLenFeature((), tf.int64, default_value=1),
    "image/class/text": tf.io.VarLenFeature(tf.string),
    "image/class/label": tf.io.VarLenFeature(tf.int64),
    "image/neg_category_ids": tf.io.VarLenFeature(tf.int64),
    "image/not_exhaustive_category_ids": tf.io.VarLenFeature(tf.int64),
    "image/class/confidence": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/class/label": tf.io.VarLenFeature(tf.int64),
    "image/object/class/text": tf.io.VarLenFeature(tf.string),
    "image/object/area": tf.io.VarLenFeature(tf.float32),
    "image/object/is_crowd": tf.io.VarLenFeature(tf.int64),
    "image/object/difficult": tf.io.VarLenFeature(tf.int64),
    "image/object/group_of": tf.io.VarLenFeature(tf.int64),
    "image/object/weight": tf.io.VarLenFeature(tf.float32),
}


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_record(index: int, num_boxes: int = 2, **overrides) -> DetectionRecord:
    boxes = [[4.5 + i, 3.25 + 2 * i, 30.0 + i, 50.75 - i] for i in range(num_boxes)]
    fields = dict(image_id=f"img_{index:03d}", boxes=boxes, class_ids=[1 + (index + i) % 3 for i in range(num_boxes)],
                  is_crowd=[i == 1 for i in range(num_boxes)], source=f"test#{index}",
                  encoded_image=jpeg_bytes(), width=64, height=48)
    fields.update(overrides)
    return DetectionRecord(**fields)


def write_raw(path, payloads: list[bytes]) -> str:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)
    return str(path)


def example(**features) -> bytes:
    """A serialized Example from plain values: bytes lists, int lists or float lists."""
    def feature(values):
        if values and isinstance(values[0], bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
        if values and isinstance(values[0], float):
            return tf.train.Feature(float_list=tf.train.FloatList(value=values))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(
        feature={key.replace("__", "/"): feature(v) for key, v in features.items()})).SerializeToString()


def one_box_example(**changes) -> bytes:
    features = dict(image__encoded=[jpeg_bytes()], image__height=[48], image__width=[64],
                    image__source_id=[b"a"], image__object__bbox__ymin=[0.25], image__object__bbox__xmin=[0.5],
                    image__object__bbox__ymax=[0.75], image__object__bbox__xmax=[1.0],
                    image__object__class__label=[2], image__object__class__text=[b"WBC"])
    features.update(changes)
    return example(**{k: v for k, v in features.items() if v is not None})


# --- compatibility with the TF OD API ------------------------------------------------------------

def test_written_records_parse_with_the_tf_od_api_decoder_spec(tmp_path):
    record = make_record(0, num_boxes=3)
    (path,) = write_tfrecords([record], LABEL_MAP, tmp_path / "train")
    serialized = next(iter(tf.data.TFRecordDataset(str(path))))
    parsed = tf.io.parse_single_example(serialized, TF_OD_API_KEYS_TO_FEATURES)
    dense = {key: tf.sparse.to_dense(value).numpy() if isinstance(value, tf.SparseTensor) else value.numpy()
             for key, value in parsed.items()}
    # slim_example_decoder.BoundingBox(['ymin', 'xmin', 'ymax', 'xmax'], 'image/object/bbox/')
    boxes = np.stack([dense[f"image/object/bbox/{c}"] for c in ("ymin", "xmin", "ymax", "xmax")], axis=1)
    np.testing.assert_array_equal(boxes, normalize_yxyx(record.boxes, 48, 64))
    np.testing.assert_array_equal(dense["image/object/class/label"], record.class_ids)
    assert [t.decode() for t in dense["image/object/class/text"]] == [LABEL_MAP.item_of_id(c).name
                                                                       for c in record.class_ids]
    np.testing.assert_array_equal(dense["image/object/is_crowd"].astype(bool), record.is_crowd)
    np.testing.assert_array_equal(dense["image/object/difficult"], [0, 0, 0])
    assert (dense["image/height"], dense["image/width"]) == (48, 64)
    assert dense["image/source_id"] == b"img_000"
    assert dense["image/format"] == b"jpeg"
    assert dense["image/key/sha256"] == hashlib.sha256(record.encoded_image).hexdigest().encode()
    assert tf.io.decode_image(dense["image/encoded"], channels=3).shape == (48, 64, 3)


def pascal_dict_to_tf_example(data: dict, encoded_jpg: bytes, label_map_dict: dict[str, int]) -> tf.train.Example:
    """Mirrors dict_to_tf_example in research/object_detection/dataset_tools/create_pascal_tf_record.py
    (same keys, values and normalization; the image bytes are passed in instead of read from disk)."""
    key = hashlib.sha256(encoded_jpg).hexdigest()
    width = int(data["size"]["width"])
    height = int(data["size"]["height"])
    xmin, ymin, xmax, ymax, classes, classes_text, truncated, poses, difficult_obj = ([] for _ in range(9))
    for obj in data.get("object", []):
        difficult_obj.append(int(bool(int(obj["difficult"]))))
        xmin.append(float(obj["bndbox"]["xmin"]) / width)
        ymin.append(float(obj["bndbox"]["ymin"]) / height)
        xmax.append(float(obj["bndbox"]["xmax"]) / width)
        ymax.append(float(obj["bndbox"]["ymax"]) / height)
        classes_text.append(obj["name"].encode("utf8"))
        classes.append(label_map_dict[obj["name"]])
        truncated.append(int(obj["truncated"]))
        poses.append(obj["pose"].encode("utf8"))

    def int64_feature(value): return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    def int64_list_feature(value): return tf.train.Feature(int64_list=tf.train.Int64List(value=value))
    def bytes_feature(value): return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
    def bytes_list_feature(value): return tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
    def float_list_feature(value): return tf.train.Feature(float_list=tf.train.FloatList(value=value))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": int64_feature(height),
        "image/width": int64_feature(width),
        "image/filename": bytes_feature(data["filename"].encode("utf8")),
        "image/source_id": bytes_feature(data["filename"].encode("utf8")),
        "image/key/sha256": bytes_feature(key.encode("utf8")),
        "image/encoded": bytes_feature(encoded_jpg),
        "image/format": bytes_feature("jpeg".encode("utf8")),
        "image/object/bbox/xmin": float_list_feature(xmin),
        "image/object/bbox/xmax": float_list_feature(xmax),
        "image/object/bbox/ymin": float_list_feature(ymin),
        "image/object/bbox/ymax": float_list_feature(ymax),
        "image/object/class/text": bytes_list_feature(classes_text),
        "image/object/class/label": int64_list_feature(classes),
        "image/object/difficult": int64_list_feature(difficult_obj),
        "image/object/truncated": int64_list_feature(truncated),
        "image/object/view": bytes_list_feature(poses),
    }))


@pytest.mark.parametrize("with_label_map", [True, False])
def test_tf_od_api_pascal_converter_output_is_read_back(tmp_path, with_label_map):
    def obj(name, xmin, ymin, xmax, ymax):
        return {"name": name, "difficult": "0", "truncated": "0", "pose": "Unspecified",
                "bndbox": {"xmin": str(xmin), "ymin": str(ymin), "xmax": str(xmax), "ymax": str(ymax)}}
    data = {"filename": "BloodImage_00001.jpg", "size": {"width": "640", "height": "480"},
            "object": [obj("WBC", 68, 315, 286, 480), obj("RBC", 346, 361, 446, 454), obj("Platelets", 1, 2, 33, 47)]}
    label_map_dict = {"RBC": 1, "WBC": 2, "Platelets": 3}
    tf_example = pascal_dict_to_tf_example(data, jpeg_bytes(640, 480), label_map_dict)
    path = write_raw(tmp_path / "pascal.record", [tf_example.SerializeToString()])

    readout = read_tfrecords(path, LABEL_MAP if with_label_map else None)

    assert readout.problems == []
    assert readout.label_map == LABEL_MAP
    (record,) = readout.records
    assert record.image_id == "BloodImage_00001.jpg"
    assert (record.width, record.height) == (640, 480)
    np.testing.assert_allclose(record.boxes, [[315, 68, 480, 286], [361, 346, 454, 446], [2, 1, 47, 33]], atol=1e-3)
    np.testing.assert_array_equal(record.class_ids, [2, 1, 3])
    np.testing.assert_array_equal(record.is_crowd, [False, False, False])
    assert record.source == f"{os.path.abspath(path)}#0"


# --- writing ------------------------------------------------------------------------------------

def test_shards_are_named_like_the_tf_od_api_and_filled_round_robin(tmp_path):
    records = [make_record(i, num_boxes=i % 3) for i in range(10)]
    paths = write_tfrecords(records, LABEL_MAP, tmp_path / "out" / "train.record", num_shards=4)

    assert [p.name for p in paths] == [f"train.record-0000{k}-of-00004" for k in range(4)]
    assert sorted(os.listdir(tmp_path / "out")) == [p.name for p in paths]  # no temporary files left
    for shard, path in enumerate(paths):
        ids = [r.image_id for r in read_tfrecords(path, LABEL_MAP).records]
        assert ids == [f"img_{i:03d}" for i in range(shard, 10, 4)]
    readout = read_tfrecords(str(tmp_path / "out" / "train.record-*"), LABEL_MAP)
    assert sorted(r.image_id for r in readout.records) == [r.image_id for r in records]
    back = {r.image_id: r for r in readout.records}
    for record in records:
        np.testing.assert_allclose(back[record.image_id].boxes, record.boxes, atol=1e-3)
        np.testing.assert_array_equal(back[record.image_id].class_ids, record.class_ids)
        np.testing.assert_array_equal(back[record.image_id].is_crowd, record.is_crowd)
        # The image stays in the shard: the record names where, and reading it gives the bytes written.
        assert back[record.image_id].encoded_image is None
        assert back[record.image_id].read_encoded() == record.encoded_image


def test_size_comes_from_the_image_header_when_the_record_declares_none(tmp_path):
    record = make_record(0, width=None, height=None)
    features = record_to_example(record, LABEL_MAP).features.feature
    assert (features["image/height"].int64_list.value[0], features["image/width"].int64_list.value[0]) == (48, 64)
    assert list(features["image/object/bbox/xmax"].float_list.value) == pytest.approx([50.75 / 64, 49.75 / 64])


def test_png_format_and_unknown_class_on_write():
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buffer, "PNG")
    features = record_to_example(make_record(0, encoded_image=buffer.getvalue()), LABEL_MAP).features.feature
    assert features["image/format"].bytes_list.value == [b"png"]
    with pytest.raises(DataError, match="class id 7 is not in the label map"):
        record_to_example(make_record(0, num_boxes=1, class_ids=[7]), LABEL_MAP)


def test_a_failed_write_leaves_no_files(tmp_path):
    records = [make_record(0), make_record(1, num_boxes=1, class_ids=[7])]
    with pytest.raises(DataError):
        write_tfrecords(records, LABEL_MAP, tmp_path / "train", num_shards=2)
    assert os.listdir(tmp_path) == []


def test_shard_count_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        shard_paths(tmp_path / "x", 0)


# --- finding files ------------------------------------------------------------------------------

def test_globs_comma_lists_and_sequences_are_expanded_sorted_and_deduplicated(tmp_path):
    a, b, c = (write_raw(tmp_path / f"{n}.tfrecord", [one_box_example(image__source_id=[n.encode()])])
               for n in "abc")
    expected = ["a", "b", "c"]
    assert [r.image_id for r in read_tfrecords(str(tmp_path / "*.tfrecord")).records] == expected
    assert [r.image_id for r in read_tfrecords(f"{c}, {a},{b}").records] == expected
    assert [r.image_id for r in read_tfrecords([c, str(tmp_path / "[ab].tfrecord"), a]).records] == expected
    with pytest.raises(DataError, match="nothing-\\*.tfrecord"):
        read_tfrecords(f"{a},{tmp_path / 'nothing-*.tfrecord'}")


# --- damaged files ------------------------------------------------------------------------------

def test_random_bytes_are_a_corrupt_record_and_other_files_are_still_read(tmp_path):
    good = write_raw(tmp_path / "a.tfrecord", [one_box_example()])
    (tmp_path / "b.tfrecord").write_bytes(np.random.default_rng(0).bytes(500))

    readout = read_tfrecords(str(tmp_path / "*.tfrecord"), LABEL_MAP)

    assert [r.source for r in readout.records] == [f"{good}#0"]
    (problem,) = readout.problems
    assert problem.kind == "corrupt_record" and problem.scope == "record"
    assert problem.source == f"{tmp_path / 'b.tfrecord'}#0"
    assert "corrupted record at 0" in problem.detail


def test_truncated_tail_keeps_the_records_before_the_damage(tmp_path):
    path = tmp_path / "t.tfrecord"
    write_raw(path, [one_box_example(image__source_id=[f"id{i}".encode()]) for i in range(5)])
    path.write_bytes(path.read_bytes()[:-7])

    readout = read_tfrecords(str(path), LABEL_MAP)

    assert [r.image_id for r in readout.records] == ["id0", "id1", "id2", "id3"]
    (problem,) = readout.problems
    assert (problem.kind, problem.source) == ("corrupt_record", f"{path}#4")
    assert "truncated record" in problem.detail and "4 record(s) before it are kept" in problem.detail


def test_bytes_that_are_not_an_example_are_a_malformed_annotation(tmp_path):
    path = write_raw(tmp_path / "x.tfrecord", [one_box_example(), b"\x0a\xff not a protobuf", one_box_example()])
    readout = read_tfrecords(path, LABEL_MAP)
    assert [r.source.rsplit("#")[1] for r in readout.records] == ["0", "2"]
    (problem,) = readout.problems
    assert (problem.kind, problem.source) == ("malformed_annotation", f"{path}#1")


@pytest.mark.parametrize("change, message", [
    ({"image__object__bbox__xmax": [0.5, 0.9]}, "per-object lists differ in length"),
    ({"image__object__class__label": [1, 2]}, "per-object lists differ in length"),
    ({"image__object__class__label": None, "image__object__class__text": None}, "no image/object/class/label"),
    ({"image__height": [b"48"]}, "image/height is a bytes_list"),
    ({"image__encoded": None}, "no image/encoded"),
])
def test_malformed_examples_are_reported_and_left_out(tmp_path, change, message):
    path = write_raw(tmp_path / "m.tfrecord", [one_box_example(**change)])
    readout = read_tfrecords(path, LABEL_MAP)
    assert list(readout.records) == []
    (problem,) = readout.problems
    assert problem.kind == "malformed_annotation" and message in problem.detail
    assert problem.image_id == "a"


# --- classes ------------------------------------------------------------------------------------

def test_unknown_class_id_with_a_label_map_drops_only_that_box(tmp_path):
    payload = one_box_example(image__object__bbox__ymin=[0.0, 0.25], image__object__bbox__xmin=[0.0, 0.5],
                              image__object__bbox__ymax=[0.5, 0.75], image__object__bbox__xmax=[0.5, 1.0],
                              image__object__class__label=[9, 2], image__object__class__text=[b"cat", b"WBC"])
    path = write_raw(tmp_path / "u.tfrecord", [one_box_example(), payload])

    readout = read_tfrecords(path, LABEL_MAP)

    assert len(readout.records) == 2
    np.testing.assert_array_equal(readout.records[1].class_ids, [2])
    np.testing.assert_allclose(readout.records[1].boxes, [[12, 32, 36, 64]])
    (problem,) = readout.problems
    assert (problem.kind, problem.scope, problem.record_index, problem.box_index) == ("unknown_class", "box", 1, 0)
    assert "class 9 ('cat')" in problem.detail


def test_class_ids_come_from_texts_when_labels_are_absent_and_a_label_map_is_given(tmp_path):
    path = write_raw(tmp_path / "t.tfrecord", [one_box_example(image__object__class__label=None)])
    (record,) = read_tfrecords(path, LABEL_MAP).records
    np.testing.assert_array_equal(record.class_ids, [2])


def test_missing_texts_without_a_label_map_asks_for_one(tmp_path):
    path = write_raw(tmp_path / "n.tfrecord", [one_box_example(image__object__class__text=None)])
    with pytest.raises(DataError, match="data.label_map"):
        read_tfrecords(path)


def test_inconsistent_texts_without_a_label_map_ask_for_one(tmp_path):
    path = write_raw(tmp_path / "i.tfrecord", [one_box_example(),
                                               one_box_example(image__object__class__text=[b"Platelets"])])
    with pytest.raises(DataError, match="class/label 2 several class/text.*data.label_map"):
        read_tfrecords(path)


def test_labels_that_contradict_the_label_map_by_name_are_an_error(tmp_path):
    path = write_raw(tmp_path / "c.tfrecord", [one_box_example(image__object__class__text=[b"RBC"])])
    with pytest.raises(DataError, match="would train it as 1"):
        read_tfrecords(path, LABEL_MAP)


# --- real data ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_bccd_voc_to_tfrecords_and_back(bccd_root, tmp_path):
    from detkeeper.data.voc import read_voc

    voc = read_voc(bccd_root)
    paths = write_tfrecords(voc.records, voc.label_map, tmp_path / "bccd.record", num_shards=3)
    assert [p.name for p in paths] == [f"bccd.record-0000{k}-of-00003" for k in range(3)]

    readout = read_tfrecords(str(tmp_path / "bccd.record-*"), voc.label_map)

    assert readout.problems == []
    assert sorted(r.image_id for r in readout.records) == sorted(r.image_id for r in voc.records)
    back = {r.image_id: r for r in readout.records}
    for record in voc.records:
        np.testing.assert_allclose(back[record.image_id].boxes, record.boxes, atol=1e-3)
        np.testing.assert_array_equal(back[record.image_id].class_ids, record.class_ids)
    without_map = read_tfrecords([str(p) for p in paths])
    assert without_map.label_map.ids == voc.label_map.ids
    assert without_map.label_map.names == voc.label_map.names


def test_rewriting_with_another_shard_count_refuses_instead_of_mixing(tmp_path, shapes_dataset):
    from detkeeper.data.voc import read_voc
    readout = read_voc(shapes_dataset, split="val")
    prefix = tmp_path / "out" / "val"
    write_tfrecords(readout.records, readout.label_map, prefix, num_shards=2)
    write_tfrecords(readout.records, readout.label_map, prefix, num_shards=2)  # same sharding: replaced
    with pytest.raises(DataError, match="val-00000-of-00002.*another output prefix"):
        write_tfrecords(readout.records, readout.label_map, prefix, num_shards=3)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["val-00000-of-00002", "val-00001-of-00002"]


# --- what COCO evaluation needs ------------------------------------------------------------------

def test_area_is_written_for_the_tf_od_api_and_read_back(tmp_path):
    record = make_record(0, num_boxes=3, area=[100.5, np.nan, 7.25])  # the middle one declares none
    (path,) = write_tfrecords([record, make_record(1)], LABEL_MAP, tmp_path / "train")
    first, second = (tf.io.parse_single_example(raw, TF_OD_API_KEYS_TO_FEATURES)
                     for raw in tf.data.TFRecordDataset(str(path)))
    np.testing.assert_allclose(tf.sparse.to_dense(first["image/object/area"]).numpy(), record.coco_areas(), rtol=1e-7)
    assert tf.sparse.to_dense(second["image/object/area"]).numpy().size == 0  # no area known: key not written
    back, back_second = read_tfrecords(path).records
    np.testing.assert_array_equal(back.area, np.float32(record.coco_areas()))  # float32 in the file
    assert np.isnan(back_second.area).all()


@pytest.mark.parametrize("source_id, original", [(b"139", 139), (b"1000", 1000), (b"0", 0), (b"000139", "000139"),
                                                 (b"-5", "-5"), (b"img_7", "img_7"), (b"12345678901234567890",
                                                                                      "12345678901234567890")])
def test_source_id_is_an_int_when_canonical_else_the_string(tmp_path, source_id, original):
    path = write_raw(tmp_path / "a.tfrecord", [one_box_example(image__source_id=[source_id])])
    (record,) = read_tfrecords(path).records
    assert record.original_id == original and type(record.original_id) is type(original)
    assert record.image_id == source_id.decode()


def test_coco_ids_and_areas_survive_coco_to_tfrecord(tmp_path):
    records = [make_record(i, image_id=str(image_id), original_id=image_id, area=[50.0, 60.0])
               for i, image_id in enumerate([139, 1000])]
    back = read_tfrecords(write_tfrecords(records, LABEL_MAP, tmp_path / "coco")).records
    assert [r.original_id for r in back] == [139, 1000]
    np.testing.assert_array_equal([r.area for r in back], [[50.0, 60.0], [50.0, 60.0]])


@pytest.mark.parametrize("area", [[-1.0], [float("inf")], [1.0, 2.0]])
def test_a_bad_area_makes_the_record_malformed(tmp_path, area):
    path = write_raw(tmp_path / "a.tfrecord", [one_box_example(image__object__area=area)])
    readout = read_tfrecords(path, LABEL_MAP)
    (problem,) = readout.problems
    assert list(readout.records) == [] and problem.kind == "malformed_annotation" and problem.image_id == "a"
    assert "image/object/area" in problem.detail
