"""The `bccd` preset on real photos: BCCD blood cells (VOC, train 205 / val 87 images, 3 classes).

A shortened run of the preset (fcos_tiny from random init, at 128 px instead of 448 to cut the step
time by nine tenths, evaluated on the val split every 40 steps) through `train`. The learning rate
drops 100-fold at step 200 (a step schedule), so val mAP flattens and early stopping (patience 2,
min_delta 0.01, counting from the first evaluation after the drop) has to end the run before the
480-step cap. The test checks that it learned (val mAP above a floor), that the ledger kept exactly
the 3 best evaluations by val mAP plus the 2 latest and deleted the others (checked against the
logged history), that training stopped exactly where the early-stopping rule applied to that history
says, and that a rerun stays stopped.

Measured on 2 CPU cores (2026-12-06, deterministic: op determinism is on): val mAP 0.036, 0.129,
0.254, 0.270, 0.265, 0.327, 0.327, 0.331 at steps 40-320, stopped at step 320; best 0.331; seed 1
ends at 0.307 (step 360). Since images keep their 3 channels static (no XLA stem; the rounding moves):
0.021, 0.169, 0.257, 0.185, 0.300, 0.329, 0.331, 0.332, stopped at step 320, best 0.332. With
BatchNormalization's fused kernel: 0.047, 0.077, 0.251, 0.209, 0.294, 0.319, 0.320, 0.326, stopped at
step 320, best 0.326. About 65 CPU-seconds for the process; at 160 px best 0.333 at step 360 in
about 90. Before the drop the curve wobbles with the seed and with rounding (at 160 px, Keras'
unfused Adam went 0.259, 0.265, 0.324 at steps 120-200 where the fused updates went 0.247, 0.240,
0.231; seeds 0-2 of either optimizer end at 0.329-0.354 by step 320), which is why patience counts
only after it: counted from the start, it fired at step 200 in that run. The floor, 0.27, leaves
0.056 of margin (0.037 for seed 1); at 256 px best 0.366 in about twice the time of 192 px.
"""

from __future__ import annotations

import json

import pytest

from detkeeper.config import load_config
from detkeeper.training.trainer import train

STEPS, EVERY, DECAY_AT = 480, 40, 200
PATIENCE, MIN_DELTA = 2, 0.01
MAP_FLOOR = 0.27  # measured best: 0.326


def voc(root, split: str) -> str:
    return json.dumps({"format": "voc", "path": str(root), "split": split})


def early_stop_step(history: list[tuple[int, float]], patience: int, min_delta: float,
                    start_from: int) -> int | None:
    """The step where `patience` evaluations in a row, counted from step `start_from`, failed to beat
    the best by more than `min_delta`."""
    best, wait = None, 0
    for step, value in history:
        if best is None or value > best + min_delta:
            best, wait = value, 0
        elif step >= start_from:
            wait += 1
        if wait >= patience:
            return step
    return None


@pytest.mark.slow
def test_bccd_preset_learns_keeps_the_best_and_stops_early(bccd_root, tmp_path):
    config = load_config("bccd", [
        f"run_dir={tmp_path / 'run'}", f"data.train={voc(bccd_root, 'train')}",
        f"data.val={voc(bccd_root, 'val')}", "data.test=null",
        "model.image_size=128", f"train.steps={STEPS}", "train.schedule.warmup_steps=40",
        "train.schedule.name=step", f"train.schedule.decay_steps=[{DECAY_AT}]", "train.schedule.decay_rate=0.01",
        f"evaluation.every_steps={EVERY}", "checkpoint.keep_best=3", "checkpoint.keep_last=2",
        "early_stopping.enabled=true", f"early_stopping.patience={PATIENCE}",
        f"early_stopping.min_delta={MIN_DELTA}", f"early_stopping.start_from={DECAY_AT + 1}"])
    result = train(config)

    ledger = json.loads(result.ledger_path.read_text())
    history = [(row["step"], row["metrics"]["val_mAP"]) for row in ledger["history"]]
    values = dict(history)
    assert [step for step, _ in history] == list(range(EVERY, result.step + 1, EVERY)), history
    assert max(values.values()) > MAP_FLOOR, history

    stop = early_stop_step(history, PATIENCE, MIN_DELTA, DECAY_AT + 1)
    assert stop is not None and stop < STEPS, history  # the rule fires inside the run...
    assert (result.status, result.step) == ("stopped_early", stop)  # ...and training stopped right there
    assert ledger["status"]["state"] == "stopped_early"

    best3 = sorted(values, key=lambda step: (-values[step], step))[:3]
    last2 = sorted(values)[-2:]
    kept = {entry["step"] for entry in ledger["checkpoints"]}
    assert kept == set(best3) | set(last2), history
    assert {folder.name for folder in (result.run_dir / "checkpoints").glob("step-*")} == {
        f"step-{step:07d}" for step in kept}
    assert result.best.step == best3[0] and ledger["best"] == f"step-{best3[0]:07d}"

    again = train(config)
    assert (again.status, again.step, again.best.step) == ("already_stopped", stop, best3[0])
