"""model.init_from: a 3-class run's checkpoint (or its export) initialises a 5-class model part
by part, with a per-variable report and one summary line; a source that does not fit, is missing
or is damaged stops with one clear paragraph; resuming never applies it."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.cli.main import main
from detkeeper.config import load_config, save_config
from detkeeper.config.schema import InitFromConfig
from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DetkeeperError
from detkeeper.run.restore import build_run_model, restore_run_checkpoint
from detkeeper.run.sources import run_config
from detkeeper.models import list_models
from detkeeper.run.layout import RunDirectory
from detkeeper.training.init_from import InitSource, apply_init_from, match_variables
from detkeeper.training.trainer import train

from training_runs import write_config

SOURCE_CLASSES = ("circle", "square", "triangle")
TARGET_CLASSES = ("circle", "square", "triangle", "cross", "star")
STEP = "step-0000002"
NO_WARMUP = {"name": "constant", "warmup_steps": 0}  # 2-step runs: a warmup must not outlast them


@pytest.fixture(scope="module")
def source_run(shapes_dataset, tmp_path_factory):
    """A 3-class retinanet_tiny run trained 2 steps with EMA, so its checkpoint's averages (what
    init_from must take) differ from its raw weights. Returns (config path, run directory)."""
    root = tmp_path_factory.mktemp("init_source")
    LabelMap.from_names(SOURCE_CLASSES).write(root / "three.pbtxt")
    config = write_config(root / "config.yaml", shapes_dataset, root / "run",
                          data={"label_map": str(root / "three.pbtxt")},
                          train={"steps": 2, "ema_decay": 0.9, "schedule": NO_WARMUP}, evaluation={"every_steps": 2})
    assert train(config).status == "finished"
    return config, root / "run"


def stable_name(model, variable) -> str:
    """The name a variable is matched by: its Keras path without the model's own name."""
    prefix = f"{model.name}/"
    return variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.path


@pytest.fixture(scope="module")
def checkpoint_values(source_run) -> tuple[dict, dict]:
    """The kept checkpoint's EMA averages and raw trainable weights by name, read with TF's own
    reader: ``ema/averages/<i>`` is ``model.weights[i]``, ``optimizer/_trainable_variables/<j>``
    is ``model.trainable_variables[j]`` of a model built from the run's config."""
    config, run_dir = source_run
    model = build_run_model(run_config(RunDirectory(run_dir)), len(SOURCE_CLASSES))
    reader = tf.train.load_checkpoint(str(run_dir / "checkpoints" / STEP / "ckpt"))
    averages = {stable_name(model, variable): reader.get_tensor(f"ema/averages/{index}/.ATTRIBUTES/VARIABLE_VALUE")
                for index, variable in enumerate(model.weights)}
    raw = {stable_name(model, variable):
           reader.get_tensor(f"optimizer/_trainable_variables/{index}/.ATTRIBUTES/VARIABLE_VALUE")
           for index, variable in enumerate(model.trainable_variables)}
    return averages, raw


def five_class_model(source_run, *overrides):
    config, _ = source_run
    return build_run_model(load_config(config, overrides), len(TARGET_CLASSES))


def by_name(model) -> dict:
    return {stable_name(model, variable): variable for variable in model.weights}


def report_statuses(path) -> dict:
    report = json.loads(path.read_text())
    return {entry["name"]: entry for entry in report["variables"] if entry["status"] != "unused_in_source"}


