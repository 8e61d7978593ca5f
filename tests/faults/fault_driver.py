"""Run a `detkeeper` command in this process with one fault armed: a SIGKILL at a chosen moment, or
a full disk from a chosen moment on.

``python fault_driver.py MOMENT detkeeper-args...`` runs ``detkeeper.cli.main.main(args)`` and exits
with its status, unless the fault kills the process first. MOMENT is ``none`` or ``KIND[:STEP]``:

training (``detkeeper train``)
  ``step:S``     right after optimizer step S              (training_kills.py)
  ``save:S``     checkpoint files of S written, not yet hashed or renamed (training_kills.py)
  ``ledger:S``   half of the ledger that commits S written (training_kills.py)
  ``eval:S``     inside the validation pass at step S, after its first batch was scored
  ``write:S``    mid checkpoint write of S: its data file cut to half in ``.partial-step-S``
  ``prune:S``    S committed, the checkpoints it outranked removed, the ledger not yet told
  ``status``     half of the ledger that records the run as finished written
dataset index (``detkeeper data check``, ``train``: any command that indexes TFRecords)
  ``index:N``    inside the write of the N-th index entry: half its bytes in the temporary file
export (``detkeeper export``)
  ``export-save``     the SavedModel written into the ``.partial-`` folder, nothing else yet
  ``export-keras``    inside the ``.keras`` archive write, after the SavedModel
  ``export-verify``   the fresh-process verification ran, its answers not yet compared
  ``export-publish``  verified, at the rename that publishes it (with --overwrite: the old export
                      already moved aside)
full disk (RLIMIT_FSIZE, SIGXFSZ ignored, so writes fail with EFBIG as on a full disk)
  ``full:BYTES``          no file may grow past BYTES, from the start (any command)
  ``full-save:S:BYTES``   no file may grow past BYTES from the checkpoint save of step S on
  ``full-export:BYTES``   the same from the SavedModel write of an export on

Only test code patches detkeeper here; the product has no fault hooks.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

from training_kills import arm as arm_training_kill, die, kill_mid_ledger_write  # step, save, ledger

TRAINING_KINDS = ("step", "eval", "write", "save", "ledger", "prune", "status")
EXPORT_KINDS = ("export-save", "export-keras", "export-verify", "export-publish")


def limit_file_size(size: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _iterations(model) -> int:
    return int(model.optimizer.iterations.numpy())


def arm_eval(step: int) -> None:
    from detkeeper.evaluation.callback import CocoEvaluationCallback

    run = CocoEvaluationCallback._run

    def run_and_die_midway(self):
        if _iterations(self.model) == step:
            self.on_progress = lambda count: die()  # after the first batch of detections was scored
        return run(self)

    CocoEvaluationCallback._run = run_and_die_midway


def arm_write(step: int) -> None:
    import tensorflow as tf

    from detkeeper.run import checkpoints

    write = tf.train.Checkpoint.write

    def write_half_and_die(self, file_prefix, options=None):
        path = write(self, file_prefix, options)
        folder = Path(file_prefix).parent
        if folder.name == checkpoints.PARTIAL_PREFIX + checkpoints.checkpoint_name(step):
            data = max(folder.glob("*.data-*"), key=lambda item: item.stat().st_size)
            with data.open("r+b") as handle:
                handle.truncate(data.stat().st_size // 2)
            die()
        return path

    tf.train.Checkpoint.write = write_half_and_die


def arm_prune(step: int) -> None:
    writes = []

    def the_write_after_pruning(data):  # save() writes the ledger twice when it prunes: commit, then done
        if data["history"] and data["history"][-1]["step"] == step and data["status"]["state"] == "training":
            writes.append(data)
            if len(writes) == 2:
                if writes[0]["pruned"] == []:
                    raise SystemExit(f"nothing was pruned at step {step}: prune:{step} is not a moment of this run")
                return True
        return False

    kill_mid_ledger_write(the_write_after_pruning)


def arm_index(count: int) -> None:
    import threading

    from detkeeper.data import index
    from detkeeper.files import atomic_path

    write, lock, writes = index.atomic_write_bytes, threading.Lock(), []

    def write_half_and_die(path, data):  # entries are written from the index's threads
        with lock:
            writes.append(path)
            nth = len(writes)
        if nth == count:
            with atomic_path(path) as tmp:
                tmp.write_bytes(data[: len(data) // 2])
                die()
        return write(path, data)

    index.atomic_write_bytes = write_half_and_die


def then_die(function):
    def call_then_die(*args):
        function(*args)
        die()

    return call_then_die


def arm_export(kind: str) -> None:
    from detkeeper.export import exporter, verify
    from detkeeper.run import exports

    if kind == "export-save":
        exporter._save_saved_model = then_die(exporter._save_saved_model)
    elif kind == "export-keras":
        save_keras = exporter.save_keras_archive  # where export_model looks it up

        def die_inside(model, path):
            from detkeeper.files import atomic_path

            with atomic_path(path, suffix=".tmp.keras") as tmp:
                tmp.write_bytes(b"PK\x03\x04 half an archive")
                die()
            return save_keras(model, path)

        exporter.save_keras_archive = die_inside
    elif kind == "export-verify":  # the fresh process answered; killed while comparing its answers
        verify._run_standalone = then_die(verify._run_standalone)
    elif kind == "export-publish":
        class DieAtPublish:
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(source, target):
                if Path(source).name.startswith(exports.PARTIAL_PREFIX) and \
                        not Path(source).name.startswith(exports.REPLACED_PREFIX):
                    die()
                return os.replace(source, target)

        exporter.os = DieAtPublish()


def arm_full_disk(kind: str, arguments: list[str]) -> None:
    if kind == "full-save":
        from detkeeper.run.checkpoints import CheckpointStore

        step, size = int(arguments[0]), int(arguments[1])
        save = CheckpointStore.save

        def save_on_a_full_disk(self, checkpoint, **kwargs):
            if kwargs["step"] == step:
                limit_file_size(size)
            return save(self, checkpoint, **kwargs)

        CheckpointStore.save = save_on_a_full_disk
    else:
        from detkeeper.export import exporter

        size = int(arguments[0])
        save = exporter._save_saved_model

        def save_on_a_full_disk(module, path):
            limit_file_size(size)
            return save(module, path)

        exporter._save_saved_model = save_on_a_full_disk


def arm(moment: str) -> None:
    kind, *arguments = moment.split(":")
    if kind in ("none",):
        return
    if kind in ("step", "save", "ledger"):
        arm_training_kill(kind, int(arguments[0]))
    elif kind == "index":
        arm_index(int(arguments[0]))
    elif kind == "eval":
        arm_eval(int(arguments[0]))
    elif kind == "write":
        arm_write(int(arguments[0]))
    elif kind == "prune":
        arm_prune(int(arguments[0]))
    elif kind == "status":
        kill_mid_ledger_write(lambda data: data["status"]["state"] != "training")
    elif kind in EXPORT_KINDS:
        arm_export(kind)
    elif kind == "full":
        limit_file_size(int(arguments[0]))
    elif kind in ("full-save", "full-export"):
        arm_full_disk(kind, arguments)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def run(moment: str, args: list[str]) -> int:
    """Arm `moment`, then ``detkeeper ARGS``: the exit status (unless the fault kills the process)."""
    from detkeeper.cli.main import main

    arm(moment)
    return main(args)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2:]))
