"""`detkeeper config import` of a zoo SSD that a detkeeper family reproduces: mapped exactly onto
the family, every field it fixes compared, the fine-tune checkpoint carried into model.init_from;
and the acceptance (issue 17): the imported config fine-tunes from the zoo checkpoint and exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from detkeeper.config import load_config
from detkeeper.tfod.importer import import_pipeline_config, write_imported_config

FPNLITE = Path(__file__).resolve().parents[1] / "fixtures" / "tfod" / "ssd_mobilenet_v2_fpnlite_320x320.config"
ZOO_CHECKPOINT = "pretrained/ssd_mobilenet_v2_fpnlite_320x320_coco17_tpu-8/checkpoint/ckpt-0"


def notes_of(result) -> dict[str, str]:
    return {note.path: note.reason for note in result.not_carried}


def test_the_zoo_fpnlite_config_maps_onto_its_family_exactly(tmp_path):
    result = import_pipeline_config(FPNLITE, base_dir=tmp_path, out_dir=tmp_path)
    assert result.data["model"] == {
        "name": "ssd_mobilenet_v2_fpnlite", "backbone": {"name": "mobilenetv2", "weights": "none"},
        "image_size": 320, "resize": {"mode": "stretch", "method": "tf1_bilinear"},
        "neck": {"min_level": 3, "max_level": 7, "channels": 128}, "head": {"channels": 128, "convs": 4},
        "init_from": {"path": ZOO_CHECKPOINT, "include": "backbone+neck"}}
    # protobuf's float32 spellings (0.8999999761581421, 9.99999993922529e-09) read as written by hand
    assert result.data["train"]["optimizer"]["momentum"] == 0.9
    assert result.data["evaluation"] == {"every_steps": 1000, "score_threshold": 1e-8, "iou_threshold": 0.6,
                                         "max_detections": 100}
    notes = notes_of(result)
    hyperparams = ("model.ssd.feature_extractor.conv_hyperparams",
                   "model.ssd.box_predictor.weight_shared_convolutional_box_predictor.conv_hyperparams")
    # Of the model section only the L2 regularizer and the initializers are not carried: the box
    # coder, matcher, anchors, loss, predictor layout and batch norm are the family's own values.
    assert sorted(path for path in notes if path.startswith("model.")) == sorted(
        f"{section}.{name}" for section in hyperparams for name in ("initializer", "regularizer"))
    carried = {entry.source: entry for entry in result.mapped}
    for field in ("model.ssd.anchor_generator.multiscale_anchor_generator.aspect_ratios",
                  "model.ssd.loss.classification_loss.weighted_sigmoid_focal.alpha",
                  "model.ssd.matcher.argmax_matcher.matched_threshold",
                  "model.ssd.box_coder.faster_rcnn_box_coder.height_scale"):
        assert carried[field].comment == "ssd_mobilenet_v2_fpnlite computes with it"
    assert "read by the API's own variable names" in carried["train_config.fine_tune_checkpoint"].comment
    assert "backbone and FPN" in carried["train_config.fine_tune_checkpoint_type"].comment
    assert "train_config.fine_tune_checkpoint_version" not in notes  # V2: what init_from reads


def test_a_field_the_family_fixes_otherwise_is_listed_with_the_familys_value(tmp_path):
    text = FPNLITE.read_text()
    for old, new in (("anchor_scale: 4.0", "anchor_scale: 3.0"), ("alpha: 0.25", "alpha: 0.5"),
                     ("override_base_feature_extractor_hyperparams: true",
                      "override_base_feature_extractor_hyperparams: false")):
        assert old in text
        text = text.replace(old, new)
    text = text.replace("weighted_smooth_l1 {\n        }", "weighted_smooth_l1 {\n          delta: 0.1\n        }")
    text = text.replace("    normalize_loc_loss_by_codesize: true\n", "")
    path = tmp_path / "pipeline.config"
    path.write_text(text)
    result = import_pipeline_config(path, base_dir=tmp_path, out_dir=tmp_path)
    assert result.data["model"]["name"] == "ssd_mobilenet_v2_fpnlite"
    notes = notes_of(result)
    family = "ssd_mobilenet_v2_fpnlite computes with"
    assert notes["model.ssd.anchor_generator.multiscale_anchor_generator.anchor_scale"].startswith(f"{family} 4.0")
    assert notes["model.ssd.loss.classification_loss.weighted_sigmoid_focal.alpha"].startswith(f"{family} 0.25")
    assert notes["model.ssd.loss.localization_loss.weighted_smooth_l1.delta"].startswith(f"{family} 1.0")
    assert notes["model.ssd.feature_extractor.override_base_feature_extractor_hyperparams"].startswith(f"{family} True")
    assert notes["model.ssd.normalize_loc_loss_by_codesize"] == (
        f"absent, so the API's default False; {family} True, the zoo's")
    assert "absent" in result.to_yaml()  # the YAML's header lists it with the others


def test_the_importers_values_are_the_familys_own():
    """`config import` does not load TensorFlow, so it writes the family's values out; they must
    stay the ones the model computes with."""
    from detkeeper.models.efficientdet import bifpn, ssd_efficientdet
    from detkeeper.models.ssd import (convolutional_box_predictor, fpn_lite, multi_resolution_feature_maps,
                                      multiple_grid_anchors, predictor, ssd, ssd_meta_arch, ssd_mobilenet_v2)
    from detkeeper.tfod import zoo_families as zoo_ssd

    assert zoo_ssd.BOX_CODER_SCALES == ssd_meta_arch.BOX_CODER_SCALES
    assert (zoo_ssd.MATCHED_THRESHOLD, zoo_ssd.UNMATCHED_THRESHOLD) == (ssd_meta_arch.MATCHED_THRESHOLD,
                                                                        ssd_meta_arch.UNMATCHED_THRESHOLD)
    family = ssd.SsdFpnLite
    assert (zoo_ssd.FPNLITE_FOCAL_ALPHA, zoo_ssd.FPNLITE_FOCAL_GAMMA, zoo_ssd.FPNLITE_SMOOTH_L1_DELTA) == (
        family.FOCAL_ALPHA, family.FOCAL_GAMMA, family.SMOOTH_L1_DELTA)
    assert (zoo_ssd.FPNLITE_ANCHOR_SCALE, zoo_ssd.FPNLITE_ASPECT_RATIOS, zoo_ssd.FPNLITE_SCALES_PER_OCTAVE) == (
        ssd.ANCHOR_SCALE, ssd.ASPECT_RATIOS, ssd.SCALES_PER_OCTAVE)
    assert (zoo_ssd.FPNLITE_BATCH_NORM_DECAY, zoo_ssd.FPNLITE_BATCH_NORM_EPSILON) == (
        fpn_lite.BATCH_NORM_MOMENTUM, fpn_lite.BATCH_NORM_EPSILON)
    assert zoo_ssd.CLASS_PREDICTION_BIAS_INIT == predictor.CLASS_PREDICTION_BIAS_INIT
    assert zoo_ssd.FPNLITE_LEVELS == (ssd.DEFAULT_MIN_LEVEL, ssd.DEFAULT_MAX_LEVEL)

    family = ssd_mobilenet_v2.SsdMobileNetV2
    assert (zoo_ssd.SSD_FOCAL_ALPHA, zoo_ssd.SSD_FOCAL_GAMMA, zoo_ssd.SSD_SMOOTH_L1_DELTA) == (
        family.FOCAL_ALPHA, family.FOCAL_GAMMA, family.SMOOTH_L1_DELTA)
    anchors = multiple_grid_anchors
    assert (zoo_ssd.SSD_NUM_LAYERS, zoo_ssd.SSD_MIN_SCALE, zoo_ssd.SSD_MAX_SCALE, zoo_ssd.SSD_ASPECT_RATIOS,
            zoo_ssd.SSD_INTERPOLATED_SCALE_ASPECT_RATIO) == (anchors.NUM_LAYERS, anchors.MIN_SCALE, anchors.MAX_SCALE,
                                                             anchors.ASPECT_RATIOS,
                                                             anchors.INTERPOLATED_SCALE_ASPECT_RATIO)
    assert zoo_ssd.SSD_KERNEL_SIZE == convolutional_box_predictor.KERNEL_SIZE
    assert (zoo_ssd.SSD_BATCH_NORM_DECAY, zoo_ssd.SSD_BATCH_NORM_EPSILON) == (
        multi_resolution_feature_maps.BATCH_NORM_MOMENTUM, multi_resolution_feature_maps.BATCH_NORM_EPSILON)

    family = ssd_efficientdet.SsdEfficientDet
    assert (zoo_ssd.EFFICIENTDET_FOCAL_ALPHA, zoo_ssd.EFFICIENTDET_FOCAL_GAMMA,
            zoo_ssd.EFFICIENTDET_SMOOTH_L1_DELTA) == (family.FOCAL_ALPHA, family.FOCAL_GAMMA, family.SMOOTH_L1_DELTA)
    assert (zoo_ssd.EFFICIENTDET_ANCHOR_SCALE, zoo_ssd.EFFICIENTDET_ASPECT_RATIOS,
            zoo_ssd.EFFICIENTDET_SCALES_PER_OCTAVE) == (ssd_efficientdet.ANCHOR_SCALE, ssd_efficientdet.ASPECT_RATIOS,
                                                        ssd_efficientdet.SCALES_PER_OCTAVE)
    assert (zoo_ssd.EFFICIENTDET_BATCH_NORM_DECAY, zoo_ssd.EFFICIENTDET_BATCH_NORM_EPSILON) == (
        bifpn.BATCH_NORM_MOMENTUM, bifpn.BATCH_NORM_EPSILON)
    assert zoo_ssd.EFFICIENTDET_LEVELS == (ssd_efficientdet.DEFAULT_MIN_LEVEL, ssd_efficientdet.DEFAULT_MAX_LEVEL)
    assert not family.BACKGROUND_CLASS  # add_background_class: false


#: The oracle's zoo configs. One fine-tuned run is exported here, the export path being the same for
#: every family: the FPN-lite folder's export is verified against the API exporter in
#: tests/tfod/test_model_folder.py, every family's serving outputs are checked in
#: tests/export/test_tfod_outputs.py, and a saved EfficientDet's functions (its swish has a custom
#: gradient) in tests/export/test_padding_window.py. Exporting the D0 run as well cost about 35 CPU s.
ORACLE_CONFIGS = ("ssd_mobilenet_v2_fpnlite_320", "ssd_mobilenet_v2_320", "ssd_efficientdet_d0_512")
EXPORTED_HERE = ("ssd_mobilenet_v2_320",)


def _workspace_pipeline(oracle: Path, folder: Path) -> Path:
    """The oracle folder's pipeline.config, set up as a user fine-tuning its checkpoint would: type
    detection, 4 classes, the workspace's TFRecords and label map."""
    text = (oracle / "pipeline.config").read_text()
    text = re.sub(r"num_classes: \d+", "num_classes: 4", text, count=1)
    text = re.sub(r'fine_tune_checkpoint: ".*"', f'fine_tune_checkpoint: "{oracle / "checkpoint" / "ckpt-0"}"', text)
    text = re.sub(r'fine_tune_checkpoint_type: ".*"', 'fine_tune_checkpoint_type: "detection"', text)
    text = re.sub(r'label_map_path: ".*"', 'label_map_path: "data/label_map.pbtxt"', text)
    inputs = iter(['"data/train.record-?????-of-00002"', '"data/val.record-00000-of-00001"'])
    text = re.sub(r'input_path: ".*"', lambda _: f"input_path: {next(inputs)}", text)
    path = folder / "pipeline.config"
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("folder", ORACLE_CONFIGS)
def test_the_imported_zoo_config_fine_tunes_from_the_zoo_checkpoint(folder, tfod_workspace, tfod_oracle_dir, tmp_path):
    """The acceptance: each zoo config of the oracle, its checkpoint as fine_tune_checkpoint (type
    detection), imports onto its family and the YAML trains 2 steps from it; the SSD's run exports (a
    verified SavedModel with the TF OD API's serving outputs: EXPORTED_HERE says why only it). At 64
    px: no variable depends on the input size, so the checkpoint fits."""
    from detkeeper.export.exporter import export_model
    from detkeeper.training.trainer import train

    pipeline = _workspace_pipeline(tfod_oracle_dir / folder, tmp_path)
    result = import_pipeline_config(pipeline, base_dir=tfod_workspace, out_dir=tmp_path, run_dir=str(tmp_path / "run"))
    assert result.missing_files == () and result.placeholders == ()
    assert result.data["model"]["init_from"]["include"] == "backbone+neck"
    out = write_imported_config(result, tmp_path / "imported.yaml")
    config = load_config(out, ["model.image_size=64", "train.steps=2", "train.batch_size=2",
                               "train.schedule.warmup_steps=1", "evaluation.every_steps=2", "data.max_boxes=10"])
    assert config.model.name == {"ssd_mobilenet_v2_fpnlite_320": "ssd_mobilenet_v2_fpnlite",
                                 "ssd_mobilenet_v2_320": "ssd_mobilenet_v2",
                                 "ssd_efficientdet_d0_512": "ssd_efficientdet"}[folder]

    outcome = train(config)
    assert outcome.status == "finished" and outcome.step == 2 and outcome.best is not None
    restored = json.loads((outcome.run_dir / "init_from.json").read_text())
    parts = {(variable["part"], variable["status"]) for variable in restored["variables"]}
    assert parts == {("backbone", "restored"), ("neck", "restored"), ("head", "not_included")}
    if folder in EXPORTED_HERE:
        exported = export_model(outcome.run_dir, verify_images=2)
        assert exported.verification.passed
        assert exported.metadata["model"]["name"] == config.model.name
