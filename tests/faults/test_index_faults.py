"""The dataset index under faults (issue 18): killed while writing an entry, the rerun never trusts
it and leaves no temporary file; a shard cut short or rewritten after it was indexed is found and
named, and nothing is trained on what it holds now.

One subprocess (the kill, in `detkeeper data check`, which trains nothing); the rest runs in this
process on four shards of three tiny BMP records (BMPs of one size are of one length, so a shard
written again in another order has the same size with other bytes at each image's place).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from detkeeper.cli.main import main
from detkeeper.config.schema import DataConfig, SourceConfig
from detkeeper.data import index, tfrecord
from detkeeper.data.label_map import LabelMap
from detkeeper.data.pipeline import data_errors, training_dataset
from detkeeper.data.record import DetectionRecord
from detkeeper.data.sources import DataSources
from detkeeper.data.tfrecord_writer import write_tfrecords
from detkeeper.errors import DataError

from fault_runs import run_driver

LABEL_MAP = LabelMap.from_names(["cell"])
SHARDS, PER_SHARD = 4, 3


def _record(number: int) -> DetectionRecord:
    pixels = np.random.default_rng(number).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "BMP")
    boxes = [[2, 3, 20, 28]] if number != 5 else [[2, 3, 20, 28], [30, 40, 40, 50]]  # record 5: a box outside
    return DetectionRecord(image_id=f"img_{number:03d}", boxes=boxes, class_ids=[1] * len(boxes),
                           is_crowd=[False] * len(boxes), source=f"made#{number}", encoded_image=buffer.getvalue(),
                           width=32, height=24)


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    """(shard paths, label map file, records); the index in a cache of this test's own."""
    monkeypatch.setenv("DETKEEPER_CACHE", str(tmp_path / "cache"))
    records = [_record(number) for number in range(SHARDS * PER_SHARD)]
    paths = write_tfrecords(records, LABEL_MAP, tmp_path / "data" / "train.record", num_shards=SHARDS)
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")
    return paths, tmp_path / "label_map.pbtxt", records


@pytest.fixture
def shard_reads(monkeypatch):
    """The names of the shards read from their files (not from the index), in order."""
    names, read = [], tfrecord.read_tfrecord_file
    monkeypatch.setattr(tfrecord, "read_tfrecord_file", lambda file, label_map: names.append(
        os.path.basename(file)) or read(file, label_map))
    return names


def _check(paths, label_map_file, capsys) -> tuple[int, str, str]:
    """`detkeeper data check` on the shards, in this process: (exit code, JSON summary, problem listing)."""
    arguments = ["data", "check", str(paths[0].parent / "train.record-*"), "--label-map", str(label_map_file)]
    code = main([*arguments, "--json", "--quiet"])
    summary = capsys.readouterr().out
    assert main([*arguments, "--examples", "5", "--quiet"]) == code
    return code, summary, capsys.readouterr().out


def _temporary_files(folder) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file() and path.name.endswith(".tmp"))


def test_killed_while_writing_an_index_entry_the_rerun_reads_that_shard_again(dataset, tmp_path, monkeypatch,
                                                                                capsys, shard_reads, faults):
    paths, label_map_file, _ = dataset
    cache = tmp_path / "cache" / "index"
    killed = run_driver("index:2", "data", "check", str(paths[0].parent / "train.record-*"), "--label-map",
                        str(label_map_file), "--quiet", limit=300)
    faults.injected()
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _temporary_files(cache), "no half-written entry was left"  # under its temporary name only
    entries = {path: index._entry_path(str(path), LABEL_MAP.to_pbtxt()) for path in paths}
    missing = sorted(path.name for path, entry in entries.items() if not entry.is_file())
    assert missing, "every entry was written before the kill"

    rerun = _check(paths, label_map_file, capsys)
    assert sorted(shard_reads) == missing  # the shards without a whole entry were read again, and only those
    assert _temporary_files(cache) == []  # the rewritten entry's leftover is gone
    shard_reads.clear()
    assert _check(paths, label_map_file, capsys) == rerun and shard_reads == []  # every entry whole and used

    monkeypatch.setenv("DETKEEPER_CACHE", str(tmp_path / "fresh-cache"))
    uninterrupted = _check(paths, label_map_file, capsys)
    assert rerun == uninterrupted, (rerun, uninterrupted)
    assert rerun[0] == 1 and json.loads(rerun[1])["splits"][0]["problems"] == {"box_outside_image": 1}
    faults.recovered()
    faults.lost(0)


