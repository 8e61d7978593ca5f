"""`detkeeper config import`: the protobuf text parser, the mapping of TF OD API pipeline configs
(three model zoo kinds in tests/fixtures/tfod), the command, and the acceptance: each imported
config trains."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detkeeper.cli.main import main
from detkeeper.config import load_config
from detkeeper.tfod.pbtxt import MAX_DEPTH, parse_text_format
from detkeeper.tfod.importer import import_pipeline_config
from detkeeper.errors import ConfigError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tfod"
SSD = FIXTURES / "ssd_mobilenet_v2_320x320.config"
CENTERNET = FIXTURES / "centernet_resnet50_v1_fpn_512x512.config"
EFFICIENTDET = FIXTURES / "ssd_efficientdet_d0_512x512.config"


# --- parser -------------------------------------------------------------------------------------

def test_every_syntax_form_parses_into_lists_of_values():
    text = textwrap.dedent("""\
        # a comment line
        a: 1  b: -2.5e3 c: .08 d: 1.0f e: 0x1F f: 017 g: -inf h: nan   # trailing comment
        i: true j: False k: RELU_6 l: "two" 'parts' m: ''
        msg { x: 1, y: 2; }
        msg: { x: 3 }
        angle < x: 4 >
        colon_angle: < x: 5 >
        list: [1.0, 2.0, 0.5]
        empty: []
        messages [{x: 6}, <x: 7>]
        messages: [{x: 8}]
        repeated: 1
        repeated: 2
        [pkg.Ext.field] { ss_table: { input_path: "p" } }
        [type.googleapis.com/pkg.Msg] { }
        """)
    parsed = parse_text_format(text, "t.config")
    assert parsed["a"] == [1] and parsed["b"] == [-2500.0] and parsed["c"] == [0.08]
    assert parsed["d"] == [1.0] and parsed["e"] == [31] and parsed["f"] == [15]
    assert parsed["g"] == [-math.inf] and math.isnan(parsed["h"][0])
    assert parsed["i"] == [True] and parsed["j"] == [False] and parsed["k"] == ["RELU_6"]
    assert parsed["l"] == ["twoparts"] and parsed["m"] == [""]
    assert parsed["msg"] == [{"x": [1], "y": [2]}, {"x": [3]}]
    assert parsed["angle"] == [{"x": [4]}] and parsed["colon_angle"] == [{"x": [5]}]
    assert parsed["list"] == [1.0, 2.0, 0.5] and parsed["empty"] == []
    assert parsed["messages"] == [{"x": [6]}, {"x": [7]}, {"x": [8]}]
    assert parsed["repeated"] == [1, 2]
    assert parsed["[pkg.Ext.field]"] == [{"ss_table": [{"input_path": ["p"]}]}]
    assert parsed["[type.googleapis.com/pkg.Msg]"] == [{}]
    assert isinstance(parsed["a"][0], int) and isinstance(parsed["c"][0], float)


def test_floats_protobuf_wrote_as_float32_read_as_their_author_wrote_them():
    """The zoo's pipeline.config files were written by protobuf from float32 fields."""
    text = "a: 0.8999999761581421 b: -4.599999904632568 c: 9.99999993922529e-09 d: 0.1 e: 0.123456789 f: 1e300"
    parsed = parse_text_format(text, "t")
    assert [parsed[name][0] for name in "abcdef"] == [0.9, -4.6, 1e-8, 0.1, 0.123456789, 1e300]


def test_string_escapes_decode_as_protobuf_does():
    text = r"""s: "tab\t nl\n q\" sq\' bs\\ oct\101 hex\x42 u\u00e9 U\U0001F600" t: 'it''s' u: "caf\303\251" """
    parsed = parse_text_format(text, "t")
    assert parsed["s"] == ["tab\t nl\n q\" sq' bs\\ octA hexB u\u00e9 U\U0001F600"]
    assert parsed["t"] == ["its"] and parsed["u"] == ["café"]


def test_the_model_zoo_forms_of_the_fixtures_parse():
    parsed = parse_text_format(EFFICIENTDET.read_text(), str(EFFICIENTDET))
    ssd = parsed["model"][0]["ssd"][0]
    assert ssd["anchor_generator"][0]["multiscale_anchor_generator"][0]["aspect_ratios"] == [1.0, 2.0, 0.5]
    assert ssd["feature_extractor"][0]["type"] == ["ssd_efficientnet-b0_bifpn_keras"]
    assert parsed["eval_config"][0]["batch_size"] == [1]  # `batch_size: 1;`
    assert len(parsed["train_config"][0]["data_augmentation_options"]) == 2


