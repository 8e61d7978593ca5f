"""Run `detkeeper train CONFIG` in this process and SIGKILL it at a chosen moment.

Used by the resume tests: ``python kill_driver.py CONFIG MOMENT STEP`` where MOMENT is
``step`` (right after optimizer step STEP), ``save`` (checkpoint files of STEP written, not yet
hashed, renamed or committed) or ``ledger`` (just before the ledger write that commits STEP).
Only test code patches detkeeper here; the product has no fault hooks.
"""

from __future__ import annotations

import os
import signal
import sys

from detkeeper.training import checkpoints, ledger, progress, trainer


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(moment: str, step: int) -> None:
    if moment == "step":
        after_batch = progress.ProgressCallback.on_train_batch_end

        def kill_after_step(self, batch, logs=None):
            after_batch(self, batch, logs)
            if int(self.model.optimizer.iterations.numpy()) == step:
                die()

        progress.ProgressCallback.on_train_batch_end = kill_after_step
    elif moment == "save":
        hash_files = checkpoints.hash_files

        def kill_while_saving(folder):
            if folder.name == checkpoints.PARTIAL_PREFIX + checkpoints.checkpoint_name(step):
                die()
            return hash_files(folder)

        checkpoints.hash_files = kill_while_saving
    elif moment == "ledger":
        write = ledger.Ledger.write

        def kill_before_commit(self, path):
            if any(entry.step == step for entry in self.entries):
                die()
            return write(self, path)

        ledger.Ledger.write = kill_before_commit
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    config_path, moment, kill_step = sys.argv[1], sys.argv[2], int(sys.argv[3])
    arm(moment, kill_step)
    trainer.train(config_path)
