"""Shared by the `config import` tests: a TF OD API-style workspace to import configs into."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tfod_workspace(tmp_path_factory) -> Path:
    """A TF OD API-style workspace: data/train.record-0000?-of-00002, data/val.record-00000-of-00001 and
    data/label_map.pbtxt made from 12 + 4 images of the built-in shapes dataset at 128 px."""
    from detkeeper.data.synthetic import generate_shapes_dataset
    from detkeeper.data.tfrecord_writer import write_tfrecords
    from detkeeper.data.voc import read_voc

    root = tmp_path_factory.mktemp("tfod_workspace")
    shapes = generate_shapes_dataset(root / "shapes", num_train=12, num_val=4, num_test=1, image_size=128)
    train, val = read_voc(shapes, split="train"), read_voc(shapes, split="val")
    write_tfrecords(train.records, train.label_map, root / "data" / "train.record", num_shards=2)
    write_tfrecords(val.records, train.label_map, root / "data" / "val.record")
    train.label_map.write(root / "data" / "label_map.pbtxt")
    return root
