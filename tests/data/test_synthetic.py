"""The built-in shapes dataset: exact boxes, determinism, and care with existing folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkeeper.data import synthetic
from detkeeper.data.label_map import LabelMap
from detkeeper.data.synthetic import CLASSES, generate_shapes_dataset, render_shapes_image
from detkeeper.data.voc import read_voc
from detkeeper.errors import DataError

TINY = {"num_train": 5, "num_val": 2, "num_test": 2, "image_size": 64}


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.rglob("*")}


@pytest.mark.parametrize("seed", range(40))
def test_boxes_are_exact_inside_and_disjoint(seed: int) -> None:
    size, max_objects = 128, 6
    sample = render_shapes_image(np.random.default_rng(seed), size, max_objects)
    assert sample.pixels.shape == (size, size, 3) and sample.pixels.dtype == np.uint8
    assert 1 <= len(sample.boxes) <= max_objects
    assert set(sample.class_ids) <= set(range(1, len(CLASSES) + 1))
    assert sample.instance_map.max() == len(sample.boxes)
    for index, (ymin, xmin, ymax, xmax) in enumerate(sample.boxes):
        rows, cols = np.nonzero(sample.instance_map == index + 1)
        # Continuous convention: pixels 3..10 give min 3, max 11.
        assert (ymin, xmin, ymax, xmax) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        assert 0 <= ymin < ymax <= size and 0 <= xmin < xmax <= size
        side = max(ymax - ymin, xmax - xmin)
        assert 0.05 * size <= side <= 0.55 * size
    for first in range(len(sample.boxes)):
        for second in range(first + 1, len(sample.boxes)):
            a, b = sample.boxes[first], sample.boxes[second]
            overlap_y = min(a[2], b[2]) - max(a[0], b[0])
            overlap_x = min(a[3], b[3]) - max(a[1], b[1])
            assert overlap_y <= 0 or overlap_x <= 0


def test_objects_stand_out_from_the_background() -> None:
    sample = render_shapes_image(np.random.default_rng(7), 128, 6)
    for index, (ymin, xmin, ymax, xmax) in enumerate(sample.boxes.astype(int)):
        inside = sample.instance_map[ymin:ymax, xmin:xmax] == index + 1
        crop = sample.pixels[ymin:ymax, xmin:xmax].astype(float)
        assert len({tuple(colour) for colour in crop[inside]}) == 1  # one flat colour per object
        if (~inside).any():
            assert np.linalg.norm(crop[inside].mean(0) - crop[~inside].mean(0)) > 30


def test_dataset_on_disk(shapes_dataset: Path) -> None:
    manifest = json.loads((shapes_dataset / "manifest.json").read_text())
    parameters = manifest["parameters"]
    assert manifest["format_version"] == synthetic.FORMAT_VERSION
    assert parameters == {"num_train": 24, "num_val": 8, "num_test": 8, "image_size": 128,
                          "max_objects": 6, "seed": 0}
    label_map = LabelMap.read(shapes_dataset / "label_map.pbtxt")
    assert label_map.names == list(CLASSES)
    seen_classes = set()
    for split, number in (("train", 0), ("val", 1), ("test", 2)):
        readout = read_voc(shapes_dataset, split, label_map=label_map)
        assert readout.problems == []
        assert len(readout.records) == parameters[f"num_{split}"]
        for index, record in enumerate(readout.records):
            assert record.image_id == f"shapes_{split}_{index:05d}"
            assert (record.width, record.height) == (128, 128)
            with Image.open(record.image_path) as image:
                assert (image.format, image.size, image.mode) == ("JPEG", (128, 128), "RGB")
            seen_classes.update(record.class_ids.tolist())
        # What was written is what was drawn, from the documented per-image generator.
        drawn = render_shapes_image(np.random.default_rng([0, number, 3]), 128, 6)
        np.testing.assert_array_equal(readout.records[3].boxes, drawn.boxes)
        np.testing.assert_array_equal(readout.records[3].class_ids, drawn.class_ids)
    assert seen_classes == set(label_map.ids)


def test_written_jpeg_is_the_drawn_image(shapes_dataset: Path) -> None:
    """The file holds what the boxes were measured on (JPEG only blurs edges a little)."""
    drawn = render_shapes_image(np.random.default_rng([0, 0, 0]), 128, 6)
    record = read_voc(shapes_dataset, "train").records[0]
    decoded = np.asarray(Image.open(record.image_path), dtype=float)
    assert np.abs(decoded - drawn.pixels).mean() < 8
    for index in range(len(drawn.boxes)):
        inside = drawn.instance_map == index + 1
        colour = drawn.pixels[inside][0]
        assert np.linalg.norm(np.median(decoded[inside], axis=0) - colour) < 25


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = generate_shapes_dataset(tmp_path / "first", **TINY)
    second = generate_shapes_dataset(tmp_path / "second", **TINY)
    other = generate_shapes_dataset(tmp_path / "other", **TINY, seed=1)
    assert _digest(first) == _digest(second) != _digest(other)
    # Splits draw from different streams: no image repeats across them.
    images = [path.read_bytes() for path in (first / "JPEGImages").iterdir()]
    assert len(set(images)) == len(images) == 9


def test_existing_dataset_is_reused_untouched(shapes_dataset: Path) -> None:
    parameters = json.loads((shapes_dataset / "manifest.json").read_text())["parameters"]
    before = _snapshot(shapes_dataset)
    assert generate_shapes_dataset(shapes_dataset, **parameters) == shapes_dataset
    assert _snapshot(shapes_dataset) == before
    assert not any(path.name.startswith(".") for path in shapes_dataset.parent.iterdir())


def test_different_dataset_is_refused_untouched(shapes_dataset: Path) -> None:
    parameters = json.loads((shapes_dataset / "manifest.json").read_text())["parameters"]
    before = _snapshot(shapes_dataset)
    with pytest.raises(DataError) as error:
        generate_shapes_dataset(shapes_dataset, **{**parameters, "seed": 5, "num_val": 3})
    message = str(error.value)
    assert str(shapes_dataset) in message
    assert "seed: 0 on disk, 5 requested" in message and "num_val: 8 on disk, 3 requested" in message
    assert "num_train" not in message
    assert _snapshot(shapes_dataset) == before


def test_folder_with_other_files_is_refused_untouched(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(DataError, match="holds files and no shapes-dataset manifest.json"):
        generate_shapes_dataset(tmp_path, **TINY)
    assert [path.name for path in tmp_path.iterdir()] == ["thesis.tex"]


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    generate_shapes_dataset(tmp_path / "empty", **TINY)
    assert (tmp_path / "empty" / "manifest.json").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_on_val(split: str, index: int, parameters: dict) -> None:
        if split == "val":
            raise KeyboardInterrupt
        return original(split, index, parameters)

    original = synthetic._record
    monkeypatch.setattr(synthetic, "_record", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes_dataset(tmp_path / "shapes", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_same_dataset_finished_meanwhile_by_another_process(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "shapes"
    original = synthetic._write_dataset

    def racing_write(folder: Path, manifest: dict) -> None:
        original(out_dir, manifest)  # the other process wins the race
        original(folder, manifest)

    monkeypatch.setattr(synthetic, "_write_dataset", racing_write)
    assert generate_shapes_dataset(out_dir, **TINY) == out_dir
    assert [path.name for path in tmp_path.iterdir()] == ["shapes"]


@pytest.mark.parametrize("bad", [{"image_size": 16}, {"max_objects": 0}, {"num_train": -1},
                                 {"seed": 1.5}])
def test_bad_parameters(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(DataError, match="shapes dataset"):
        generate_shapes_dataset(tmp_path / "shapes", **{**TINY, **bad})
    assert not (tmp_path / "shapes").exists()