@pytest.mark.parametrize("text,where,what", [
    ("a: 1\nb {\n  c: 2\n", "line 4, column 1", "expected '}' to close a message"),
    ("a: 1\n  b: \"open\n", "line 2, column 6", "an unterminated string"),
    ("a 1", "line 1, column 3", "expected ':' or '{' after field 'a'"),
    ("a: [1 2]", "line 1, column 7", "expected ','"),
    ("\n\n   a: 1.2.3", "line 3, column 7", "invalid number '1.2.3'"),
    ("a: 09", "line 1, column 4", "invalid octal number"),
    ("}", "line 1, column 1", "expected a field name"),
    ("a: -true", "line 1, column 5", "expected a value"),
    ("a: \"\\q\"", "line 1, column 4", "invalid escape \\q"),
    ("a: \"\\777\"", "line 1, column 4", "invalid octal escape"),
    ("a: \"\\xff\"", "line 1, column 4", "not valid UTF-8"),
    ("a: 1 $", "line 1, column 6", "unexpected character '$'"),
    ("a [1, 2]", "line 1, column 4", "expected a message in the list"),
    ("[pkg.] {}\n[] {}", "line 2, column 1", "expected an extension name"),
])
def test_errors_name_the_file_line_and_column(text, where, what):
    with pytest.raises(ConfigError) as error:
        parse_text_format(text, "pipeline.config")
    assert str(error.value).startswith(f"pipeline.config: {where}: ")
    assert what in str(error.value)


def test_nesting_deeper_than_the_limit_is_an_error_not_a_crash():
    parse_text_format("a {" * MAX_DEPTH + "}" * MAX_DEPTH, "t")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} deep"):
        parse_text_format("a {" * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1), "t")
    with pytest.raises(ConfigError, match="nested"):
        parse_text_format("a: [" + "{a: [" * 5000, "t")


_TOKENS = st.sampled_from(["a", "b_2", ":", "{", "}", "<", ">", "[", "]", ",", ";", "-", ".", "/", " ", "\n",
                           "1", "0x1f", "017", "09", "1.5e3", ".5", "1f", "inf", "nan", "true", "'s'", '"x\\n"',
                           '"\\777"', '"\\u12"', "'", '"', "#c\n", "\\", "é", "\x00"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(_TOKENS, max_size=40).map("".join)))
def test_any_text_parses_or_raises_only_config_error(text):
    try:
        parsed = parse_text_format(text, "fuzz")
    except ConfigError as error:
        assert str(error).startswith("fuzz: line ")
    else:
        assert isinstance(parsed, dict)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 4000), st.integers(0, 40), st.text(max_size=3))
def test_a_damaged_pipeline_config_parses_or_raises_only_config_error(start, length, insert):
    import tempfile

    text = SSD.read_text()
    start %= len(text)
    with tempfile.TemporaryDirectory() as folder:
        try:
            result = import_pipeline_config_text(text[:start] + insert + text[start + length:], Path(folder))
        except ConfigError as error:
            assert str(error).startswith(f"{folder}/pipeline.config: ")
        else:
            assert result.data["model"]["name"] in ("retinanet", "fcos", "ssd_mobilenet_v2")


def import_pipeline_config_text(text: str, folder: Path):
    path = folder / "pipeline.config"
    path.write_text(text, encoding="utf-8")
    return import_pipeline_config(path, base_dir=folder, out_dir=folder)


# --- mapping ------------------------------------------------------------------------------------

def notes_of(result) -> dict[str, str]:
    return {note.path: note.reason for note in result.not_carried}