def test_backbone_and_neck_of_a_3_class_checkpoint_initialise_a_5_class_model(source_run, checkpoint_values,
                                                                              tmp_path, caplog):
    _, run_dir = source_run
    model = five_class_model(source_run)
    parts = {stable_name(model, variable): part for part, variables in model.parts().items() for variable in variables}
    head_before = {name: variable.numpy() for name, variable in by_name(model).items() if parts[name] == "head"}
    with caplog.at_level(logging.INFO):
        apply_init_from(model, InitFromConfig(path=str(run_dir), include="backbone+neck"), tmp_path)

    averages, raw = checkpoint_values
    statuses = report_statuses(tmp_path / "init_from.json")
    assert set(statuses) == set(parts)
    for name, variable in by_name(model).items():
        entry = statuses[name]
        if parts[name] in ("backbone", "neck"):
            assert entry["status"] == "restored", entry
            np.testing.assert_array_equal(variable.numpy(), averages[name], err_msg=name)
        else:
            assert entry["status"] != "restored"
            np.testing.assert_array_equal(variable.numpy(), head_before[name], err_msg=name)
    skipped = {name: (entry["shape"], entry["source_shape"]) for name, entry in statuses.items()
               if entry["status"] == "skipped_for_shape"}
    anchors = 9
    assert skipped == {"head/class_output/kernel": ([3, 3, 64, anchors * 5], [3, 3, 64, anchors * 3]),
                       "head/class_output/bias": ([anchors * 5], [anchors * 3])}
    assert {entry["status"] for name, entry in statuses.items() if parts[name] == "head" and name not in skipped} \
        == {"not_included"}
    # The EMA averages were taken, not the raw weights the optimizer held.
    kernel = "tiny_stem_conv/kernel"
    assert not np.array_equal(averages[kernel], raw[kernel])

    records = [record for record in caplog.records if record.name.startswith(("detkeeper", "tensorflow"))]
    assert [record.levelno for record in records] == [logging.INFO]
    restored = sum(part in ("backbone", "neck") for part in parts.values())
    assert records[0].getMessage().startswith(
        f"init_from {run_dir} (step 2, EMA weights): restored {restored} of {len(parts)} variables (backbone+neck); "
        "2 skipped for shape")
    assert records[0].getMessage().endswith(f"report in {tmp_path / 'init_from.json'}")


def test_include_all_restores_the_head_where_shapes_agree(source_run, checkpoint_values, tmp_path):
    _, run_dir = source_run
    model = five_class_model(source_run)
    class_output = {name: variable.numpy() for name, variable in by_name(model).items()
                    if name.startswith("head/class_output/")}
    apply_init_from(model, InitFromConfig(path=str(run_dir), include="all"), tmp_path)

    averages, _ = checkpoint_values
    statuses = report_statuses(tmp_path / "init_from.json")
    for name, variable in by_name(model).items():
        if name in class_output:
            assert statuses[name]["status"] == "skipped_for_shape"
            np.testing.assert_array_equal(variable.numpy(), class_output[name])
        else:
            assert statuses[name]["status"] == "restored", name
            np.testing.assert_array_equal(variable.numpy(), averages[name], err_msg=name)


#: Families whose neck and head are the TF OD API's fixed layout (no ``model.neck`` / ``model.head``
#: sizes to shrink them by), with the scope their neck's variables are under (not an FPN's).
FIXED_LAYOUT_NECKS = {"ssd_mobilenet_v2": "feature_map_generator/"}


@pytest.mark.parametrize("name", list_models())
def test_every_registered_family_says_which_variables_are_backbone_neck_and_head(name):
    if name.startswith("hub_"):
        pytest.importorskip("keras_hub")
    overrides = [f"model.name={name}", "model.image_size=64"]
    if name not in FIXED_LAYOUT_NECKS:
        overrides += ["model.neck.max_level=5", "model.head.convs=1"]
    if not name.startswith("hub_") and name not in FIXED_LAYOUT_NECKS:
        overrides += ["model.neck.channels=16", "model.head.channels=16"]
    config = load_config("demo", overrides)
    source = build_run_model(config, len(SOURCE_CLASSES))
    target = build_run_model(config, len(TARGET_CLASSES))
    parts = target.parts()
    assert [id(variable) for part in parts.values() for variable in part] and all(parts.values())
    assert sorted(id(v) for part in parts.values() for v in part) == sorted(id(v) for v in target.weights)
    names = {part: [stable_name(target, variable) for variable in variables] for part, variables in parts.items()}
    neck_scope = FIXED_LAYOUT_NECKS.get(name, "fpn/")
    assert all(neck_scope in item for item in names["neck"]), names["neck"]
    assert all("head" in item for item in names["head"]), names["head"]
    assert not any(neck_scope in item or "head" in item for item in names["backbone"])

    report = match_variables(target, InitSource("in memory", "checkpoint", "", 0, False, source), "all")
    shapes = {stable_name(source, variable): tuple(variable.shape) for variable in source.weights}
    differing = {item for item, variable in by_name(target).items() if shapes[item] != tuple(variable.shape)}
    assert differing and all(item in names["head"] for item in differing)
    assert {o.name for o in report.outcomes if o.status == "skipped_for_shape"} == differing
    assert {o.name for o in report.outcomes if o.status == "restored"} == set(shapes) - differing