def _prepared(paths, label_map_file):
    """A start's training split of the shards (through the index), its label map and its problems."""
    data = DataConfig(train=SourceConfig("tfrecord", str(paths[0].parent / "train.record-*")), val=None, test=None,
                      label_map=str(label_map_file))
    sources = DataSources(data)
    prepared = sources.prepare("train")
    return prepared.records, sources.label_map, prepared.report.problems


def _one_epoch(records, label_map):
    """Every record through the training pipeline (one batch of all), as training consumes it."""
    dataset = training_dataset(records, label_map, image_size=32, batch_size=len(records), max_boxes=4,
                               augmentation=None, seed=0)
    with data_errors():
        return next(iter(dataset))


def _fit_one_step(records, label_map):
    """One Keras fit step on every record, in data_errors() as detkeeper.train runs fit: a record's DataError
    reaches fit wrapped in TensorFlow's error, and leaves as itself."""
    import keras

    images = training_dataset(records, label_map, image_size=32, batch_size=len(records), max_boxes=4,
                              augmentation=None, seed=0).map(lambda batch: (batch["images"], batch["num_boxes"]))
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with data_errors():
        model.fit(images, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)


def test_a_shard_cut_short_after_indexing_stops_the_pipeline_and_is_read_again_at_the_next_start(
        dataset, shard_reads, faults):
    paths, label_map_file, _ = dataset
    records, label_map, _ = _prepared(paths, label_map_file)
    paths[2].write_bytes(paths[2].read_bytes()[: paths[2].stat().st_size // 2])  # cut while a run reads it
    faults.injected()
    with pytest.raises(DataError, match=rf"{paths[2]}: cannot read the image at .* ends at byte"):
        _one_epoch(records, label_map)

    shard_reads.clear()
    records, label_map, problems = _prepared(paths, label_map_file)  # the next start: its size says it changed
    assert shard_reads == [paths[2].name]
    assert [problem.kind for problem in problems if problem.source.startswith(f"{paths[2]}#")] == ["corrupt_record"]
    assert len(_one_epoch(records, label_map)["image_ids"]) == len(records) < SHARDS * PER_SHARD
    faults.recovered()


def test_a_shard_rewritten_with_its_size_and_mtime_kept_is_caught_when_read_and_indexed_again(
        dataset, shard_reads, faults):
    """Same size, same modification time, other bytes (written again in another order, copied with its
    time kept): the index cannot tell without reading it, so each image read is checked against the crc32
    taken when it was indexed. Training stops naming the shard, its entry is dropped, the next start reads
    it again and every record gets its own image."""
    paths, label_map_file, records_made = dataset
    records, label_map, _ = _prepared(paths, label_map_file)
    before = os.stat(paths[1])
    identity = index.file_identity(str(paths[1]))
    again = write_tfrecords(records_made[1::SHARDS][::-1], LABEL_MAP, paths[1].parent / "again" / "x.record")[0]
    again.replace(paths[1])
    os.utime(paths[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    assert index.file_identity(str(paths[1])) == identity and paths[1].read_bytes() != b""
    faults.injected()

    shard_reads.clear()
    records, label_map, _ = _prepared(paths, label_map_file)  # a start that trusts the index
    assert shard_reads == []
    with pytest.raises(DataError, match=rf"{paths[1]}: bytes \d+-\d+ are not the image they held .* rewritten since"):
        _fit_one_step(records, label_map)  # as training meets it: inside Keras' fit
    assert not index._entry_path(str(paths[1]), LABEL_MAP.to_pbtxt()).exists()

    records, label_map, _ = _prepared(paths, label_map_file)
    assert shard_reads == [paths[1].name]
    made = {record.image_id: record.encoded_image for record in records_made}
    assert all(record.read_encoded() == made[record.image_id] for record in records)
    assert len(_one_epoch(records, label_map)["image_ids"]) == len(records)
    faults.recovered()
    faults.lost(0)
