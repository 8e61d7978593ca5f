"""Broken datasets through the command line: every bad file is counted under its kind and named, the
command exits non-zero without a traceback, the training pipeline decodes everything the checks let
through, and no name in a dataset reads or writes outside its folder.

Each kind's detection is unit-tested beside its reader (tests/data/test_check.py, test_voc.py,
test_coco.py, test_tfrecord.py); here they all meet in one dataset, end to end.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.cli.main import main

GOOD = [("cat", (2, 2, 30, 20))]
# name: (what it is, the image it points at, its objects, the problem kind `data check` counts)
ZOO = {
    "truncated": ("truncated JPEG", "truncated.jpg", GOOD, "corrupt_image"),
    "empty": ("zero-byte image", "empty.jpg", GOOD, "corrupt_image"),
    "pngtail": ("PNG without its last chunk (Pillow decodes it, TensorFlow does not)", "pngtail.png", GOOD,
                "corrupt_image"),
    "onebit": ("1-bit BMP (Pillow decodes it, TensorFlow does not)", "onebit.bmp", GOOD, "corrupt_image"),
    "text": ("text file named .jpg", "text.jpg", GOOD, "not_an_image"),
    "rgba": ("RGBA PNG", "rgba.png", GOOD, "rgba_image"),
    "cmyk": ("CMYK JPEG", "cmyk.jpg", GOOD, "cmyk_image"),
    "sixteen": ("16-bit PNG", "sixteen.png", GOOD, "grayscale_image"),
    "huge": ("20000x20000 PNG (decompression bomb)", "huge.png", GOOD, "huge_image"),
    "nofields": ("XML without filename, size or bndbox", None, None, "malformed_annotation"),
    "nocoords": ("bndbox missing three coordinates", "good.png", None, "malformed_annotation"),
    "inverted": ("inverted box", "good.png", [("cat", (30, 20, 2, 2))], "inverted_box"),
    "outside": ("box outside the image", "good.png", [("cat", (50, 40, 60, 50))], "box_outside_image"),
    "zeroarea": ("zero-area box", "good.png", [("cat", (5, 5, 5, 20))], "zero_area_box"),
    "nanbox": ("NaN coordinate", "good.png", [("cat", ("nan", 2, 10, 10))], "non_finite_box"),
    "unknown": ("label missing from the label map", "good.png", [("dog", (2, 2, 30, 20))], "unknown_class"),
    "escape": ("<filename> ../../x.jpg", "../../x.jpg", GOOD, "malformed_annotation"),
    "good": ("an id listed twice", "good.png", GOOD, "duplicate_image_id"),
}
# Kept by the checks (warnings, or a box dropped): the pipeline must decode them.
DECODED = {"good", "rgba", "cmyk", "sixteen", "inverted", "outside", "zeroarea", "nanbox", "unknown"}


def _png(array_or_mode, path, size=(40, 30), fmt="PNG"):
    if isinstance(array_or_mode, str):
        colour = {"RGB": (9, 90, 9), "RGBA": (9, 9, 9, 9), "CMYK": (1, 2, 3, 4), "1": 0}[array_or_mode]
        image = Image.new(array_or_mode, size, colour)
    else:
        image = Image.fromarray(array_or_mode)
    image.save(path, fmt)


def _xml(name, filename, objects) -> str:
    if objects is None and filename is None:
        return "<annotation><object><name>cat</name></object></annotation>"
    if objects is None:
        return (f"<annotation><filename>{filename}</filename><object><name>cat</name><bndbox><xmin>1</xmin>"
                "</bndbox></object></annotation>")
    boxes = "".join(f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                    f"<ymax>{y1}</ymax></bndbox></object>" for label, (x0, y0, x1, y1) in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>40</width><height>30</height>"
            f"<depth>3</depth></size>{boxes}</annotation>")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A VOC dataset holding one of each bad thing (and a good image), with a one-class label map."""
    root = tmp_path_factory.mktemp("zoo") / "voc"
    images, annotations, splits = root / "JPEGImages", root / "Annotations", root / "ImageSets" / "Main"
    for folder in (images, annotations, splits):
        folder.mkdir(parents=True)
    _png("RGB", images / "good.png")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, "JPEG")
    (images / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (images / "empty.jpg").write_bytes(b"")
    noise = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    _png(noise, images / "pngtail.png")
    (images / "pngtail.png").write_bytes((images / "pngtail.png").read_bytes()[:-20])
    _png("1", images / "onebit.bmp", fmt="BMP")
    (images / "text.jpg").write_text("hello, not an image")
    _png("RGBA", images / "rgba.png")
    _png("CMYK", images / "cmyk.jpg", fmt="JPEG")
    _png((np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), images / "sixteen.png")
    _png("1", images / "huge.png", size=(20000, 20000))
    (root.parent / "x.jpg").write_bytes((images / "good.png").read_bytes())  # what ../../x.jpg would reach
    for name, (_, filename, objects, _) in ZOO.items():
        (annotations / f"{name}.xml").write_text(_xml(name, filename, objects))
    (splits / "train.txt").write_text("\n".join(["good", *ZOO]) + "\n")  # "good" twice: a duplicate id
    (root / "label_map.pbtxt").write_text('item { id: 1 name: "cat" }\n')
    return root


@pytest.fixture(scope="module")
def checked(zoo):
    """`detkeeper data check` on the zoo, as JSON and as text: (exit codes, counts, text, stderr)."""
    capture = pytest.MonkeyPatch()
    outputs = []
    for extra in (["--json"], ["--examples", "5"]):
        stdout, stderr = io.StringIO(), io.StringIO()
        capture.setattr("sys.stdout", stdout)
        capture.setattr("sys.stderr", stderr)
        code = main(["data", "check", str(zoo), "--split", "train", "--label-map", str(zoo / "label_map.pbtxt"),
                     "--quiet", *extra])
        capture.undo()
        outputs.append((code, stdout.getvalue(), stderr.getvalue()))
    (json_code, json_text, _), (text_code, text, text_err) = outputs
    return {"codes": (json_code, text_code), "counts": json.loads(json_text)["splits"][0]["problems"],
            "text": text + text_err}


@pytest.mark.parametrize("name", list(ZOO))
def test_each_bad_file_is_counted_under_its_kind_and_named(checked, name, faults):
    what, filename, _, kind = ZOO[name]
    faults.bad_input()
    assert checked["codes"] == (1, 1), what  # problems that drop data: non-zero, for scripts
    assert checked["counts"].get(kind, 0) >= 1, (what, checked["counts"])
    assert "Traceback" not in checked["text"]
    named = [line for line in checked["text"].splitlines() if f"Annotations/{name}.xml" in line]
    assert any(f"[{kind}]" in line for line in named), (what, named)


def test_everything_the_checks_let_through_decodes_in_the_training_pipeline(zoo, tmp_path, faults):
    from detkeeper.config import load_config
    from detkeeper.data.pipeline import Augmentation, training_dataset
    from detkeeper.data.sources import DataSources

    config_path = tmp_path / "zoo.yaml"
    split = {"format": "voc", "path": str(zoo), "split": "train"}
    config_path.write_text(json.dumps({"preset": "demo", "run_dir": str(tmp_path / "run"), "model": {"image_size": 64},
                                       "data": {"train": split, "val": split, "test": None,
                                                "label_map": str(zoo / "label_map.pbtxt")}}))
    config = load_config(config_path)
    sources = DataSources(config.data)
    prepared = sources.prepare("train")  # bad_records: skip (the default), each skip logged
    assert {record.image_id for record in prepared.records} == DECODED
    faults.bad_input(len(DECODED) - 1)
    batch = next(iter(training_dataset(prepared.records, sources.label_map, image_size=64,
                                       batch_size=len(prepared.records), max_boxes=10,
                                       augmentation=Augmentation.from_config(config.data.augment), seed=0)))
    assert batch["images"].shape == (len(DECODED), 64, 64, 3)
    assert bool(tf.reduce_all(tf.math.is_finite(batch["boxes"])))
    # only the good boxes are trained on: the good image's, rgba/cmyk/sixteen's; the bad boxes are gone
    assert int(tf.reduce_sum(batch["num_boxes"])) == 4


def _tfrecord_with(path, image_id: str, encoded: bytes) -> None:
    def feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": feature(encoded), "image/format": feature(b"png"),
        "image/source_id": feature(image_id.encode()), "image/filename": feature(image_id.encode()),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[30])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[40])),
        "image/object/bbox/xmin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        "image/object/bbox/ymin": tf.train.Feature(float_list=tf.train.FloatList(value=[0.1])),
        "image/object/bbox/xmax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "image/object/bbox/ymax": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5])),
        "image/object/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1])),
        "image/object/class/text": feature(b"cat"),
    }))
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(example.SerializeToString())