def test_an_ssd_detkeeper_does_not_reproduce_maps_to_retinanet_on_mobilenetv2(tmp_path):
    """The zoo's SSD MobileNetV2 config with a MobileNet V1 extractor: no family reproduces it."""
    approximated = tmp_path / SSD.name
    approximated.write_text(SSD.read_text().replace("type: 'ssd_mobilenet_v2_keras'", "type: 'ssd_mobilenet_v1_keras'"))
    result = import_pipeline_config(approximated, base_dir=tmp_path, out_dir=tmp_path)
    data = result.data
    assert data["model"] == {"name": "retinanet", "backbone": {"name": "mobilenetv2", "weights": "imagenet"},
                             "image_size": 320,  # 300x300 rounded up to a multiple of 32
                             "resize": {"mode": "stretch", "method": "tf1_bilinear"}}  # fixed_shape_resizer
    assert data["train"] == {"batch_size": 512, "steps": 50000, "ema_decay": None,
                             "optimizer": {"name": "sgd", "momentum": 0.9, "learning_rate": 0.08, "clipnorm": None},
                             "schedule": {"name": "cosine", "warmup_steps": 2000}}
    assert data["data"]["train"] == {"format": "tfrecord", "path": "data/train.record-?????-of-00002"}
    assert data["data"]["val"] == {"format": "tfrecord", "path": "data/val.record-00000-of-00001"}
    assert data["data"]["label_map"] == "data/label_map.pbtxt" and data["data"]["max_boxes"] == 100
    assert data["data"]["augment"] == {"horizontal_flip": True, "scale_jitter": [1.0, 2.0], "colour_jitter": 0.0}
    assert data["evaluation"] == {"every_steps": 1000, "score_threshold": 1e-8, "iou_threshold": 0.6,
                                  "max_detections": 100}
    assert data["run_dir"] == "runs/ssd_mobilenet_v2_320x320"
    size = next(entry for entry in result.mapped if entry.target == "model.image_size")
    assert "rounded up from 300" in size.comment
    notes = notes_of(result)
    assert "variables are named after the API's Keras models" in notes["train_config.fine_tune_checkpoint"]
    assert "ImageNet weights for mobilenetv2" in notes["train_config.fine_tune_checkpoint"]
    assert "scale_jitter [1.0, 2.0]" in notes["train_config.data_augmentation_options[1].ssd_random_crop"]
    assert notes["train_config.optimizer.momentum_optimizer.learning_rate.cosine_decay_learning_rate"
                 ".warmup_learning_rate"] == "detkeeper's warmup starts from 0"
    assert "shared across pyramid levels" in notes["model.ssd.box_predictor.convolutional_box_predictor"]
    assert set(notes) >= {"model.ssd.box_coder", "model.ssd.matcher", "model.ssd.anchor_generator",
                          "model.ssd.loss", "model.ssd.feature_extractor.conv_hyperparams",
                          "train_config.sync_replicas", "train_config.replicas_to_aggregate",
                          "train_config.fine_tune_checkpoint_version", "train_config.unpad_groundtruth_tensors"}
    # read and carried: never listed as not carried over
    assert not set(notes) & {"train_config.batch_size", "model.ssd.num_classes", "eval_config.metrics_set",
                             "eval_input_reader.shuffle", "model.ssd.post_processing.score_converter"}


def test_the_apis_vertical_flip_and_quarter_turn_map_to_data_augment(tmp_path):
    """random_vertical_flip and random_rotation90 (probability 1/2, the API's default) are carried
    exactly; another probability or keypoint permutations are said not to be."""
    steps = ("data_augmentation_options { random_vertical_flip { } }\n"
             "  data_augmentation_options { random_rotation90 { probability: 0.3 } }\n"
             "  data_augmentation_options {")
    text = SSD.read_text().replace("data_augmentation_options {", steps, 1)
    result = import_pipeline_config_text(text, tmp_path)
    augment = result.data["data"]["augment"]
    assert augment["vertical_flip"] is True and augment["rotate_90"] is True and augment["horizontal_flip"] is True
    notes = notes_of(result)
    assert not any("random_vertical_flip" in path for path in notes)
    assert "probability 0.5" in notes["train_config.data_augmentation_options[1].random_rotation90.probability"]