def test_another_backbone_matches_nothing_and_a_partial_neck_is_refused(source_run, tmp_path):
    _, run_dir = source_run
    other = five_class_model(source_run, "model.backbone.name=mobilenetv2_035")
    before = [variable.numpy() for variable in other.weights]
    with pytest.raises(DetkeeperError, match=rf"nothing in {run_dir} \(checkpoint of a retinanet_tiny model\) fits "
                                             r"this run's retinanet_tiny in its backbone: of its \d+ variables there, "
                                             r"\d+ have no counterpart by name"):
        apply_init_from(other, InitFromConfig(path=str(run_dir), include="backbone"), tmp_path)
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, other.weights))
    assert json.loads((tmp_path / "init_from.json").read_text())["applied"] is False

    narrow = five_class_model(source_run, "model.neck.channels=32")
    with pytest.raises(DetkeeperError, match=r"does not cover this run's neck: \d+ of its \d+ variables cannot be "
                                             r"restored \(fpn/lateral_c3/kernel is \[1, 1, 64, 32\] here, "
                                             r"\[1, 1, 64, 64\] in the source.*or `include: backbone`"):
        apply_init_from(narrow, InitFromConfig(path=str(run_dir), include="backbone+neck"), tmp_path)
    report = apply_init_from(narrow, InitFromConfig(path=str(run_dir), include="backbone"), tmp_path)
    assert report.count("restored") == len(narrow.parts()["backbone"])


