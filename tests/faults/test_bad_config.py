"""Bad run configs through `detkeeper train`: a non-zero exit status (2, a config error, for all that the
loader sees), one paragraph naming the file and the key, no traceback, nothing trained.

The loader's own messages are unit-tested in tests/config (test_loader.py, test_schema.py), and a
typo through the command line in tests/cli/test_cli.py; this table runs the rest of the kinds the
fault suite lists through the command a user types.
"""

from __future__ import annotations

import pytest
import yaml

from detkeeper.cli.main import main

# what is wrong: (the override applied to a valid config, text the message must contain)
BAD_CONFIGS = {
    "wrong type": ({"train": {"batch_size": "eight"}}, "train.batch_size"),
    "negative size": ({"train": {"batch_size": -4}}, "train.batch_size"),
    "zero image size": ({"model": {"image_size": 0}}, "model.image_size"),
    "zero steps": ({"train": {"steps": 0}}, "train.steps"),
    "zero evaluation interval": ({"evaluation": {"every_steps": 0}}, "evaluation.every_steps"),
    "zero max boxes": ({"data": {"max_boxes": 0}}, "data.max_boxes"),
    "negative learning rate": ({"train": {"optimizer": {"learning_rate": -0.1}}}, "learning_rate"),
    "list for a section": ({"checkpoint": [1, 2]}, "checkpoint"),
    "unknown model name": ({"model": {"name": "retinanet_huge"}}, "retinanet_huge"),
    "missing dataset folder": ({"data": {"train": {"path": "/nonexistent/voc"}}}, "/nonexistent/voc"),
    "missing label map": ({"data": {"label_map": "/nonexistent/label_map.pbtxt"}}, "/nonexistent/label_map.pbtxt"),
    "missing init_from checkpoint": ({"model": {"init_from": {"path": "/nonexistent/run"}}}, "/nonexistent/run"),
    "unknown backbone": ({"model": {"backbone": {"name": "resnet5"}}}, "model.backbone.name"),
    "warmup longer than training": ({"train": {"schedule": {"warmup_steps": 10}}}, "train.schedule.warmup_steps"),
    "misspelled monitor": ({"evaluation": {"monitor": "val_map"}}, "evaluation.monitor"),
    "unfilled placeholder": ({"data": {"label_map": "gs://${YOUR_GCS_BUCKET}/label_map.pbtxt"}},
                             "unfilled placeholder ${YOUR_GCS_BUCKET}"),
}


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


@pytest.mark.parametrize("what", list(BAD_CONFIGS))
def test_a_bad_config_is_one_clear_paragraph_naming_the_key(what, shapes_dataset, tmp_path, capsys, faults):
    override, named = BAD_CONFIGS[what]
    split = {"format": "voc", "path": str(shapes_dataset), "split": "val"}
    base = {"preset": "demo", "run_dir": str(tmp_path / "run"), "model": {"image_size": 128},
            "data": {"train": split, "val": split, "test": None},
            "train": {"steps": 2, "schedule": {"name": "constant", "warmup_steps": 0}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_merge(base, override)))
    faults.bad_input()
    code = main(["train", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, (what, code, err[-2000:])
    assert "Traceback" not in err
    assert err.count("detkeeper train: error: ") == 1, err[-2000:]
    message = err[err.index("detkeeper train: error: "):]  # the error and its indented problem lines
    assert named in message, (what, message)
    assert str(path) in message, message  # every problem names the file it is in
    assert not (tmp_path / "run").exists()  # refused before anything was read or written


def test_a_config_file_that_does_not_exist_is_named(tmp_path, capsys, faults):
    faults.bad_input()
    code = main(["train", str(tmp_path / "nothere.yaml"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and str(tmp_path / "nothere.yaml") in err, err