def _files_under(folder):
    return sorted(os.path.relpath(os.path.join(top, name), folder) for top, _, names in os.walk(folder)
                  for name in names)


def test_converting_records_named_like_paths_writes_only_inside_the_out_dir(zoo, tmp_path, faults, capsys):
    """Ids and file names inside a TFRecord become output file names: `../../evil.png` must land in the
    out dir (as a plain name), never beside or above it."""
    work = tmp_path / "work"
    (work / "in").mkdir(parents=True)
    good = (zoo / "JPEGImages" / "good.png").read_bytes()
    _tfrecord_with(work / "in" / "escape.tfrecord", "../../evil.png", good)
    before = _files_under(tmp_path)
    out = work / "deep" / "out"
    code = main(["data", "convert", str(work / "in" / "escape.tfrecord"), "--to", "coco", "--out",
                 str(out / "annotations.json"), "--label-map", str(zoo / "label_map.pbtxt"), "--quiet"])
    faults.bad_input()
    assert code == 0, capsys.readouterr().err
    new = sorted(set(_files_under(tmp_path)) - set(before))
    assert new and all(path.startswith(os.path.join("work", "deep", "out") + os.sep) for path in new), new
    written = json.loads((out / "annotations.json").read_text())
    assert [image["file_name"] for image in written["images"]] == [".._.._evil.png"]
    assert (out / ".._.._evil.png").read_bytes() == good


@pytest.mark.parametrize("damage", ["random bytes", "truncated tail"])
def test_a_damaged_tfrecord_is_counted_and_the_records_before_the_damage_kept(zoo, tmp_path, damage, capsys, faults):
    path = tmp_path / "data.tfrecord"
    good = (zoo / "JPEGImages" / "good.png").read_bytes()
    if damage == "random bytes":
        path.write_bytes(np.random.default_rng(9).bytes(4000))
        expected_usable = 0
    else:
        _tfrecord_with(path, "first", good)
        first = path.read_bytes()
        _tfrecord_with(path, "second", good)
        path.write_bytes(first + path.read_bytes()[:-7])
        expected_usable = 1
    faults.bad_input()
    code = main(["data", "check", str(path), "--label-map", str(zoo / "label_map.pbtxt"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err, err[-3000:]
    split = json.loads(out)["splits"][0]
    assert split["problems"].get("corrupt_record") == 1 and split["records_usable"] == expected_usable, split
    if damage == "random bytes":  # without a label map there are no class names to read: say why
        code = main(["data", "check", str(path), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err[-3000:]
        assert "no record could be read, so no label map can be derived from them: " in err
        assert f"{path}#0: " in err and "[corrupt_record]" in err, err
