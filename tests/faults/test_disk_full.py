"""A full disk (a small tmpfs where one can be mounted; else RLIMIT_FSIZE from a chosen moment on with
SIGXFSZ ignored, so writes fail with EFBIG as they do with ENOSPC) during a checkpoint save, during an
export and under every atomic write: a clear one-paragraph error, nothing half-written kept, what was
there before intact, and the rerun with room again carries on."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fault_runs import (assert_consistent, assert_same_as_reference, error_line, run_driver, tree_digest,
                        visible_exports, write_fault_config)

LIMIT = 1_000_000  # bytes: a checkpoint's data file (3 MB) and the SavedModel's variables do not fit; logs do


@contextlib.contextmanager
def small_filesystem(path: Path, size: int):
    """A tmpfs of `size` bytes at `path`, and a function that grows it; None where mounting is refused
    (not root, or a sandbox that forbids it): the caller falls back to RLIMIT_FSIZE."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield lambda new_size: subprocess.run(["mount", "-o", f"remount,size={new_size}", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_is_a_clear_error_and_the_rerun_resumes(
        fault_reference, shapes_dataset, tmp_path, faults):
    """On a tmpfs with room for two checkpoints and a bit (a real ENOSPC) where one can be mounted, else
    with a file size limit from step 30's save on; then room again and the same command."""
    _, reference_dir, _ = fault_reference
    checkpoint_size = sum(path.stat().st_size for path in (reference_dir / "checkpoints" / "step-0000050").iterdir())
    with small_filesystem(tmp_path / "disk", int(2.5 * checkpoint_size) + 1_000_000) as grow:
        run_dir = (tmp_path / "disk" if grow else tmp_path) / "run"
        config = write_fault_config(tmp_path / "config.yaml", shapes_dataset, run_dir)
        full = run_driver("none" if grow else f"full-save:30:{LIMIT}", "train", str(config), "--quiet")
        faults.injected()
        assert full.returncode == 1, full.stderr[-3000:]
        message = error_line(full.stderr, "train")
        assert ".partial-step-0000030: cannot write the checkpoint of step 30: no space left for it (" in message
        assert ("No space left on device" if grow else "File too large") in message, message
        assert "resumes from step-0000020" in message
        ledger, lost = assert_consistent(run_dir)  # the kept ones, the best among them, match their sha256
        faults.lost(lost)
        assert lost == 0 and [row["step"] for row in ledger["history"]] == [10, 20]
        assert not list((run_dir / "checkpoints").glob(".partial-*"))

        if grow:
            grow(64 << 20)
        resumed = run_driver("none", "train", str(config), "--quiet")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_as_reference(run_dir, reference_dir)
        faults.recovered()


@pytest.mark.slow
def test_a_full_disk_during_an_export_publishes_nothing_and_keeps_the_previous_export(fault_reference, tmp_path,
                                                                                      faults):
    _, reference_dir, _ = fault_reference
    out = tmp_path / "exports" / "best"
    # The export already there, made in this process (a fresh one would only repeat the start-up).
    from detkeeper.export.exporter import export_model
    assert export_model(reference_dir, out=out).verification.passed
    previous = tree_digest(out)

    full = run_driver(f"full-export:{LIMIT}", "export", str(reference_dir), "--out", str(out), "--quiet",
                      "--overwrite")
    faults.injected()
    assert full.returncode == 1, full.stderr[-3000:]
    message = error_line(full.stderr, "export")
    assert ".partial-best/saved_model: cannot write the SavedModel: no space left" in message
    assert "No export was published" in message
    exports = visible_exports(out.parent)
    assert list(exports) == ["best"] and exports["best"]["passed"] is True
    lost = 0 if tree_digest(out) == previous else 1
    faults.lost(lost)
    assert lost == 0
    assert not list(out.parent.glob(".*"))  # the staging folder is gone
    faults.recovered()


ATOMIC_WRITES = r"""
import json, resource, signal, sys
from pathlib import Path
from detkeeper.errors import DetkeeperError
from detkeeper.files import atomic_write_text
from detkeeper.run.ledger import Ledger, RetentionPolicy

folder = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
results = {}
for name, write in {"text": lambda: atomic_write_text(folder / "notes.txt", "x" * 10000),
                    "ledger": lambda: Ledger(RetentionPolicy("val_mAP"), history=[
                        {"step": step, "checkpoint": "c", "monitor_value": 0.5, "metrics": {}}
                        for step in range(200)]).write(folder / "ledger.json")}.items():
    try:
        write()
        results[name] = "written"
    except DetkeeperError as error:
        results[name] = str(error)
print(json.dumps(results))
"""


def test_every_atomic_write_on_a_full_disk_is_a_clear_error_and_keeps_the_old_file(tmp_path, faults):
    (tmp_path / "notes.txt").write_text("before")
    (tmp_path / "ledger.json").write_text("{}")
    done = subprocess.run([sys.executable, "-c", ATOMIC_WRITES, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    faults.injected(2)
    for name, message in results.items():
        assert "no space left for it (File too large)" in message, (name, message)
        assert "Free some space and run the same command again" in message
    assert str(tmp_path / "notes.txt") in results["text"] and str(tmp_path / "ledger.json") in results["ledger"]
    assert (tmp_path / "notes.txt").read_text() == "before" and (tmp_path / "ledger.json").read_text() == "{}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ledger.json", "notes.txt"]  # no temporary files
    faults.recovered(2)


def test_converting_to_tfrecords_on_a_full_disk_is_a_clear_error_and_leaves_no_shard(shapes_dataset, tmp_path,
                                                                                    faults):
    out = tmp_path / "records"
    full = run_driver("full:4000", "data", "convert", str(shapes_dataset), "--split", "val", "--to", "tfrecord",
                      "--out", str(out / "val"), "--quiet")
    faults.injected()
    assert full.returncode == 1, full.stderr[-3000:]
    message = error_line(full.stderr, "data")
    assert f"{out / 'val'}: cannot write 1 TFRecord shard(s): no space left for it (File too large)" in message
    assert not out.exists() or not list(out.iterdir())  # no shard, no temporary file
    again = run_driver("none", "data", "convert", str(shapes_dataset), "--split", "val", "--to", "tfrecord",
                       "--out", str(out / "val"), "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "val-00000-of-00001").is_file()
    faults.recovered()
