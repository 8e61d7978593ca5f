"""SIGKILL `detkeeper train` in this process at a chosen moment (fault_driver.py arms them).

``arm(moment, step)`` where MOMENT is ``step`` (right after optimizer step STEP), ``save``
(checkpoint files of STEP written, not yet hashed, renamed or committed) or ``ledger`` (in the middle of the ledger write that commits STEP:
half of the new ledger written into its temporary file beside ``ledger.json`` by the real
``files.atomic_path``, not yet renamed over it; the folder of STEP is already in place).
Only test code patches detkeeper here; the product has no fault hooks.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from detkeeper import files
from detkeeper.run import checkpoints, ledger
from detkeeper.training import progress


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
        kill_mid_ledger_write(lambda new: any(entry["step"] == step for entry in new["checkpoints"]))
    elif moment != "none":
        raise SystemExit(f"unknown moment {moment!r}")


def kill_mid_ledger_write(picks) -> None:
    """Die halfway through the first ledger write whose new content (a dict) `picks` returns true for:
    half of it in atomic_path's temporary file beside ``ledger.json``, not yet renamed over it."""
    write_text = ledger.atomic_write_text

    def kill_mid_write(path, text):
        if Path(path).name == checkpoints.LEDGER_NAME and picks(json.loads(text)):
            data = text.encode("utf-8")
            with files.atomic_path(path) as partial:
                partial.write_bytes(data[: len(data) // 2])
                die()
        return write_text(path, text)

    ledger.atomic_write_text = kill_mid_write

