"""Hypothesis against every parser of user files: whatever the bytes, only detkeeper's own error types
(detkeeper.errors) come out, or a reading with the damage counted as problems.

Config YAML, VOC XML, label_map.pbtxt, COCO JSON and TFRecords of tf.Example, each from random bytes
and from mutations of a valid file, with a few hundred examples each (a few seconds apiece).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detkeeper.config import load_config
from detkeeper.data.coco import read_coco
from detkeeper.data.label_map import LabelMap
from detkeeper.data.tfrecord import read_tfrecords
from detkeeper.data.voc import read_voc
from detkeeper.errors import DetkeeperError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

VALID_CONFIG = """\
preset: demo
run_dir: runs/fuzz
model: {name: retinanet_tiny, image_size: 128}
train: {steps: 10, batch_size: 2, optimizer: {name: adam, learning_rate: 0.001}}
evaluation: {every_steps: 5}
checkpoint: {keep_best: 2, keep_last: 1}
"""
VALID_XML = (b"<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>"
             b"<object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>20</xmax><ymax>25</ymax>"
             b"</bndbox></object></annotation>")
VALID_PBTXT = 'item {\n  id: 1\n  name: "cat"\n  display_name: "Cat"\n}\nitem { id: 3 name: "dog" }\n'
VALID_COCO = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 19, 23], "area": 437,
                               "iscrowd": 0}],
              "categories": [{"id": 1, "name": "cat"}]}


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """`valid` with a slice replaced by random bytes, cut short, or a random byte string."""
    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, len(valid)).map(lambda cut: valid[:cut]),
        st.tuples(st.integers(0, len(valid)), st.integers(0, 8), st.binary(max_size=12)).map(
            lambda edit: valid[:edit[0]] + edit[2] + valid[edit[0] + edit[1]:]),
    )


def only_our_errors(function, *args):
    """Call `function`; a DetkeeperError is an answer, anything else escapes and fails the test."""
    try:
        return function(*args)
    except DetkeeperError as error:
        assert str(error), "an error without a message"
        return None


@FUZZ
@given(text=st.one_of(mutations(VALID_CONFIG.encode()).map(lambda data: data.decode("utf-8", "replace")),
                      st.text(max_size=200)))
def test_config_yaml(text, faults):
    faults.bad_input()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.yaml"
        path.write_text(text, encoding="utf-8")
        only_our_errors(load_config, path)


@FUZZ
@given(data=mutations(VALID_XML))
def test_voc_xml(data, faults):
    faults.bad_input()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "Annotations").mkdir()
        (root / "JPEGImages").mkdir()
        (root / "Annotations" / "a.xml").write_bytes(data)
        readout = only_our_errors(read_voc, root)
        if readout is not None:  # a damaged file is a counted problem, never a silent record
            assert readout.records or readout.problems


@FUZZ
@given(data=mutations(VALID_PBTXT.encode()))
def test_label_map_pbtxt(data, faults):
    faults.bad_input()
    label_map = only_our_errors(LabelMap.from_pbtxt_text, data.decode("utf-8", "replace"), "fuzz.pbtxt")
    if label_map is not None:
        assert label_map.num_classes >= 1 and len(set(label_map.ids)) == label_map.num_classes


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def coco_documents() -> st.SearchStrategy[bytes]:
    """Valid COCO with one field replaced by any JSON value, any JSON value, or mutated bytes."""
    def replace(path_and_value):
        (section, key), value = path_and_value
        document = json.loads(json.dumps(VALID_COCO))
        if key is None:
            document[section] = value
        else:
            document[section][0][key] = value
        return json.dumps(document).encode()

    fields = st.sampled_from([("images", None), ("annotations", None), ("categories", None),
                              ("images", "id"), ("images", "file_name"), ("images", "width"),
                              ("annotations", "image_id"), ("annotations", "category_id"),
                              ("annotations", "bbox"), ("annotations", "iscrowd"), ("categories", "id"),
                              ("categories", "name")])
    return st.one_of(st.tuples(fields, json_values).map(replace), json_values.map(lambda v: json.dumps(v).encode()),
                     mutations(json.dumps(VALID_COCO).encode()))


@FUZZ
@given(data=coco_documents())
def test_coco_json(data, faults):
    faults.bad_input()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "instances.json"
        path.write_bytes(data)
        only_our_errors(read_coco, path)


def _example(features: dict) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


KEYS = ["image/encoded", "image/format", "image/height", "image/width", "image/source_id", "image/filename",
        "image/object/bbox/xmin", "image/object/bbox/ymin", "image/object/bbox/xmax", "image/object/bbox/ymax",
        "image/object/class/label", "image/object/class/text", "image/object/is_crowd"]
feature_values = st.one_of(
    st.lists(st.binary(max_size=16), max_size=3).map(
        lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v))),
    st.lists(st.integers(-2**63, 2**63 - 1), max_size=3).map(
        lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=v))),
    st.lists(st.floats(width=32), max_size=3).map(lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v))),
)
records = st.one_of(st.dictionaries(st.sampled_from(KEYS), feature_values, max_size=8).map(_example),
                    st.binary(max_size=64))


@settings(FUZZ, max_examples=50)  # TensorFlow's reader costs ~0.1 s a file
@given(payloads=st.lists(records, min_size=1, max_size=3), cut=st.integers(0, 40))
def test_tfrecord_examples(payloads, cut, faults):
    faults.bad_input()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as writer:
            for payload in payloads:
                writer.write(payload)
        if cut:  # and sometimes a truncated tail
            path.write_bytes(path.read_bytes()[:-cut])
        label_map = LabelMap.from_names(["cat", "dog"])
        for mapping in (None, label_map):
            only_our_errors(read_tfrecords, path, mapping)


def test_the_fuzzers_can_fail():
    """`only_our_errors` lets anything but a DetkeeperError through, so a parser bug fails the fuzz."""
    def broken(_):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        only_our_errors(broken, None)
