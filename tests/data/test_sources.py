"""A config's data section becomes checked splits: one label map, and the bad-record policy applied."""

import logging
import shutil

import pytest

from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data.sources import DataSources
from detkeeper.errors import DataError


def _voc(path, split):
    return SourceConfig(format="voc", path=str(path), split=split)


def test_bccd_splits_share_the_train_label_map(bccd_root):
    sources = DataSources(DataConfig(train=_voc(bccd_root, "train"), val=_voc(bccd_root, "val"),
                                     test=_voc(bccd_root, "test")), check_images=False)
    sizes = {split: len(sources.prepare(split).records) for split in sources.configured_splits}
    assert sizes == {"train": 205, "val": 87, "test": 72}
    assert sources.label_map.names == ["Platelets", "RBC", "WBC"]
    assert all(sources.prepare(s).label_map is sources.label_map for s in sizes)


def _broken_copy(bccd_root, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(bccd_root / "Annotations", root / "Annotations")
    (root / "JPEGImages").mkdir()
    stems = ["BloodImage_00000", "BloodImage_00001", "BloodImage_00002"]
    for stem in stems:
        shutil.copy(bccd_root / "JPEGImages" / f"{stem}.jpg", root / "JPEGImages")
    (root / "JPEGImages" / "BloodImage_00002.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "some.txt").write_text("\n".join(stems) + "\n")
    return root


def test_skip_policy_drops_and_logs_every_reason(bccd_root, tmp_path, caplog):
    sources = DataSources(DataConfig(train=_voc(_broken_copy(bccd_root, tmp_path), "some")))
    with caplog.at_level(logging.WARNING, logger="detkeeper.data"):
        prepared = sources.prepare("train")
    assert [r.image_id for r in prepared.records] == ["BloodImage_00000", "BloodImage_00001"]
    assert prepared.report.counts() == {"corrupt_image": 1}
    assert "2 of 3 records kept" in caplog.text and "BloodImage_00002.jpg" in caplog.text


def test_strict_policy_refuses_with_the_list(bccd_root, tmp_path):
    config = DataConfig(train=_voc(_broken_copy(bccd_root, tmp_path), "some"), bad_records="strict")
    with pytest.raises(DataError, match=r"(?s)data.train .*1 problem.*BloodImage_00002.jpg.*corrupt_image"):
        DataSources(config).prepare("train")


def test_a_split_with_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><object><name>x</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    with pytest.raises(DataError, match="no usable records"):
        DataSources(DataConfig(train=_voc(root, None))).prepare("train")


def test_unset_split_names_the_key():
    with pytest.raises(DataError, match="data.val is not set"):
        DataSources(DataConfig()).source("val")
