"""Checkpoint files on disk: atomic saves, verified restores, TF's own state files kept working.

Each save writes a ``tf.train.Checkpoint`` into ``checkpoints/.partial-<name>/``, hashes its
files, renames the folder to ``checkpoints/<name>/`` and then commits it to the ledger. A crash
at any moment leaves either a committed checkpoint or a folder the ledger does not list, which is
reported and set aside as ``unrecorded-<name>-<time>``, never loaded, and removed once a checkpoint
of that step (or a later one) is committed. A recorded checkpoint saved again (a resume from an
older one because it was damaged) is set aside as ``replaced-<name>-<time>`` and left for the user
to inspect. TF's ``checkpoint`` state files are written too, so
``tf.train.latest_checkpoint(run/checkpoints)`` gives the latest checkpoint and
``tf.train.latest_checkpoint(run/checkpoints/best)`` the best one (the ledger's top).

The store needs no TensorFlow itself (the checkpoint to write is passed in), so the light
``detkeeper checkpoints`` command and the report read a run's checkpoints through it too.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from detkeeper.errors import DetkeeperError, RunFailed
from detkeeper.files import atomic_write_text, is_atomic_temp, is_out_of_space, out_of_space
from detkeeper.run.ledger import (CHECKPOINT_PREFIX, LEDGER_NAME, FileDigest, Ledger, LedgerEntry, RetentionPolicy,
                                  read_ledger)

logger = logging.getLogger("detkeeper.training")  # the name training's log handlers listen to

STEP_PREFIX = "step-"
STEP_FOLDER = re.compile(rf"{STEP_PREFIX}(\d+)")
BEST_DIR = "best"  # holds TF's state file that points at the best checkpoint
STATE_FILE = "checkpoint"  # TF's CheckpointState, read by tf.train.latest_checkpoint
PARTIAL_PREFIX = ".partial-"
SET_ASIDE_PREFIX = "unrecorded-"  # interrupted saves: removed once their step is committed again
REPLACED_PREFIX = "replaced-"  # recorded checkpoints saved again: kept, the user decides
WORKER_SCRATCH_PREFIX = ".worker-scratch-"  # a non-chief worker's throwaway save, beside checkpoints/
_SET_ASIDE_NAME = re.compile(rf"{SET_ASIDE_PREFIX}{STEP_PREFIX}(\d+)-\d+(?:-\d+)?")


def checkpoint_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:07d}"


def hash_files(folder: Path) -> dict[str, FileDigest]:
    digests = {}
    for path in sorted(folder.iterdir()):
        if path.is_file():
            sha = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            digests[path.name] = FileDigest(path.stat().st_size, sha.hexdigest())
    return digests


def damage(folder: Path, entry: LedgerEntry) -> str | None:
    """Why the files of `entry` cannot be trusted, or None when every size and sha256 matches."""
    if not folder.is_dir():
        return f"{folder} is missing"
    for name, expected in entry.files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected.size:
            return f"{path} has {path.stat().st_size} bytes, the ledger recorded {expected.size}"
    actual = hash_files(folder)
    for name, expected in entry.files.items():
        if actual[name].sha256 != expected.sha256:
            return f"{folder / name} does not match its sha256 in the ledger"
    return None


class CheckpointStore:
    """The ``checkpoints/`` folder of a run: save, retain, find and restore checkpoints.

    `is_chief` false (a non-chief worker under tf.distribute) writes into a temporary folder that
    is removed afterwards, the multi-worker pattern: every worker must take part in the save.
    """

    def __init__(self, directory: str | os.PathLike, policy: RetentionPolicy, *, is_chief: bool = True) -> None:
        self.directory = Path(directory)
        self.policy = policy
        self.is_chief = is_chief
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ledger_path = self.directory / LEDGER_NAME
        self.ledger = Ledger.read(self.ledger_path, policy) if self.ledger_path.exists() else Ledger(policy)
        self.last_save_seconds = 0.0

    # -- housekeeping ---------------------------------------------------------------------
    def tidy(self) -> list[str]:
        """Finish what an interrupted run left: prunes the ledger decided, partial and unrecorded
        folders. Returns one message per thing done, for the log."""
        messages = []
        if self.ledger.entries and self.is_chief:
            self._write_state_files()  # a ledger from before best was derived may have pointed elsewhere
        for name in list(self.ledger.pruned):
            folder = self.directory / name
            if folder.exists():
                shutil.rmtree(folder)
                messages.append(f"removed pruned checkpoint {name} (its removal was interrupted)")
        self.ledger.mark_pruned_done(self.ledger.pruned)
        recorded = {entry.name for entry in self.ledger.entries}
        for folder in sorted(self.directory.iterdir()):
            if folder.is_file() and is_atomic_temp(folder.name, LEDGER_NAME):
                folder.unlink()  # atomic_path's temporary file of a ledger write that was killed
                messages.append(f"removed {folder.name}: a ledger write that was interrupted")
                continue
            if not folder.is_dir() or folder.name == BEST_DIR:
                continue
            if folder.name.startswith(PARTIAL_PREFIX):
                shutil.rmtree(folder)
                messages.append(f"removed {folder.name}: a save that was interrupted before it finished")
            elif folder.name.startswith(STEP_PREFIX) and folder.name not in recorded:
                target = self._set_aside(folder, SET_ASIDE_PREFIX)
                messages.append(f"set aside {folder.name} as {target.name}: complete on disk but never "
                                "committed to the ledger (the run was interrupted during the save)")
        return messages

    # -- saving ---------------------------------------------------------------------------
    def save(self, checkpoint: Any, *, step: int, epoch: int, metrics: Mapping[str, float],
             ema: bool) -> LedgerEntry | None:
        """Write `checkpoint` (a ``tf.train.Checkpoint``) for `step`, commit it to the ledger, prune;
        returns the new entry."""
        started = time.perf_counter()
        name = checkpoint_name(step)
        value = float(metrics.get(self.policy.monitor, math.nan))
        if not self.is_chief:
            scratch = self.directory.parent / f"{WORKER_SCRATCH_PREFIX}{os.getpid()}"
            checkpoint.write(str(scratch / CHECKPOINT_PREFIX))
            shutil.rmtree(scratch, ignore_errors=True)
            return None
        partial = self.directory / f"{PARTIAL_PREFIX}{name}"
        if partial.exists():
            shutil.rmtree(partial)
        try:
            checkpoint.write(str(partial / CHECKPOINT_PREFIX))
        except Exception as error:
            if not is_out_of_space(error):
                raise
            shutil.rmtree(partial, ignore_errors=True)
            latest = self.ledger.latest
            raise RunFailed(
                f"{out_of_space(partial, error, f'the checkpoint of step {step}')} The checkpoints kept so far and "
                f"{LEDGER_NAME} are unchanged: the rerun resumes from "
                f"{latest.name if latest else 'the start'}.") from None
        files = hash_files(partial)
        final = self.directory / name
        if final.exists():
            self._set_aside_before_saving_again(final, step)
        partial.rename(final)
        entry = LedgerEntry(name=name, step=step, epoch=epoch, monitor_value=value,
                            metrics={key: float(val) for key, val in metrics.items()}, ema=ema,
                            files=files, created=time.time())
        dropped = self.ledger.add(entry)
        self._commit()
        for old in dropped:
            shutil.rmtree(self.directory / old.name, ignore_errors=True)
        self.ledger.mark_pruned_done(old.name for old in dropped)
        if dropped:
            self.ledger.write(self.ledger_path)
        self._remove_superseded_set_asides(entry)
        self.last_save_seconds = time.perf_counter() - started
        return entry

    def set_status(self, **status) -> None:
        """Record how the run ended (or that it is training) in the ledger."""
        self.ledger.status = dict(status)
        if self.is_chief:
            self.ledger.write(self.ledger_path)

    def _set_aside(self, folder: Path, prefix: str) -> Path:
        """Rename `folder` to ``<prefix><name>-<time>`` (a suffix when that name is taken)."""
        stem = f"{prefix}{folder.name}-{int(time.time())}"
        target, count = self.directory / stem, 1
        while target.exists():
            target, count = self.directory / f"{stem}-{count}", count + 1
        folder.rename(target)
        return target

    def _set_aside_before_saving_again(self, final: Path, step: int) -> None:
        """`final` is in the way of the save of `step`: a recorded checkpoint (resumed from an older
        one because this one was damaged) is kept aside for inspection; anything else is an
        interrupted save, set aside until this save commits."""
        recorded = self.ledger.by_name(final.name)
        if recorded is None:
            target = self._set_aside(final, SET_ASIDE_PREFIX)
            logger.warning("set aside %s as %s: complete on disk but never committed to the ledger",
                           final.name, target.name)
            return
        reason = damage(final, recorded) or "its files match the ledger"
        target = self._set_aside(final, REPLACED_PREFIX)
        logger.warning("set aside the recorded checkpoint %s as %s: step %d is saved again (%s). detkeeper "
                       "never removes it; delete it once you no longer need it.", final.name, target.name,
                       step, reason)

    def _remove_superseded_set_asides(self, committed: LedgerEntry) -> None:
        """Remove ``unrecorded-step-*`` folders of a step at or before `committed`: the run has a
        committed checkpoint of that point now, so the interrupted save they hold is of no use."""
        for folder in sorted(self.directory.glob(f"{SET_ASIDE_PREFIX}{STEP_PREFIX}*")):
            match = _SET_ASIDE_NAME.fullmatch(folder.name)
            if match is None or not folder.is_dir() or int(match.group(1)) > committed.step:
                continue
            try:
                shutil.rmtree(folder)
            except OSError as error:  # the checkpoint is committed; a leftover folder must not stop training
                logger.warning("could not remove %s (%s); it is not used, delete it by hand", folder, error)
                continue
            what = "committed again" if int(match.group(1)) == committed.step else f"passed by {committed.name}"
            logger.info("removed %s: " + STEP_PREFIX + "%s is %s, so the interrupted save it held is not needed",
                        folder.name, match.group(1), what)

    def _commit(self) -> None:
        """Ledger first (the commit point), then TF's state files that point into it."""
        self.ledger.write(self.ledger_path)
        self._write_state_files()

    def _write_state_files(self) -> None:
        by_step = sorted(self.ledger.entries, key=lambda entry: entry.step)
        if by_step:
            write_state_file(self.directory, [f"{entry.name}/{entry.prefix}" for entry in by_step])
        best = self.ledger.best
        if best is not None:
            write_state_file(self.directory / BEST_DIR, [f"../{best.name}/{best.prefix}"])

    # -- finding and restoring --------------------------------------------------------------
    def path_of(self, entry: LedgerEntry) -> str:
        return str(self.directory / entry.name / entry.prefix)

    def latest_intact(self) -> tuple[LedgerEntry | None, list[str]]:
        """The latest entry whose files match the ledger, and a message for each one skipped.

        Damaged entries are reported and left on disk (never deleted, never loaded)."""
        problems = []
        for entry in sorted(self.ledger.entries, key=lambda item: item.step, reverse=True):
            reason = damage(self.directory / entry.name, entry)
            if reason is None:
                return entry, problems
            problems.append(f"checkpoint {entry.name} (step {entry.step}) is skipped: {reason}")
        return None, problems

    def resolve(self, which: str = "best") -> LedgerEntry:
        """`best`, `latest`, or a step number -> a verified ledger entry; a clear error otherwise."""
        entries = self.ledger.entries
        if not entries:
            raise DetkeeperError(f"{self.directory}: no checkpoints recorded in {LEDGER_NAME} yet")
        if which == "best":  # the top of the ledger's ranking; the latest when every value is NaN
            entry = self.ledger.best or self.ledger.latest
        elif which == "latest":
            entry = self.ledger.latest
        elif str(which).isdigit():
            entry = next((item for item in entries if item.step == int(which)), None)
            if entry is None:
                steps = ", ".join(str(item.step) for item in sorted(entries, key=lambda e: e.step))
                raise DetkeeperError(f"{self.directory}: no kept checkpoint at step {which}; kept steps: {steps}")
        else:
            raise DetkeeperError(f"checkpoint {which!r}: expected best, latest or a step number")
        reason = damage(self.directory / entry.name, entry)
        if reason:
            raise DetkeeperError(f"checkpoint {entry.name} cannot be trusted: {reason}")
        return entry


def write_state_file(directory: Path, paths: list[str]) -> None:
    """TF's ``checkpoint`` text proto (CheckpointState), so ``tf.train.latest_checkpoint`` works."""
    lines = [f'model_checkpoint_path: "{paths[-1]}"']
    lines += [f'all_model_checkpoint_paths: "{path}"' for path in paths]
    atomic_write_text(directory / STATE_FILE, "\n".join(lines) + "\n")


def checkpoint_entry(run, which: str) -> tuple[CheckpointStore, LedgerEntry]:
    """The checkpoint store of `run` (a :class:`~detkeeper.run.layout.RunDirectory`) and the
    verified ledger entry `which` (best, latest or a step) names."""
    store = CheckpointStore(run.checkpoints_path, read_ledger(run).policy)
    return store, store.resolve(which)