def test_missing_foreign_and_truncated_sources_are_clear_errors(source_run, tmp_path):
    _, run_dir = source_run
    model = five_class_model(source_run)
    with pytest.raises(DetkeeperError, match=f"model.init_from.path: {tmp_path / 'nowhere'}: no such run directory"):
        apply_init_from(model, InitFromConfig(path=str(tmp_path / "nowhere")), tmp_path)
    with pytest.raises(DetkeeperError, match="not a run directory"):
        apply_init_from(model, InitFromConfig(path=str(run_dir / "logs")), tmp_path)

    damaged = tmp_path / "damaged"
    shutil.copytree(run_dir, damaged)
    data = next((damaged / "checkpoints" / STEP).glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    with pytest.raises(DetkeeperError, match=rf"model.init_from.path: checkpoint {STEP} cannot be trusted: {data} has"):
        apply_init_from(model, InitFromConfig(path=str(damaged / "checkpoints" / STEP)), tmp_path)


def save_export(restored, folder):
    """An export as the export stage lays it out (without its serving functions and verification,
    which take a minute here): a SavedModel whose root's ``model`` is the detector, with the run's
    config.yaml, label_map.pbtxt and the export's metadata.json as assets."""
    from detkeeper.export.exporter import export_metadata, serving_settings

    folder.mkdir()
    metadata = folder / "metadata.json"
    metadata.write_text(json.dumps(export_metadata(restored, serving_settings(restored.config))))
    module = tf.Module()
    module.model = restored.model
    module.assets = [tf.saved_model.Asset(str(path)) for path in
                     (restored.run.config_path, restored.run.label_map_path, metadata)]
    tf.saved_model.save(module, str(folder / "saved_model"))
    return folder


def test_an_export_initialises_like_its_checkpoint_and_a_damaged_one_is_refused(source_run, checkpoint_values,
                                                                               tmp_path):
    _, run_dir = source_run
    export = save_export(restore_run_checkpoint(RunDirectory(run_dir)), tmp_path / "export")
    model = five_class_model(source_run)
    report = apply_init_from(model, InitFromConfig(path=str(export), include="all"), tmp_path)
    assert report.summary().startswith(f"init_from {export} (export of step 2, EMA weights): restored ")
    assert report.count("skipped_for_shape") == 2
    averages, _ = checkpoint_values
    for name, variable in by_name(model).items():
        if not name.startswith("head/class_output/"):
            np.testing.assert_array_equal(variable.numpy(), averages[name], err_msg=name)

    # Variables missing: the export's config describes a model with a third head conv it does not hold.
    short = tmp_path / "short"
    shutil.copytree(export, short)
    short_config = short / "saved_model" / "assets" / "config.yaml"
    save_config(load_config(short_config, ["model.head.convs=3"]), short_config)
    with pytest.raises(DetkeeperError, match=rf"model.init_from.path: {short}/saved_model/variables/variables: "
                                             "the checkpoint does not fit the model"):
        apply_init_from(model, InitFromConfig(path=str(short)), tmp_path)

    data = next((export / "saved_model" / "variables").glob("variables.data-*"))
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(DetkeeperError, match=rf"model.init_from.path: {export}/saved_model/variables/variables: the "
                                             r"SavedModel's variables cannot be read \(.*\); the export is truncated"):
        apply_init_from(model, InitFromConfig(path=str(export)), tmp_path)

    (export / "saved_model" / "assets" / "config.yaml").unlink()
    with pytest.raises(DetkeeperError, match=r"a SavedModel without assets/config.yaml, so not a detkeeper export"):
        apply_init_from(model, InitFromConfig(path=str(export)), tmp_path)


def test_train_starts_from_init_from_and_a_rerun_keeps_its_own_checkpoint(source_run, checkpoint_values,
                                                                          shapes_dataset, tmp_path):
    _, source_dir = source_run
    LabelMap.from_names(TARGET_CLASSES).write(tmp_path / "five.pbtxt")
    config = write_config(tmp_path / "config.yaml", shapes_dataset, tmp_path / "run",
                          data={"label_map": str(tmp_path / "five.pbtxt")},
                          # rate 0 then 1.5e-4 over the two steps, as BASE's 20-step warmup of 3e-3 gave
                          train={"steps": 2, "seed": 1, "ema_decay": 0.9, "optimizer": {"learning_rate": 3e-4},
                                 "schedule": {"name": "constant", "warmup_steps": 2}},
                          evaluation={"every_steps": 2})
    checkpoint = source_dir / "checkpoints" / STEP
    assert main(["train", str(config), "--quiet", "--set", f"model.init_from.path={checkpoint}"]) == 0

    run = RunDirectory(tmp_path / "run")
    report_path = run.path / "init_from.json"
    report = json.loads(report_path.read_text())
    assert report["applied"] and report["source"]["checkpoint"] == str(checkpoint / "ckpt")
    assert report["counts"]["restored"] > 0 and report["counts"]["skipped_for_shape"] == 2
    log = (run.path / "train.log").read_text()
    assert log.count(f"init_from {checkpoint} (step 2, EMA weights): restored ") == 1

    # The run's EMA started from the restored weights, not from its random init: after two steps
    # at a warm-up learning rate its averages are still the source's, to well within the distance
    # between the random init (seed 1) and the source.
    averages, _ = checkpoint_values
    trained = by_name(restore_run_checkpoint(run).model)
    for name in ("tiny_stage4_block1_pwconv/kernel", "fpn/smooth_p3/kernel"):  # measured: 1e-4 here, 7e-3 to
        np.testing.assert_allclose(trained[name].numpy(), averages[name], atol=1e-3)  # 2e-2 from the random init
    assert run_config(run).model.init_from is None  # evaluating the run never needs the source

    written = report_path.stat().st_mtime_ns
    # Two more steps: the rerun resumes from the run's own checkpoint, never from the source again.
    assert main(["train", str(config), "--quiet", "--set", f"model.init_from.path={checkpoint}",
                 "--set", "train.steps=4"]) == 0
    assert report_path.stat().st_mtime_ns == written
    assert f"model.init_from ({checkpoint}) not applied: the run continues from its own checkpoint {STEP}" \
        in (run.path / "train.log").read_text()