def test_centernet_maps_to_fcos_with_a_step_schedule(tmp_path):
    result = import_pipeline_config(CENTERNET, base_dir=tmp_path, out_dir=tmp_path)
    data = result.data
    assert data["model"] == {"name": "fcos", "backbone": {"name": "resnet50", "weights": "imagenet"},
                             "image_size": 512, "resize": {"mode": "pad", "method": "tf1_bilinear"}}
    assert data["train"]["optimizer"] == {"name": "adam", "learning_rate": 0.001, "clipnorm": None}
    assert data["train"]["schedule"] == {"name": "step", "warmup_steps": 0, "decay_rate": 0.1,
                                         "decay_steps": [90000, 120000]}
    assert data["train"]["steps"] == 140000 and data["train"]["batch_size"] == 128
    # hue 0.02 -> 0.2, contrast/saturation 0.8..1.25 -> 0.25, brightness 0.2 -> 0.4: the strongest
    assert data["data"]["augment"] == {"horizontal_flip": True, "scale_jitter": [1.0, 2.0], "colour_jitter": 0.4}
    assert data["evaluation"] == {"every_steps": 1000, "max_detections": 100}
    notes = notes_of(result)
    assert "no random_absolute_pad_image" in notes["train_config.data_augmentation_options[6].random_absolute_pad_image"]
    assert "FCOS has its own" in notes["model.center_net.object_detection_task"]
    assert "heatmap" in notes["model.center_net.object_center_params.min_box_overlap_iou"]
    assert "eval_config.batch_size" in notes
    assert "train_config.optimizer.adam_optimizer.epsilon" not in notes  # 1e-7 is Keras' own


def test_an_efficientdet_detkeeper_does_not_reproduce_maps_to_retinanet_with_its_pyramid_and_head(tmp_path):
    """EfficientDet's config with an EfficientNet-B8 extractor, which the API never had."""
    approximated = tmp_path / EFFICIENTDET.name
    approximated.write_text(EFFICIENTDET.read_text().replace("ssd_efficientnet-b0_bifpn_keras",
                                                             "ssd_efficientnet-b8_bifpn_keras"))
    result = import_pipeline_config(approximated, base_dir=tmp_path, out_dir=tmp_path)
    model = result.data["model"]
    assert model == {"name": "retinanet", "backbone": {"name": "efficientnetv2b0", "weights": "imagenet"},
                     "image_size": 512, "resize": {"mode": "pad", "method": "tf1_bilinear"},
                     "neck": {"min_level": 3, "max_level": 7, "channels": 64},
                     "head": {"channels": 64, "convs": 3}}
    assert result.data["data"]["augment"]["scale_jitter"] == [0.1, 2.0]
    assert result.data["evaluation"]["iou_threshold"] == 0.5
    notes = notes_of(result)
    assert "bfloat16 is for TPUs" in notes["train_config.use_bfloat16"]
    assert "trained neck and heads are not carried" in notes["train_config.fine_tune_checkpoint"]
    assert notes["train_config.fine_tune_checkpoint_type"] == "goes with fine_tune_checkpoint, which is not read"
    assert "one top-down pass" in notes["model.ssd.feature_extractor.bifpn.num_iterations"]
    backbone = next(entry for entry in result.mapped if entry.target == "model.backbone.name")
    assert "EfficientNet-B8" in backbone.comment


def test_the_zoo_ssd_mobilenet_v2_maps_onto_its_family_exactly(tmp_path):
    result = import_pipeline_config(SSD, base_dir=tmp_path, out_dir=tmp_path)
    assert result.data["model"] == {
        "name": "ssd_mobilenet_v2", "backbone": {"name": "mobilenetv2", "weights": "none"},
        "image_size": 300, "resize": {"mode": "stretch", "method": "tf1_bilinear"},  # not rounded
        "init_from": {"path": "pretrained/mobilenet_v2.ckpt-1", "include": "backbone"}}
    notes = notes_of(result)
    # The anchors, predictor, loss (alpha 0.75) and batch norm (decay 0.97) are the family's own.
    assert sorted(path for path in notes if path.startswith("model.")) == sorted(
        f"{section}.conv_hyperparams.{name}" for section in ("model.ssd.feature_extractor",
                                                             "model.ssd.box_predictor.convolutional_box_predictor")
        for name in ("initializer", "regularizer"))


