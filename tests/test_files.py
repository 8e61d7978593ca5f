"""Atomic writes leave the old file or the new one, never a torn one; dataset paths stay inside their root."""

import stat

import pytest

from detkeeper.errors import DataError, DetkeeperError
from detkeeper.files import atomic_write_bytes, atomic_write_text, resolve_inside


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "ledger.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["ledger.json"]


def test_atomic_writes_get_the_mode_a_plain_open_would_give(tmp_path):
    """Not mkstemp's 0600: a report or export written by detkeeper is as readable as any file the user writes."""
    written = atomic_write_text(tmp_path / "report.html", "<html></html>")
    (tmp_path / "plain.html").write_text("<html></html>")
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.html").stat().st_mode)


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "ledger.json"
    atomic_write_text(target, "previous")

    def broken_replace(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("detkeeper.files.os.replace", broken_replace)
    with pytest.raises(DetkeeperError, match=r"ledger.json: cannot write: no space left for it \(No space left on device\)"):
        atomic_write_bytes(target, b"new")  # a full disk is the user's to fix: one clear paragraph
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


@pytest.mark.parametrize("name", ["../../x.jpg", "/etc/passwd", "a/../../b.jpg"])
def test_paths_escaping_the_root_are_refused(tmp_path, name):
    with pytest.raises(DataError, match="outside the dataset root"):
        resolve_inside(tmp_path, name, what="file_name", source="instances.json")


def test_paths_inside_the_root_resolve(tmp_path):
    assert resolve_inside(tmp_path, "images/a.jpg", what="f", source="s") == tmp_path.resolve() / "images" / "a.jpg"
