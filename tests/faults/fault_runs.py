"""The fault suite's training run, and the checks every fault ends with.

The run is tests/training's small run made smaller still (96 px, a 16-channel pyramid of three levels,
one 16-channel head convolution, batch 4, 50 steps, an evaluation every 10): each process costs mostly
its start and its first trace, so a kill costs seconds. The model is fcos_tiny with the options a
resumed run must reproduce exactly switched on: the ATSS assigner and quality focal loss (issue 19),
and every random augmentation but the mosaic. Its mAP climbs and wobbles, so the best is not the latest
and keep_best 2 / keep_last 1 prunes at steps 30, 40 and 50: seed 0 gives 0.001, 0.049, 0.025, 0.081,
0.060 (2026-12-06, with the fused BatchNormalization and GroupNormalization kernels, which change the
rounding and so the curve: with the fused BatchNormalization alone seed 0 climbed without a dip and seed 5
gave 0.000, 0.018, 0.028, 0.036, 0.033; before either, seed 0 gave 0.001, 0.011, 0.009, 0.060, 0.044).
At 128 px (0, 0.003, 0.025, 0.012, 0.018, before the fused optimizer updates and images of static shape)
a process took about 0.9 CPU s more (9.8 against 9.0).

The mosaic (``data.augment.mosaic``) is off here: it made each of these runs 3-5 CPU s dearer (14.5 to
18.4 s; its map function holds four images' transforms), and the suite starts about 40 of them. Its
resume is checked where it is made, in the pipeline (tests/data/test_pipeline.py: batches from a
``start_step`` equal the uninterrupted stream's, mosaic 1.0); the kill chains passed with mosaic 0.5
on 2026-12-06 (21 faults, 21 recoveries, the end equal to the uninterrupted run).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np

import zygote
from training_runs import write_config

DRIVER = Path(__file__).with_name("fault_driver.py")
STEPS, EVERY, KEEP_BEST, KEEP_LAST = 50, 10, 2, 1
SECTIONS = {
    "model": {"name": "fcos_tiny", "image_size": 96, "neck": {"channels": 16, "max_level": 5},
              "head": {"channels": 16, "convs": 1, "assigner": "atss", "classification_loss": "quality_focal"}},
    "train": {"batch_size": 4, "steps": STEPS, "seed": 0, "optimizer": {"learning_rate": 0.01},
              "schedule": {"name": "constant", "warmup_steps": 5}},
    "evaluation": {"every_steps": EVERY},
    # Every random transform on (the shapes of the 8 images allow any flip and turn): a resumed run must draw
    # each one as the uninterrupted run did.
    "data": {"augment": {"horizontal_flip": True, "vertical_flip": True, "rotate_90": True,
                         "scale_jitter": [0.8, 1.2], "colour_jitter": 0.1}},
    "checkpoint": {"keep_best": KEEP_BEST, "keep_last": KEEP_LAST},
}


def write_fault_config(path: Path, shapes: Path, run_dir: Path) -> Path:
    return write_config(path, shapes, run_dir, **SECTIONS)


def run_driver(moment: str, *args: str, limit: int = 900) -> subprocess.CompletedProcess:
    """``detkeeper ARGS`` in a process of its own with the fault `moment` armed (see fault_driver.py),
    forked from a zygote that has imported TensorFlow and detkeeper already (tests/zygote.py)."""
    return zygote.run("detkeeper", [str(DRIVER), moment, *args], {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                      timeout=limit)


def train_reference(config: Path, run_dir: Path) -> tuple[Path, Path, dict]:
    """The run of `config`, uninterrupted, through `detkeeper train`: (config, run_dir, its ledger)."""
    done = run_driver("none", "train", str(config), "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    return config, run_dir, read_ledger(run_dir)


def read_ledger(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "ledger.json").read_text())


def retention(history: list[dict], keep_best: int = KEEP_BEST, keep_last: int = KEEP_LAST) -> tuple[set, str | None]:
    """(kept checkpoint names, best) by the retention rule, computed from the history alone: the best
    `keep_best` by val_mAP (missing/NaN never), the latest `keep_last`, and the best pointer (the first
    step to reach the highest value)."""
    scored = [row for row in history if row["monitor_value"] is not None]
    ranked = sorted(scored, key=lambda row: (-row["monitor_value"], row["step"]))
    by_step = sorted(history, key=lambda row: row["step"])
    best = ranked[0]["checkpoint"] if ranked else None
    kept = {row["checkpoint"] for row in ranked[:keep_best]} | {row["checkpoint"] for row in by_step[-keep_last:]}
    return kept | ({best} if best else set()), best


def pruned_at(history: list[dict]) -> list[int]:
    """The steps whose save removed an older checkpoint (retention at work)."""
    steps = []
    for end in range(1, len(history) + 1):
        before = retention(history[: end - 1])[0] if end > 1 else set()
        if before - retention(history[:end])[0]:
            steps.append(history[end - 1]["step"])
    return steps


def checkpoint_damage(run_dir: Path, ledger: dict) -> list[str]:
    """Each ledger checkpoint that is missing, differs from its sha256 or does not load, named."""
    import tensorflow as tf

    problems = []
    for entry in ledger["checkpoints"]:
        folder = run_dir / "checkpoints" / entry["name"]
        if not folder.is_dir() or {path.name for path in folder.iterdir()} != set(entry["files"]):
            problems.append(f"{entry['name']}: files differ from the ledger's list")
            continue
        for name, digest in entry["files"].items():
            data = (folder / name).read_bytes()
            if (len(data), hashlib.sha256(data).hexdigest()) != (digest["size"], digest["sha256"]):
                problems.append(f"{entry['name']}/{name}: size or sha256 differs from the ledger's")
        try:
            reader = tf.train.load_checkpoint(str(folder / entry["prefix"]))
            step = int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
        except Exception as error:  # noqa: BLE001 - any failure to load is damage, reported by name
            problems.append(f"{entry['name']}: does not load ({type(error).__name__}: {error})")
            continue
        if step != entry["step"]:
            problems.append(f"{entry['name']}: holds step {step}")
    return problems


def assert_consistent(run_dir: Path, before: dict | None = None) -> tuple[dict, int]:
    """The on-disk state a fault left: the ledger reads, every checkpoint it lists is intact and loads,
    the kept set and best are the retention rule's over the history. Returns (ledger, lost) where lost
    counts damaged checkpoints, and what `before` (an earlier ledger) committed that is gone or changed:
    history rows missing or with other metrics, kept checkpoints whose files are no longer the same."""
    ledger = read_ledger(run_dir)
    damage = checkpoint_damage(run_dir, ledger)
    kept, best = retention(ledger["history"])
    assert {entry["name"] for entry in ledger["checkpoints"]} == kept, (ledger["history"], ledger["checkpoints"])
    assert ledger["best"] == best
    lost = len(damage)
    if before is not None:
        metrics = {row["step"]: row["metrics"] for row in ledger["history"]}
        lost += sum(1 for row in before["history"] if metrics.get(row["step"]) != row["metrics"])
        files = {entry["name"]: entry["files"] for entry in ledger["checkpoints"]}
        lost += sum(1 for entry in before["checkpoints"] if files.get(entry["name"], entry["files"]) != entry["files"])
    assert not damage, damage
    return ledger, lost


def assert_same_as_reference(run_dir: Path, reference_dir: Path) -> None:
    """The final ledger equals the uninterrupted run's (steps, metrics to 1e-6, kept, best, status) and
    every kept checkpoint holds the uninterrupted run's tensors."""
    import tensorflow as tf

    got, expected = read_ledger(run_dir), read_ledger(reference_dir)
    assert [row["step"] for row in got["history"]] == [row["step"] for row in expected["history"]]
    for row, reference_row in zip(got["history"], expected["history"]):
        assert row["metrics"].keys() == reference_row["metrics"].keys()
        for key, value in reference_row["metrics"].items():
            if key != "val_latency_ms":  # wall time, not a result
                assert row["metrics"][key] == (None if value is None else _approx(value)), (row["step"], key)
    assert sorted(e["name"] for e in got["checkpoints"]) == sorted(e["name"] for e in expected["checkpoints"])
    assert (got["best"], got["status"]["state"]) == (expected["best"], expected["status"]["state"])
    for entry in got["checkpoints"]:
        reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / entry["name"] / "ckpt"))
        reference = tf.train.load_checkpoint(str(reference_dir / "checkpoints" / entry["name"] / "ckpt"))
        names = reader.get_variable_to_shape_map()
        assert names == reference.get_variable_to_shape_map()
        for name in names:
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
                np.testing.assert_allclose(reader.get_tensor(name), reference.get_tensor(name), rtol=0, atol=1e-5,
                                           err_msg=f"{entry['name']}: {name}")


def _approx(value: float):
    import pytest

    return pytest.approx(value, abs=1e-6)


def visible_exports(folder: Path) -> dict[str, dict]:
    """What a user sees as finished exports in `folder`: every non-hidden directory with its
    verification.json (None when it has none). Hidden ``.partial-`` folders and
    ``*.verification-failed.json`` reports are not exports."""
    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_dir() and not path.name.startswith("."):
            report = path / "verification.json"
            found[path.name] = json.loads(report.read_text()) if report.is_file() else None
    return found


def tree_digest(folder: Path) -> str:
    """One sha256 over every file under `folder` and its relative name."""
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            sha.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()


def error_line(stderr: str, command: str) -> str:
    """The one-paragraph error the CLI printed for `command`; fails when there is a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith(f"detkeeper {command}: error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]