def test_the_zoo_efficientdet_maps_onto_its_family_sized_by_the_config(tmp_path):
    text = EFFICIENTDET.read_text()
    for old, new in (("ssd_efficientnet-b0_bifpn_keras", "ssd_efficientnet-b2_bifpn_keras"),
                     ("num_filters: 64", "num_filters: 112"), ("num_iterations: 3", "num_iterations: 5"),
                     ("min_dimension: 512", "min_dimension: 768"), ("max_dimension: 512", "max_dimension: 768")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "d2.config"
    path.write_text(text)
    result = import_pipeline_config(path, base_dir=tmp_path, out_dir=tmp_path)
    assert result.data["model"] == {
        "name": "ssd_efficientdet", "backbone": {"name": "efficientnet-b2", "weights": "none"},
        "image_size": 768, "resize": {"mode": "pad", "method": "tf1_bilinear"},
        "neck": {"min_level": 3, "max_level": 7, "repeats": 5, "channels": 112},
        "head": {"channels": 64, "convs": 3},
        "init_from": {"path": "pretrained/efficientdet_d0_coco17_tpu-32/checkpoint/ckpt-0", "include": "backbone+neck"}}
    notes = notes_of(result)
    assert sorted(path for path in notes if path.startswith("model.")) == sorted(
        f"{section}.conv_hyperparams.{name}" for section in (
            "model.ssd.feature_extractor", "model.ssd.box_predictor.weight_shared_convolutional_box_predictor")
        for name in ("initializer", "regularizer"))


def test_unknown_fields_are_reported_with_their_path(tmp_path):
    text = SSD.read_text().replace("num_classes: 4", "num_classes: 4\n    brand_new_field: 3\n"
                                   "    brand_new_message { x: 1 }")
    notes = notes_of(import_pipeline_config_text(text, tmp_path))
    assert notes["model.ssd.brand_new_field"] == "detkeeper has no equivalent setting"
    assert notes["model.ssd.brand_new_message"] == "detkeeper has no equivalent setting"


def test_num_classes_is_checked_against_a_readable_label_map(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "label_map.pbtxt").write_text(
        "".join(f"item {{ id: {i} name: 'c{i}' }}\n" for i in range(1, 5)))
    result = import_pipeline_config_text(SSD.read_text(), tmp_path)
    classes = next(entry for entry in result.mapped if entry.target == "(classes)")
    assert classes.source == "model.ssd.num_classes" and "has 4 classes" in classes.comment
    result = import_pipeline_config_text(SSD.read_text().replace("num_classes: 4", "num_classes: 90"), tmp_path)
    assert "label map's 4 classes" in notes_of(result)["model.ssd.num_classes"]


def test_relative_paths_start_at_base_dir_and_are_written_relative_to_the_yaml(tmp_path):
    base, out = tmp_path / "workspace", tmp_path / "configs" / "mine"
    result = import_pipeline_config(SSD, base_dir=base, out_dir=out)
    assert result.data["data"]["train"]["path"] == "../../workspace/data/train.record-?????-of-00002"
    text = SSD.read_text().replace('"data/label_map.pbtxt"', f'"{tmp_path}/abs/label_map.pbtxt"')
    result = import_pipeline_config_text(text, tmp_path)
    assert result.data["data"]["label_map"] == f"{tmp_path}/abs/label_map.pbtxt"
    assert f"data.label_map: {tmp_path}/abs/label_map.pbtxt" in result.missing_files


LEARNING_RATES = {
    "exponential": ("exponential_decay_learning_rate { initial_learning_rate: 0.004 decay_steps: 800 "
                    "decay_factor: 0.95 staircase: false }",
                    {"name": "step", "warmup_steps": 0, "decay_rate": 0.95, "decay_steps": [800, 1600]}, 0.004),
    "constant": ("constant_learning_rate { learning_rate: 0.0002 }",
                 {"name": "constant", "warmup_steps": 0}, 0.0002),
    "manual_warmup": ("manual_step_learning_rate { initial_learning_rate: 0.001 warmup: true "
                      "schedule { step: 100 learning_rate: 0.01 } schedule { step: 1000 learning_rate: 0.001 } }",
                      {"name": "step", "warmup_steps": 100, "decay_rate": 0.1, "decay_steps": [1000]}, 0.01),
}


@pytest.mark.parametrize("kind", sorted(LEARNING_RATES))
def test_learning_rates_map_to_the_closest_schedule(kind, tmp_path):
    rate, schedule, peak = LEARNING_RATES[kind]
    text = f"""model {{ ssd {{ num_classes: 2 feature_extractor {{ type: "ssd_mobilenet_v2_fpn_keras" }}
                 image_resizer {{ fixed_shape_resizer {{ height: 320 width: 640 }} }} }} }}
               train_config {{ num_steps: 2000 optimizer {{ rms_prop_optimizer {{ learning_rate {{ {rate} }}
                 momentum_optimizer_value: 0.9 decay: 0.9 epsilon: 1.0 }} }} }}"""
    result = import_pipeline_config_text(text, tmp_path)
    assert result.data["train"]["schedule"] == schedule
    assert result.data["train"]["optimizer"]["learning_rate"] == peak
    assert result.data["train"]["optimizer"]["name"] == "adam"  # no RMSProp in detkeeper
    assert result.data["train"]["ema_decay"] == 0.9999  # the API's default: use_moving_average true
    assert result.data["model"]["image_size"] == 640  # the longer side of a non-square input
    assert result.data["model"]["resize"] == {"mode": "pad", "method": "tf1_bilinear"}  # detkeeper's input is square
    notes = notes_of(result)
    rms = "train_config.optimizer.rms_prop_optimizer"
    assert {f"{rms}.decay", f"{rms}.epsilon", f"{rms}.momentum_optimizer_value"} <= set(notes)
    if kind == "exponential":
        assert any("staircase" in entry.comment for entry in result.mapped)
    if kind == "manual_warmup":
        assert notes[f"{rms}.learning_rate.manual_step_learning_rate.initial_learning_rate"] == \
            "detkeeper's warmup starts from 0"


def test_a_detection_checkpoint_that_is_a_detkeeper_run_becomes_init_from(tmp_path):
    run = tmp_path / "runs" / "previous"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run_dir: .\n")
    text = EFFICIENTDET.read_text().replace("pretrained/efficientdet_d0_coco17_tpu-32/checkpoint/ckpt-0",
                                            "runs/previous")
    result = import_pipeline_config_text(text, tmp_path)
    # "detection", as the API's SSD restores it: the feature extractor (backbone and FPN), not the heads
    assert result.data["model"]["init_from"] == {"path": "runs/previous", "include": "backbone+neck"}
    assert result.data["model"]["backbone"]["weights"] == "none"
    assert "train_config.fine_tune_checkpoint" not in notes_of(result)


def test_faster_rcnn_maps_to_retinanet_and_its_stage_settings_are_noted(tmp_path):
    text = """model { faster_rcnn { num_classes: 3 feature_extractor { type: 'faster_rcnn_resnet101_keras' }
                image_resizer { keep_aspect_ratio_resizer { min_dimension: 600 max_dimension: 1024 } }
                first_stage_nms_iou_threshold: 0.7
                second_stage_post_processing { batch_non_max_suppression { score_threshold: 0.0 iou_threshold: 0.6
                  max_detections_per_class: 100 max_total_detections: 300 } score_converter: SOFTMAX } } }
              train_config { num_steps: 100 optimizer { momentum_optimizer { learning_rate {
                constant_learning_rate { learning_rate: 0.01 } } } use_moving_average: false } }"""
    result = import_pipeline_config_text(text, tmp_path)
    assert result.data["model"] == {"name": "retinanet", "backbone": {"name": "resnet50", "weights": "none"},
                                    "image_size": 1024, "resize": {"mode": "pad", "method": "tf1_bilinear"}}
    assert result.data["evaluation"] == {"every_steps": 100, "score_threshold": 0.0, "iou_threshold": 0.6,
                                         "max_detections": 300}
    notes = notes_of(result)
    assert "one-stage" in notes["model.faster_rcnn.first_stage_nms_iou_threshold"]
    assert "sigmoids" in notes["model.faster_rcnn.second_stage_post_processing.score_converter"]
    size = next(entry for entry in result.mapped if entry.target == "model.image_size")
    assert "min_dimension 600 is not used" in size.comment


@pytest.mark.parametrize("text,message", [
    ("model { experimental_model { } } train_config { }", "'experimental_model' has no detkeeper counterpart"),
    ("item { id: 1 name: 'cat' }", "no `model { ... }` section"),
    ("model { ssd { num_classes: 1 num_classes: 2 feature_extractor { type: 'x' } } } train_config {}",
     "model.ssd.num_classes: given 2 times"),
    ("model { ssd { num_classes: 'four' } } train_config {}", "model.ssd.num_classes: expected a finite number"),
])
def test_configs_that_cannot_map_are_config_errors(text, message, tmp_path):
    with pytest.raises(ConfigError, match="pipeline.config: ") as error:
        import_pipeline_config_text(text, tmp_path)
    assert message in str(error.value)


# --- command ------------------------------------------------------------------------------------

def test_command_writes_the_yaml_prints_both_lists_and_refuses_to_overwrite(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["config", "import", str(CENTERNET), "--out", "cn.yaml", "--run-dir", "runs/cn"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"wrote cn.yaml from {CENTERNET}" in out
    assert "model.center_net -> model.name: 'fcos'" in out
    assert "not carried over (10):" in out and "random_absolute_pad_image" in out
    assert "not found yet (3;" in out
    written = (tmp_path / "cn.yaml").read_text()
    assert written.startswith("# Imported from the TF Object Detection API pipeline config")
    assert "#   train_config.data_augmentation_options[6].random_absolute_pad_image: " in written
    assert "run_dir: runs/cn" in written

    code = main(["config", "import", str(SSD), "--out", "cn.yaml"])
    err = capsys.readouterr().err
    assert code == 2 and "cn.yaml: already exists; choose another --out or pass --force" in err
    assert "Traceback" not in err and (tmp_path / "cn.yaml").read_text() == written

    assert main(["config", "import", str(SSD), "--out", "cn.yaml", "--force", "--quiet"]) == 0
    assert "name: ssd_mobilenet_v2" in (tmp_path / "cn.yaml").read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["cn.yaml"]  # no temporary file left


def test_command_errors_are_one_paragraph(tmp_path, capsys):
    broken = tmp_path / "pipeline.config"
    broken.write_text("model {\n  ssd {\n    num_classes 4\n")
    code = main(["config", "import", str(broken), "--out", str(tmp_path / "x.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (f"detkeeper config: error: {broken}: line 3, column 17: expected ':' or '{{' after "
                           "field 'num_classes', found '4'")
    assert not (tmp_path / "x.yaml").exists()


def test_command_does_not_import_tensorflow(tmp_path):
    script = ("import sys; from detkeeper.cli.main import main; "
              f"code = main(['config', 'import', {str(SSD)!r}, '--out', {str(tmp_path / 'r.yaml')!r}, '--quiet']); "
              "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stderr


# --- acceptance: each imported config trains ---------------------------------------------------

# Tiny: 128 px, 2 steps of batch 2, one evaluation, narrow pyramid and heads, no ImageNet download.
# ResNet-50 is swapped for the tiny backbone to keep this file near a minute on 2 cores (it is built
# and trained in tests/models); the SSD config trains its own MobileNetV2. The configs that map onto
# the TF OD API families train from the oracle's checkpoints in test_zoo_import.py.
SMALLER_BACKBONE = {"ssd_approximated": [], CENTERNET.stem: ["model.backbone.name=tiny"]}
TINY = ["model.image_size=128", "model.backbone.weights=none", "model.neck.channels=16", "model.head.channels=16",
        "model.head.convs=1", "train.steps=2", "train.batch_size=2", "train.schedule.warmup_steps=1",
        "evaluation.every_steps=2", "data.max_boxes=10"]


@pytest.mark.parametrize("name", list(SMALLER_BACKBONE))
def test_the_imported_config_trains(name, tfod_workspace, tmp_path):
    from detkeeper.training.trainer import train

    fixture = CENTERNET if name == CENTERNET.stem else tmp_path / f"{name}.config"
    if name == "ssd_approximated":  # an SSD no family reproduces: retinanet
        fixture.write_text(SSD.read_text().replace("type: 'ssd_mobilenet_v2_keras'", "type: 'ssd_mobilenet_v1_keras'"))
    out = tmp_path / "imported.yaml"
    result = import_pipeline_config(fixture, base_dir=tfod_workspace, out_dir=tmp_path,
                                    run_dir=str(tmp_path / "run"))
    assert result.missing_files == ()
    classes = next(entry for entry in result.mapped if entry.target == "(classes)")
    assert "the label map has 4 classes" in classes.comment
    from detkeeper.tfod.importer import write_imported_config
    write_imported_config(result, out)
    as_imported = load_config(out)
    assert as_imported.model.name == result.data["model"]["name"]
    assert as_imported.model.backbone.name == result.data["model"]["backbone"]["name"]
    config = load_config(out, TINY + SMALLER_BACKBONE[name])
    assert config.model.name == as_imported.model.name and config.train.optimizer == as_imported.train.optimizer
    assert config.data.train.path == str(tfod_workspace / "data" / "train.record-?????-of-00002")

    outcome = train(config)
    assert outcome.status == "finished" and outcome.step == 2
    ledger = json.loads((tmp_path / "run" / "checkpoints" / "ledger.json").read_text())
    assert [entry["step"] for entry in ledger["checkpoints"]] == [2]
    assert (tmp_path / "run" / "checkpoints" / ledger["checkpoints"][0]["name"] / "ckpt.index").is_file()
