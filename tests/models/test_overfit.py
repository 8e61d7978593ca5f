"""Each built-in detector family learns: a small member overfits a few shapes images to mAP@0.5 >= 0.9.

The run goes through ``detkeeper train`` end to end (pipeline, ``fit``, COCO evaluation, best-k
checkpoints) on the first 8 training images (hub_retinanet: 4) evaluated on themselves, without
augmentation, batch 8 (hub_retinanet: 4).

- retinanet_tiny and fcos_tiny, 128 px, Adam 3e-3 (constant after 20 warmup steps): over seeds
  0-2, val mAP50 0.94-1.0 by step 80 and 0.98-1.0 by step 120 (fcos_tiny: 1.0 from step 60-80);
  the test trains 80 steps with seed 0 (2026-12-05: retinanet_tiny 0.943, fcos_tiny 1.0 at step
  80, evaluated at 40 and 80; 2026-12-06, with the fused optimizer updates: both 1.0 at step 80; with
  BatchNormalization's fused kernel as well: retinanet_tiny 0.982, fcos_tiny 1.0).
  FCOS needs no settings of its own. About 20 s each on 2 cores (40 s when other jobs load them);
  targets are padded to 10 boxes, not 100, which makes the tiny models' steps up to 1.8x faster
  (benchmarks/RESULTS.md, training step).
- hub_retinanet (keras-hub's RetinaNet on its tiny ResNet): 256 px, pyramid P3-P5 and one-conv
  heads (keras-hub's heads are 256 wide: a step takes a third less time than with two convs, 1.66 s
  against 2.46 s on 2 cores shared with another job; keras-hub's P3-P7 four-conv default took 1.9 s
  at 256 px in benchmarks/train_step.py), Adam 1e-3 (at 3e-3 mAP50 fell from 0.33 to 0.15 between
  steps 25 and 50). Batch 8, seeds 0-2, one conv: mAP50 0.82-0.89 at step 30, 0.93-0.96 at step
  40, 0.94-0.96 at step 50 and 0.955-0.963 at step 60 (two convs: 0.86-0.90 at step 30 and 0.963 at
  step 60; no conv: 0.48-0.94 at step 60). Step 40 is not a plateau: CI's machine reached 0.883
  there on 2026-12-04 where this one reaches 0.927-0.936. Batch 4 reaches the same plateau in
  fewer image-steps (seeds 0-2, 2026-12-05: 0.90-0.94 at step 60, 0.957-0.963 at step 80,
  0.95-0.963 at step 90), and a whole process training 80 steps of batch 4 took 79 CPU s where 60
  steps of batch 8 took 110 (seed 0, both 0.963). Four images, a whole batch each step, get there
  in fewer steps still (seeds 0-2, 2026-12-06: 0.84-0.95 at step 40, 0.941-0.95 at step 50,
  0.929-0.95 at step 60, 0.929-0.95 at step 70; seed 0 0.95 from step 50 to 90). With the fused
  optimizer updates (2026-12-06, third session; the curve moves as with another seed) seeds 0-2 gave
  0.926-0.95 at step 40, 0.934-0.95 at step 50 and 0.95 at steps 60 and 70, so the test trains 60
  steps of the first 4 images, 20 past the climb, and evaluates once, at the end (a 5-step warmup
  is worse): 74 CPU s for the pytest process at 70 steps against 91 for 90 steps of 8 images.
  Not at 128 px: keras-hub's label encoder makes an anchor positive only at IoU >= 0.5 and forces no match, so
  shapes much smaller than its 32 px P3 anchors get no positive anchor at all. At 128 px (shapes
  10-58 px) training loss fell to 1e-5 while mAP50 stayed at 0.65 (AR small 0.43); at 256 px only
  the smallest few are missed (the 0.963 ceiling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from detkeeper.training.trainer import train

TARGET_MAP50 = 0.9

#: Per model: training images, image size, batch size, steps, evaluation interval, learning rate and
#: model-section extras.
SETTINGS = {
    "retinanet_tiny": dict(images=8, image_size=128, batch_size=8, steps=80, every=40, learning_rate=0.003, model={}),
    "fcos_tiny": dict(images=8, image_size=128, batch_size=8, steps=80, every=40, learning_rate=0.003, model={}),
    "hub_retinanet": dict(images=4, image_size=256, batch_size=4, steps=60, every=60, learning_rate=0.001,
                          model={"neck": {"min_level": 3, "max_level": 5}, "head": {"convs": 1}}),
}


def _split_of_the_first(count: int, shapes: Path) -> str:
    """A VOC split file naming the first `count` training images (the same content every time)."""
    main = shapes / "ImageSets" / "Main"
    split = f"overfit{count}"
    path = main / f"{split}.txt"
    if not path.exists():
        path.write_text("\n".join((main / "train.txt").read_text().split()[:count]) + "\n")
    return split


def _config(name: str, shapes: Path, run_dir: Path) -> dict:
    """A whole run config (no preset, so preset tuning never changes this test)."""
    settings = SETTINGS[name]
    split = _split_of_the_first(settings["images"], shapes)
    source = {"format": "voc", "path": str(shapes), "split": split}
    return {
        "run_dir": str(run_dir),
        "model": {"name": name, "image_size": settings["image_size"],
                  "backbone": {"name": "tiny", "weights": "none"}, **settings["model"]},
        "data": {"train": source, "val": dict(source), "test": None, "max_boxes": 10,
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "train": {"batch_size": settings["batch_size"], "steps": settings["steps"], "seed": 0,
                  "optimizer": {"name": "adam", "learning_rate": settings["learning_rate"], "clipnorm": 10.0},
                  "schedule": {"name": "constant", "warmup_steps": 20}},
        "evaluation": {"every_steps": settings["every"], "monitor": "val_mAP50"},
        "checkpoint": {"keep_best": 1, "keep_last": 1},
        "early_stopping": {"enabled": False},
    }


@pytest.mark.parametrize("name", [
    "retinanet_tiny",
    "fcos_tiny",
    pytest.param("hub_retinanet", marks=pytest.mark.slow),
])
def test_small_member_overfits_a_few_images(name, shapes_dataset, tmp_path):
    if name.startswith("hub_"):
        pytest.importorskip("keras_hub", reason=f"{name} needs keras-hub: pip install 'detkeeper[hub]'")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_config(name, shapes_dataset, tmp_path / "run")))
    result = train(path)
    history = [(row["step"], round(row["metrics"]["val_mAP50"], 3))
               for row in json.loads(result.ledger_path.read_text())["history"]]
    assert result.status == "finished" and result.step == SETTINGS[name]["steps"], history
    assert result.best is not None and result.best.metrics["val_mAP50"] >= TARGET_MAP50, history
