"""TFRecord datasets in object stores (issue 18): a URL tf.io.gfile reads (``gs://``; ``ram://`` stands in
for one here, it lives in this process only) is globbed, read, indexed in the local cache and streamed
by the pipeline as the same shards on disk are; a replaced object is read again even where the store
reports no modification time."""

from __future__ import annotations

import io
import json
import os
import re
import uuid

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from detkeeper.cli.main import main
from detkeeper.data import index, tfrecord
from detkeeper.data.pipeline import Augmentation, training_dataset
from detkeeper.data.record import ByteSpan
from detkeeper.data.sources import detect_format
from detkeeper.data.tfrecord import expand_paths, read_tfrecords
from detkeeper.data.tfrecord_writer import write_tfrecords
from detkeeper.errors import DataError
from detkeeper.files import cache_directory

from test_tfrecord import LABEL_MAP, make_record


def _size(index: int) -> tuple[int, int]:
    return 56 + 2 * index, 32 + index  # (width, height): each image its own, every box of make_record inside


def _jpeg(index: int) -> bytes:
    """A small JPEG of its own size and colour, so a batch shows which image was read."""
    buffer = io.BytesIO()
    Image.new("RGB", _size(index), (20 * index, 255 - 20 * index, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def _record(index: int, **overrides):
    width, height = _size(index)
    return make_record(index, num_boxes=1 + index % 2, encoded_image=_jpeg(index), width=width, height=height,
                       **overrides)


def _records(count: int = 6):
    return [_record(i) for i in range(count)]


@pytest.fixture
def bucket():
    """A fresh ``ram://`` location, emptied afterwards (the file system lives as long as the process)."""
    root = f"ram://bucket-{uuid.uuid4().hex[:12]}"
    tf.io.gfile.makedirs(f"{root}/data")
    yield root
    tf.io.gfile.rmtree(root)


@pytest.fixture
def shards(tmp_path, bucket):
    """The same 2 shards on disk and in the bucket: (disk glob, URL glob, URLs)."""
    disk = write_tfrecords(_records(), LABEL_MAP, tmp_path / "disk" / "train", num_shards=2)
    urls = [f"{bucket}/data/{path.name}" for path in disk]
    for path, url in zip(disk, urls):
        tf.io.gfile.copy(str(path), url)
    return str(tmp_path / "disk" / "train-*"), f"{bucket}/data/train-*", urls


@pytest.fixture
def reads(monkeypatch):
    """The shards read from their files (in the order their threads got to them)."""
    done = []
    read_file = tfrecord.read_tfrecord_file
    monkeypatch.setattr(tfrecord, "read_tfrecord_file", lambda file, label_map: done.append(file) or
                        read_file(file, label_map))
    return done


def _replace(url: str, data: bytes) -> None:
    """What uploading a new version of an object does; ram:// appends when a file is opened for writing
    again, so the old object is removed first."""
    tf.io.gfile.remove(url)
    with tf.io.gfile.GFile(url, "wb") as handle:
        handle.write(data)


def test_a_url_glob_reads_the_records_the_same_shards_give_on_disk(shards):
    disk_glob, url_glob, urls = shards
    on_disk = read_tfrecords(disk_glob, LABEL_MAP, check_images=True)
    remote = read_tfrecords(url_glob, LABEL_MAP, check_images=True)
    assert remote.records.files == urls  # the URLs as they are, not made into paths (gs:/bucket/...)
    assert len(remote.records) == 6 and remote.problems == on_disk.problems == []
    assert remote.checked == on_disk.checked == []
    for got, wanted in zip(remote.records, on_disk.records):
        assert got.image_id == wanted.image_id and (got.width, got.height) == (wanted.width, wanted.height)
        assert got.source.startswith(urls[0] + "#") or got.source.startswith(urls[1] + "#")
        assert got.source.rsplit("/", 1)[1] == wanted.source.rsplit("/", 1)[1]
        assert (got.image_span.offset, got.image_span.length) == (wanted.image_span.offset, wanted.image_span.length)
        assert got.read_encoded() == wanted.read_encoded()
        for field in ("boxes", "class_ids", "is_crowd", "area"):
            np.testing.assert_array_equal(getattr(got, field), getattr(wanted, field), err_msg=field)


def test_a_second_read_comes_from_the_local_index(shards, reads):
    _, url_glob, urls = shards
    first = read_tfrecords(url_glob, LABEL_MAP, check_images=True)
    assert sorted(reads) == urls
    entry = index._entry_path(urls[0], LABEL_MAP.to_pbtxt())
    assert entry.is_file() and cache_directory("index") in entry.parents  # kept on this machine
    again = read_tfrecords(url_glob, LABEL_MAP, check_images=True)
    assert sorted(reads) == urls  # neither shard read again
    assert again.records.files == urls and list(again.records.image_ids) == list(first.records.image_ids)
    assert again.records[5].read_encoded() == first.records[5].read_encoded()


def test_a_replaced_object_of_the_same_size_is_read_again(shards, reads, tmp_path):
    """ram:// reports no modification time (0), as some stores do: the index then keys an object by its
    size and a fingerprint of its first and last bytes, so a new version of the same size is seen."""
    _, url_glob, urls = shards
    read_tfrecords(url_glob, LABEL_MAP)
    before = tf.io.gfile.stat(urls[1])
    # Shard 1 holds records 1, 3 and 5; the new version renames them, ids of the same length: the same size.
    renamed = [_record(i, image_id=f"new_{i:03d}") for i in (1, 3, 5)]
    (new,) = write_tfrecords(renamed, LABEL_MAP, tmp_path / "new" / "shard", num_shards=1)
    _replace(urls[1], new.read_bytes())
    after = tf.io.gfile.stat(urls[1])
    assert (after.length, after.mtime_nsec) == (before.length, before.mtime_nsec) == (before.length, 0)
    reads.clear()
    readout = read_tfrecords(url_glob, LABEL_MAP)
    assert reads == [urls[1]]  # shard 0 still from the index
    assert [r.image_id for r in readout.records] == ["img_000", "img_002", "img_004", "new_001", "new_003", "new_005"]
    assert readout.records[4].read_encoded() == _jpeg(3)


def test_a_local_file_without_a_modification_time_is_fingerprinted_too(tmp_path, reads):
    """The rule is the file system's, not the scheme's: a local file whose mtime is 0 (an archive that
    reset it) is recognised by its size and fingerprint as well."""
    (path,) = write_tfrecords(_records(2), LABEL_MAP, tmp_path / "train", num_shards=1)
    os.utime(path, ns=(0, 0))
    read_tfrecords(path, LABEL_MAP)
    write_tfrecords([_record(i, image_id=f"new_{i:03d}") for i in range(2)], LABEL_MAP, tmp_path / "new",
                    num_shards=1)[0].replace(path)
    os.utime(path, ns=(0, 0))
    assert [r.image_id for r in read_tfrecords(path, LABEL_MAP).records] == ["new_000", "new_001"]
    assert len(reads) == 2
    read_tfrecords(path, LABEL_MAP)
    assert len(reads) == 2  # unchanged: from the index


def test_the_pipeline_makes_the_same_batches_from_a_url_as_from_disk(shards):
    """Two epochs of training batches (every record read twice, augmented): bit for bit the same. The
    evaluation pipeline reads records the same way (`_RecordTensors.example`)."""
    disk_glob, url_glob, _ = shards
    batches = []
    for pattern in (disk_glob, url_glob):
        records = read_tfrecords(pattern, LABEL_MAP).records
        train = training_dataset(records, LABEL_MAP, image_size=32, batch_size=4, max_boxes=3,
                                 augmentation=Augmentation(), seed=3)
        batches.append([{key: value.numpy() for key, value in batch.items()} for batch in train.take(3)])
    on_disk, remote = batches
    assert len(remote) == len(on_disk) == 3
    for got, wanted in zip(remote, on_disk):
        assert got.keys() == wanted.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], wanted[key], err_msg=key)
    assert {image_id for batch in remote for image_id in batch["image_ids"]} == {f"img_{i:03d}".encode() for i in range(6)}


