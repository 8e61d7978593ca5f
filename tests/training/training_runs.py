"""Run configs for training tests: a small, fast run on the session's shapes dataset."""

from __future__ import annotations

from pathlib import Path

import yaml

# 8 training images evaluated on themselves: mAP climbs within a hundred steps and then wobbles,
# so the best-k set is decided by real, varying numbers, not by recency.
SPLIT = "first8"
BASE = {
    "preset": "demo",
    "data": {
        "train": {"format": "voc", "split": SPLIT},
        "val": {"format": "voc", "split": SPLIT},
        "test": None,
        "augment": {"horizontal_flip": False, "scale_jitter": [1, 1], "colour_jitter": 0},
    },
    "model": {"image_size": 128},
    "train": {"batch_size": 8, "steps": 120, "optimizer": {"learning_rate": 0.003},
              "schedule": {"name": "constant", "warmup_steps": 20}},
    "evaluation": {"every_steps": 20},
    "checkpoint": {"keep_best": 3, "keep_last": 2},
    "early_stopping": {"enabled": False},
}


def write_config(path: Path, shapes: Path, run_dir: Path, **sections) -> Path:
    """`BASE` with the dataset and run dir filled in and each section in `sections` merged over."""
    split_file = shapes / "ImageSets" / "Main" / f"{SPLIT}.txt"
    if not split_file.exists():
        names = (shapes / "ImageSets" / "Main" / "train.txt").read_text().split()[:8]
        split_file.write_text("\n".join(names) + "\n")
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in BASE.items()}
    config["data"] = {**BASE["data"], "train": {**BASE["data"]["train"], "path": str(shapes)},
                      "val": {**BASE["data"]["val"], "path": str(shapes)}}
    config["run_dir"] = str(run_dir)
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    path.write_text(yaml.safe_dump(config))
    return path
