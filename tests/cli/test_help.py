"""Every subcommand: --help exits 0 with an example, the same flag names for the same things, and
--json output that parses as JSON (on a tiny run trained once for this module). `export --json`
is parsed in tests/export/test_export.py, on the export tests' run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from detkeeper.cli.main import EXAMPLES, build_parser, main

# Spellings that would name a thing another command already names differently.
OTHER_SPELLINGS = {"--output": "--out", "--output-dir": "--out", "--outdir": "--out", "--out-dir": "--out",
                   "--run_dir": "--run-dir", "--rundir": "--run-dir", "--override": "--set",
                   "--overrides": "--set", "--silent": "--quiet", "--verbose": "--debug",
                   "--traceback": "--debug", "--as-json": "--json", "--format-json": "--json"}

JSON_COMMANDS = {"data check", "data convert", "train", "checkpoints", "evaluate", "export", "predict", "demo"}


def leaf_commands(parser, path=()):
    """(command words, parser) for every command that runs (not the groups)."""
    groups = [action for action in parser._actions if action.__class__.__name__ == "_SubParsersAction"]
    for group in groups:
        for name, sub in group.choices.items():
            yield from leaf_commands(sub, path + (name,))
    if path and not groups:
        yield path, parser


def option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


LEAVES = list(leaf_commands(build_parser()))


def test_the_tree_has_every_command():
    names = {" ".join(path) for path, _ in LEAVES}
    assert names >= {"demo", "data check", "data convert", "data generate", "data show", "train", "checkpoints",
                     "evaluate", "export", "predict", "report", "config show", "config presets", "config reference",
                     "config import"}


@pytest.mark.parametrize("path", [path for path, _ in LEAVES], ids=" ".join)
def test_help_exits_0_with_an_example_of_this_command(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text, path
    command = "detkeeper " + " ".join(path)
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith("detkeeper ")]
    assert any(line == command or line.startswith(command + " ") for line in examples), (
        f"`{command} --help` shows no example line starting with `{command}`")


@pytest.mark.parametrize("path,parser", LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_same_flags_for_the_same_things(path, parser):
    options = option_strings(parser)
    assert {"--quiet", "--debug", "--help"} <= options, path
    wrong = {option: OTHER_SPELLINGS[option] for option in options if option in OTHER_SPELLINGS}
    assert not wrong, f"{' '.join(path)}: use {wrong}"
    assert not any("_" in option for option in options if option.startswith("--")), path
    for action in parser._actions:
        if "--json" in action.option_strings:
            assert "JSON" in action.help, path


def test_commands_whose_result_a_script_reads_take_json():
    have_json = {" ".join(path) for path, parser in LEAVES if "--json" in option_strings(parser)}
    assert have_json >= JSON_COMMANDS


def test_top_level_help_lists_the_main_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for command in ("detkeeper demo", "detkeeper train demo", "detkeeper export runs/demo",
                    "detkeeper report runs/demo", "detkeeper config import pipeline.config"):
        assert command in text and command in EXAMPLES


# --- --json on real outputs ---------------------------------------------------------------------

def run_json(capsys, *argv, code=0):
    assert main(list(argv)) == code, argv
    out = capsys.readouterr().out
    try:
        return json.loads(out)
    except json.JSONDecodeError as error:
        pytest.fail(f"detkeeper {' '.join(argv)} printed something else than JSON on stdout ({error}):\n{out[:2000]}")


@pytest.fixture(scope="module")
def tiny_run(shapes_dataset, tmp_path_factory):
    """`detkeeper train CONFIG --json` on 8 images at 64 px, 4 steps, evaluated every 2."""
    root = tmp_path_factory.mktemp("cli_json")
    config = {"preset": "demo", "run_dir": str(root / "run"),
              "data": {"train": {"format": "voc", "path": str(shapes_dataset), "split": "val"},
                       "val": {"format": "voc", "path": str(shapes_dataset), "split": "val"}},
              "model": {"image_size": 64},
              "train": {"batch_size": 4, "steps": 4, "schedule": {"name": "constant", "warmup_steps": 0}},
              "evaluation": {"every_steps": 2}, "early_stopping": {"enabled": False}}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(tiny_run):
    """Module-scoped, so stdout is caught with redirect_stdout (capsys is per test)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", str(tiny_run), "--json"])
    assert code == 0
    return json.loads(out.getvalue())


def test_train_json_says_how_the_run_ended(trained):
    assert trained["status"] == "finished" and trained["step"] == 4
    assert trained["best"]["name"].startswith("step-") and "val_mAP" in trained["best"]["metrics"]
    assert Path(trained["ledger"]).is_file()


def test_checkpoints_json_is_the_ledger(trained, capsys):
    ledger = run_json(capsys, "checkpoints", trained["run_dir"], "--json")
    assert ledger["best"] == trained["best"]["name"] and len(ledger["checkpoints"]) == 2


def test_evaluate_json_is_metrics_json(trained, capsys, tmp_path):
    metrics = run_json(capsys, "evaluate", trained["run_dir"], "--out", str(tmp_path / "eval"), "--json")
    assert metrics["stats"]["mAP"] == pytest.approx(trained["best"]["metrics"]["val_mAP"], abs=1e-9)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["stats"] == metrics["stats"]


def test_evaluate_takes_the_model_first_as_export_and_predict_do_or_as_model(capsys):
    from detkeeper.cli.evaluate_command import _model_argument

    parser = build_parser()
    assert _model_argument(parser.parse_args(["evaluate", "runs/a"])) == "runs/a"
    assert _model_argument(parser.parse_args(["evaluate", "--model", "runs/a"])) == "runs/a"
    assert main(["evaluate", "--quiet"]) == 2
    assert "which model?" in capsys.readouterr().err
    assert main(["evaluate", "runs/a", "--model", "runs/b", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "two models given" in err and "Traceback" not in err


def test_predict_json_summarises_what_was_written(trained, shapes_dataset, capsys, tmp_path):
    images = sorted((Path(shapes_dataset) / "JPEGImages").iterdir())[:3]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    summary = run_json(capsys, "predict", trained["run_dir"], *map(str, images), str(tmp_path / "broken.jpg"),
                       "--out", str(tmp_path / "out"), "--checkpoint", "latest", "--no-images", "--json")
    assert summary["images"] == 3 and summary["images_dir"] is None
    assert [item["image"] for item in summary["skipped"]] == [str(tmp_path / "broken.jpg")]
    written = json.loads(Path(summary["predictions"]).read_text())
    assert len(written["annotations"]) == summary["detections"]


def test_data_check_and_convert_json(shapes_dataset, capsys, tmp_path):
    check = run_json(capsys, "data", "check", str(shapes_dataset), "--split", "val", "--json")
    assert check["ok"] is True and check["splits"][0]["records_usable"] == 8
    converted = run_json(capsys, "data", "convert", str(shapes_dataset), "--split", "val", "--to", "tfrecord",
                         "--out", str(tmp_path / "records" / "val"), "--shards", "2", "--json")
    assert converted["images"] == 8 and len(converted["files"]) == 2 and converted["dropped_boxes"] == 0
    assert all(Path(path).is_file() for path in converted["files"] + [converted["label_map"]])