def test_a_span_of_an_object_cut_short_is_an_os_error_naming_it(shards):
    _, url_glob, urls = shards
    last = read_tfrecords(url_glob, LABEL_MAP).records[-1]
    with tf.io.gfile.GFile(urls[1], "rb") as handle:
        data = handle.read()
    _replace(urls[1], data[: last.image_span.offset + 10])
    with pytest.raises(OSError, match=f"{urls[1]} ends at byte {last.image_span.offset + 10}, before"):
        last.read_encoded()
    _replace(urls[1], data[:100])  # ends before the span starts
    with pytest.raises(OSError, match=f"{urls[1]} ends at byte 100, before"):
        last.read_encoded()
    with pytest.raises(FileNotFoundError, match=f"{urls[0]}.gone"):
        ByteSpan(urls[0] + ".gone", 0, 4).read()


def test_url_patterns_are_globbed_sorted_and_a_pattern_matching_nothing_names_itself(shards, bucket):
    disk_glob, _, urls = shards
    assert expand_paths(f"{urls[1]}, {urls[0]}") == urls
    assert expand_paths([f"{bucket}/data/train-0000[01]-of-00002", disk_glob])[:2] == [
        str(p) for p in expand_paths(disk_glob)]  # local files first, then URLs, each sorted
    with pytest.raises(DataError, match=re.escape(f"no TFRecord file matches '{bucket}/data/val-*'")):
        expand_paths(f"{bucket}/data/val-*")
    with pytest.raises(DataError, match=r"cannot list 'nosuch://bucket/x-\*'.*not implemented"):
        expand_paths("nosuch://bucket/x-*")
    with pytest.raises(DataError, match=f"{bucket}/data: a folder, not a file"):
        read_tfrecords(f"{bucket}/*", LABEL_MAP)
    assert detect_format(urls[0]) == "tfrecord"  # a shard name without a TFRecord suffix


def test_data_check_and_convert_read_a_url_dataset(shards, tmp_path, capsys):
    """`detkeeper data check` and `data convert` in this process (ram:// is per process), through the CLI."""
    _, url_glob, _ = shards
    LABEL_MAP.write(tmp_path / "label_map.pbtxt")
    assert main(["data", "check", url_glob, "--label-map", str(tmp_path / "label_map.pbtxt"), "--json",
                 "--quiet"]) == 0
    (split,) = json.loads(capsys.readouterr().out)["splits"]
    assert (split["records_read"], split["records_usable"], split["problems"]) == (6, 6, {})
    out = tmp_path / "copy" / "train"
    assert main(["data", "convert", url_glob, "--to", "tfrecord", "--out", str(out), "--quiet"]) == 0
    copied = read_tfrecords(f"{out}-*", LABEL_MAP).records
    assert sorted(r.image_id for r in copied) == [f"img_{i:03d}" for i in range(6)]
    assert {r.image_id: r.read_encoded() for r in copied}["img_004"] == _jpeg(4)
    capsys.readouterr()
    assert main(["data", "convert", url_glob, "--to", "tfrecord", "--out", f"{shards[1][:-8]}/copy",
                 "--quiet"]) == 2
    assert "writes local files only" in capsys.readouterr().err
    with pytest.raises(DataError, match="writes local files only"):
        write_tfrecords(_records(1), LABEL_MAP, f"{shards[1][:-8]}/copy")
