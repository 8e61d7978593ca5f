"""The run config the export tests train: small, quick, and good enough that detections are real."""

from __future__ import annotations

from pathlib import Path

import yaml


def write_run_config(path: Path, shapes: Path, run_dir: Path, steps: int = 60, **model) -> Path:
    """The demo preset shrunk to 60 steps at 128 px, trained and validated on the 8 val images of the
    session's shapes dataset (mAP passes 0.5: the detections the tests compare are real ones). Fewer
    `steps` warm up over all of them and evaluate once, at the end."""
    config = {
        "preset": "demo",
        "run_dir": str(run_dir),
        "data": {"train": {"format": "voc", "path": str(shapes), "split": "val"},
                 "val": {"format": "voc", "path": str(shapes), "split": "val"},
                 "test": {"format": "voc", "path": str(shapes), "split": "test"},
                 "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0}},
        "model": {"image_size": 128, **model},
        "train": {"batch_size": 8, "steps": steps, "optimizer": {"learning_rate": 0.003},
                  "schedule": {"name": "constant", "warmup_steps": min(20, steps)}},
        "evaluation": {"every_steps": min(20, steps)},
        "early_stopping": {"enabled": False},
    }
    path.write_text(yaml.safe_dump(config))
    return path
