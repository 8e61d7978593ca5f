"""File helpers every writer in detkeeper goes through.

Writes are atomic: data goes to a temporary file in the destination's directory, is flushed to
disk, then renamed over the destination, so a crash leaves either the old file or the new one and
never a half-written one. Paths named inside datasets are confined to the dataset's root.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from detkeeper.errors import DataError, RunFailed

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: What TF OD API sample configs leave for the user to fill in: ``gs://${YOUR_GCS_BUCKET}/...``
#: (the older samples) and ``PATH_TO_BE_CONFIGURED`` (the TF2 model zoo's).
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|PATH_TO_BE_CONFIGURED")

OUT_OF_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
OUT_OF_SPACE_TEXTS = ("no space left", "file too large", "disk quota exceeded")


def is_url(path: str) -> bool:
    """``gs://bucket/x``, ``s3://...``, ``ram://...``: a location tf.io.gfile reads, never a local
    path to make absolute or relative."""
    return bool(_URL_SCHEME.match(path))


def unfilled_placeholders(path: str) -> list[str]:
    """The placeholders in `path` a user still has to replace (``${YOUR_GCS_BUCKET}``), in order."""
    return _PLACEHOLDER.findall(path)


def _new_file_mode() -> int:
    """The mode `open()` gives a new file under this process's umask (0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


def json_number(value) -> float | None:
    """JSON has no NaN or infinity: such a value (a metric that diverged) is written as null."""
    return None if value is None or not math.isfinite(value) else float(value)


def is_atomic_temp(name: str, target: str) -> bool:
    """Whether file `name` is :func:`atomic_path`'s temporary file for `target`, left by a killed write."""
    return name.startswith(f".{target}.") and name.endswith(".tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for a writer that needs a file name (e.g. Keras' ``save_model``).

    When the block ends without error the file is flushed to disk and renamed over `path`;
    otherwise it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp_name, _NEW_FILE_MODE)  # mkstemp's 0600 would make reports and exports private
    try:
        yield Path(tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        Path(tmp_name).unlink(missing_ok=True)
        if is_out_of_space(error):
            raise out_of_space(path, error) from None
        raise
    fsync_directory(path.parent)


def is_out_of_space(error: BaseException) -> bool:
    """Whether `error` (an OSError, or TensorFlow's error for a failed file write) says the disk is
    full, the quota is used up or a file size limit was reached."""
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE_ERRNOS:
        return True
    text = str(getattr(error, "message", error)).lower()
    return type(error).__module__.startswith("tensorflow") and any(part in text for part in OUT_OF_SPACE_TEXTS)


def out_of_space(path: str | os.PathLike, error: BaseException, what: str = "") -> RunFailed:
    """The error for a write to `path` that failed for lack of space (see `is_out_of_space`)."""
    if isinstance(error, OSError) and error.strerror:
        detail = error.strerror
    else:  # TensorFlow's: "{{function_node ...}} PATH.tempstate123; File too large [Op:SaveV2]"
        detail = str(getattr(error, "message", error)).strip().splitlines()[-1].rsplit(";", 1)[-1]
    return RunFailed(
        f"{path}: cannot write{' ' + what if what else ''}: no space left for it ({detail.strip()}); the disk is "
        "full, the quota is used up or a file size limit is set. Nothing half-written was kept. Free some space "
        "and run the same command again.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same directory + fsync + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        # Some filesystems (and Windows) refuse fsync on a directory; the rename already happened.
        return
    finally:
        os.close(fd)


def resolve_inside(root: str | os.PathLike, relative: str, *, what: str, source: str) -> Path:
    """Join `relative` onto `root`, refusing names that escape it (`../../x.jpg`, absolute paths).

    `what` and `source` name the field and the file it came from, for the error message.
    """
    root_path = Path(root).resolve()
    candidate = (root_path / relative).resolve()
    if candidate != root_path and root_path not in candidate.parents:
        raise DataError(
            f"{source}: {what} {relative!r} points outside the dataset root {root_path}; "
            "detkeeper only reads files inside the dataset's own folder."
        )
    return candidate


def read_user_text(path: str | os.PathLike, what: str) -> str:
    """Read a UTF-8 file the user pointed at; failures become a DataError naming the file and `what` it is."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the {what} ({error})") from None


def cache_directory(kind: str) -> Path:
    """``$DETKEEPER_CACHE/<kind>`` (default ``$XDG_CACHE_HOME/detkeeper`` or ``~/.cache/detkeeper``):
    what detkeeper derives from a user's files once and reuses, never the only copy of anything."""
    root = os.environ.get("DETKEEPER_CACHE")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "detkeeper")
    return Path(root) / kind
