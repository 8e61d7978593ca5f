"""SSD MobileNetV2 without FPN against the TF OD API itself (``../shared/data/tfod-oracle/ssd_mobilenet_v2_320``).

The fixture holds a zoo-layout checkpoint (``ssd_mobilenet_v2_320x320_coco17_tpu-8``, 90 classes,
300 x 300 input) with seeded weights and what the API computed with it on one photo. The model is
built, restored and run once per module, on the photo as detkeeper's pipeline resizes it for this
family (stretched with TF1's bilinear resize, as the API's ``fixed_shape_resizer``).

Tolerances. The box encodings and class logits of the first five maps (1911 of the 1917 anchors)
are within the issue's 2e-4 (measured 1.2e-4, 2026-12-05). The feature maps carry the backbone's
float32 rounding (detkeeper's float32 and float64 runs of the same network differ by 1.1e-4 on the
stride-16 tap, 3.6e-4 on ``layer_19``), which each extra map passes on. The last map is 1 x 1, and
the oracle calibrated its batch norms on one image, so the last extra layer's norm has moving
variance exactly 0: its gain is ``|gamma| / sqrt(0.001)``, 32 on average, 47 at most
(``feature_map_generator/convolutions/5/4``). Every rounding before it is multiplied by that:
float32 and float64 differ by 1.2e-2 on that map and 8.9e-4 on its 6 anchors' logits, and the API's
float32 logits are as far (1.0e-3) from detkeeper's float64 ones. Fed the API's own maps, each
extra layer and the heads agree to 1.8e-5 and 7e-7: nothing but rounding differs. So the feature
maps and the last map's 6 anchors get tolerances of the measured float32 spread, not 2e-4. Those
anchors are large and score high: 40 of the 100 detections come from them, with scores up to
1.1e-4 and raw boxes up to 1.5e-4 from the API's (5e-4 allowed); every other detection agrees
within 1e-4, every class and rank is the API's, and on the API's own raw outputs detkeeper's
post-processing gives the API's detections to 1.2e-7.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, HeadConfig, ModelConfig, NeckConfig
from detkeeper.errors import ConfigError
from detkeeper.models import build_model
from detkeeper.models.registry import model_config_problems
from detkeeper.models.ssd.convolutional_box_predictor import KERNEL_SIZE
from detkeeper.models.ssd.multi_resolution_feature_maps import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, MIN_DEPTH
from detkeeper.models.ssd.multiple_grid_anchors import ASPECT_RATIOS, MAX_SCALE, MIN_SCALE, NUM_LAYERS, ssd_box_specs
from detkeeper.models.ssd.predictor import CLASS_PREDICTION_BIAS_INIT
from detkeeper.models.ssd.ssd_meta_arch import BOX_CODER_SCALES, MATCHED_THRESHOLD, UNMATCHED_THRESHOLD
from detkeeper.models.ssd.ssd_mobilenet_v2 import SsdMobileNetV2
from detkeeper.models.ssd.zoo_checkpoint import restore_zoo_checkpoint
from detkeeper.tfod.pbtxt import parse_text_format

from tfod_oracle_checks import (DETECTION_TOLERANCE, ZooRun, assert_detections_match, assert_serving_graph_matches,
                                checkpoint_prefix, model_input, nms_settings, run_restored)

FOLDER = "ssd_mobilenet_v2_320"
IMAGE_SIZE, NUM_CLASSES = 300, 90
MAP_SIDES = (19, 10, 5, 3, 2, 1)
ANCHORS_PER_LOCATION = (3, 6, 6, 6, 6, 6)
NUM_ANCHORS = 1917
ANCHOR_TOLERANCE = 1e-6  # normalised coordinates, as the API gives them
OUTPUT_TOLERANCE = 2e-4  # box encodings and logits of the first five maps (measured 1.2e-4)
LAST_MAP_OUTPUT_TOLERANCE = 3e-3  # its 6 anchors (measured 8.4e-4; float32 vs float64 alone: 8.9e-4)
#: Per feature map, max abs difference (measured: 1.1e-4, 3.6e-4, 4.4e-4, 5.7e-4, 1.4e-3, 1.1e-2;
#: detkeeper float32 vs float64: 1.1e-4, 3.6e-4, 4.1e-4, 9.4e-4, 1.4e-3, 1.2e-2). Values reach 6.
FEATURE_MAP_TOLERANCES = (2e-4, 1e-3, 1e-3, 2e-3, 4e-3, 4e-2)
LAYER_TOLERANCE = 1e-4  # one extra layer fed the API's own input map (measured 1.8e-5)
#: Detections (normalised boxes, scores) by the anchor they come from: the last map's at 5e-4.
DETECTION_TOLERANCES = np.where(np.arange(NUM_ANCHORS) < NUM_ANCHORS - ANCHORS_PER_LOCATION[-1],
                                DETECTION_TOLERANCE, 5e-4)


def _config(image_size: int = IMAGE_SIZE, **changes) -> ModelConfig:
    return ModelConfig(name="ssd_mobilenet_v2", image_size=image_size,
                       backbone=BackboneConfig(name="mobilenetv2", weights="none"), **changes)


@pytest.fixture(scope="module")
def folder(tfod_oracle_dir):
    return tfod_oracle_dir / FOLDER


@pytest.fixture(scope="module")
def run(folder) -> ZooRun:
    return run_restored(build_model(_config(), NUM_CLASSES), folder)


def test_every_checkpoint_variable_is_restored_one_to_one(run, folder):
    keys = [name[: -len("/.ATTRIBUTES/VARIABLE_VALUE")]
            for name, _ in tf.train.list_variables(checkpoint_prefix(folder)) if name.startswith("model/")]
    assert len(keys) == 324  # the zoo's 326 keys less save_counter and the object graph
    assert sorted(outcome.key for outcome in run.outcomes) == sorted(keys)
    assert {outcome.status for outcome in run.outcomes} == {"restored"}
    assert len({outcome.path for outcome in run.outcomes}) == len(run.model.weights) == 324
    parts = {part: sum(outcome.part == part for outcome in run.outcomes) for part in ("backbone", "neck", "head")}
    assert parts == {"backbone": 260, "neck": 40, "head": 24}


def test_the_settings_the_family_fixes_are_the_zoo_configs(folder):
    """Loss, box coder, matcher, anchor generator, predictor and batch norm as the pipeline.config says."""
    ssd = parse_text_format((folder / "pipeline.config").read_text(), "pipeline.config")["model"][0]["ssd"][0]
    focal = ssd["loss"][0]["classification_loss"][0]["weighted_sigmoid_focal"][0]
    smooth_l1 = ssd["loss"][0]["localization_loss"][0]["weighted_smooth_l1"][0]
    assert (SsdMobileNetV2.FOCAL_ALPHA, SsdMobileNetV2.FOCAL_GAMMA) == (focal["alpha"][0], focal["gamma"][0])
    assert SsdMobileNetV2.SMOOTH_L1_DELTA == smooth_l1["delta"][0]
    coder = ssd["box_coder"][0]["faster_rcnn_box_coder"][0]
    assert BOX_CODER_SCALES == tuple(coder[key][0] for key in ("y_scale", "x_scale", "height_scale", "width_scale"))
    matcher = ssd["matcher"][0]["argmax_matcher"][0]
    assert (MATCHED_THRESHOLD, UNMATCHED_THRESHOLD) == (matcher["matched_threshold"][0],
                                                        matcher["unmatched_threshold"][0])
    generator = ssd["anchor_generator"][0]["ssd_anchor_generator"][0]
    assert (NUM_LAYERS, MIN_SCALE, MAX_SCALE) == (generator["num_layers"][0], generator["min_scale"][0],
                                                 generator["max_scale"][0])
    assert list(ASPECT_RATIOS) == generator["aspect_ratios"]
    predictor = ssd["box_predictor"][0]["convolutional_box_predictor"][0]
    assert (KERNEL_SIZE, 0, CLASS_PREDICTION_BIAS_INIT) == (
        predictor["kernel_size"][0], predictor["num_layers_before_predictor"][0],
        predictor["class_prediction_bias_init"][0])
    extractor = ssd["feature_extractor"][0]
    assert (extractor["type"][0], extractor["min_depth"][0]) == ("ssd_mobilenet_v2_keras", MIN_DEPTH)
    norm = extractor["conv_hyperparams"][0]["batch_norm"][0]
    assert (BATCH_NORM_MOMENTUM, BATCH_NORM_EPSILON) == (norm["decay"][0], norm["epsilon"][0])


def test_the_box_specs_are_create_ssd_anchors():
    """Scales 0.2 to 0.95 in five steps; the first layer has 3 boxes, the others the 5 aspect
    ratios and one more at the scale interpolated with the next layer's (1.0 after the last)."""
    specs = ssd_box_specs()
    assert [len(layer) for layer in specs] == list(ANCHORS_PER_LOCATION)
    assert specs[0] == [(0.1, 1.0), (pytest.approx(0.2), 2.0), (pytest.approx(0.2), 0.5)]
    scales = [layer[0][0] for layer in specs[1:]]
    np.testing.assert_allclose(scales, [0.35, 0.5, 0.65, 0.8, 0.95], rtol=1e-6)
    assert [ratio for _, ratio in specs[1][:5]] == pytest.approx([1.0, 2.0, 0.5, 3.0, 0.3333])
    np.testing.assert_allclose(specs[1][5][0], np.sqrt(0.35 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(specs[-1][5][0], np.sqrt(0.95), rtol=1e-6)


def test_anchors_are_the_apis_in_its_order(run):
    """Centres at (k + 0.5) / n of the image for a map of side n (19, 10, 5, 3, 2, 1 at 300 px)."""
    expected = run.reference["raw/anchors"]
    got = run.model.anchors.numpy() / IMAGE_SIZE
    assert got.shape == expected.shape == (NUM_ANCHORS, 4)
    assert NUM_ANCHORS == sum(side * side * k for side, k in zip(MAP_SIDES, ANCHORS_PER_LOCATION))
    np.testing.assert_allclose(got, expected, rtol=0, atol=ANCHOR_TOLERANCE)
    centers = (got[:, :2] + got[:, 2:]) / 2
    np.testing.assert_allclose(centers[:3], [[0.5 / 19, 0.5 / 19]] * 3, atol=1e-6)
    np.testing.assert_allclose(centers[-6:], [[0.5, 0.5]] * 6, atol=1e-6)


def test_the_model_scales_the_resized_photo_to_the_apis_preprocessed_input(run):
    scaled = run.model.backbone.get_layer("mobilenetv2_input_scaling")(
        model_input(run.model, run.reference["input_image"]))
    np.testing.assert_allclose(scaled.numpy(), run.reference["preprocessed_inputs"], rtol=0, atol=1e-6)


def test_feature_maps_match_the_api(run):
    """``layer_15/expansion_output``, ``layer_19`` and the four extra maps (module docstring: tolerances)."""
    assert [f.shape[1] for f in run.feature_maps] == list(MAP_SIDES)
    for index, (got, tolerance) in enumerate(zip(run.feature_maps, FEATURE_MAP_TOLERANCES)):
        expected = run.reference[f"raw/feature_maps/{index}"]
        assert got.shape == expected.shape, index
        assert np.abs(got - expected).max() <= tolerance, (index, np.abs(got - expected).max())


def test_each_extra_layer_and_the_heads_fed_the_apis_maps_give_the_apis_next_outputs(run):
    """Layer by layer, without the rounding the backbone passes on: extra layer k on the API's map
    k + 1 gives its map k + 2 (measured at most 1.8e-5, the last layer's gain included), and the
    heads on the API's six maps give its raw outputs (7e-7), every anchor included."""
    maps = [tf.constant(run.reference[f"raw/feature_maps/{index}"]) for index in range(len(MAP_SIDES))]
    generator = run.model.feature_map_generator
    for index in range(len(MAP_SIDES) - 2):
        got = generator.extra_map(index, maps[index + 1]).numpy()
        difference = np.abs(got - maps[index + 2].numpy()).max()
        assert difference <= LAYER_TOLERANCE, (index, difference)
    box_encodings, class_logits = run.model.head(maps)
    np.testing.assert_allclose(box_encodings.numpy(), run.reference["raw/box_encodings"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(class_logits.numpy(), run.reference["raw/class_predictions_with_background"], rtol=0,
                               atol=1e-5)


def test_box_encodings_and_class_logits_match_the_api(run):
    last_map = NUM_ANCHORS - ANCHORS_PER_LOCATION[-1]
    for got, key in ((run.box_encodings, "raw/box_encodings"),
                     (run.class_logits, "raw/class_predictions_with_background")):
        expected = run.reference[key]
        assert got.shape == expected.shape, key
        difference = np.abs(got - expected)
        assert difference[:, :last_map].max() <= OUTPUT_TOLERANCE, (key, difference[:, :last_map].max())
        assert difference[:, last_map:].max() <= LAST_MAP_OUTPUT_TOLERANCE, (key, difference[:, last_map:].max())


def test_detections_match_the_api(run, folder, monkeypatch):
    assert_detections_match(run.model, {"box_encodings": run.box_encodings, "class_logits": run.class_logits},
                            run.reference, nms_settings(folder), monkeypatch, DETECTION_TOLERANCES)


def test_the_apis_raw_outputs_give_its_detections(run, folder, monkeypatch):
    """Decoding, the background slot, sigmoid scores, NMS and clipping alone: detkeeper's
    post-processing of the API's own raw outputs is the API's, to the issue's 1e-4 everywhere."""
    outputs = {"box_encodings": run.reference["raw/box_encodings"],
               "class_logits": run.reference["raw/class_predictions_with_background"]}
    assert_detections_match(run.model, outputs, run.reference, nms_settings(folder), monkeypatch)


def test_the_serving_graph_answers_like_the_api_exporter(run, folder):
    assert_serving_graph_matches(run.model, run.reference, nms_settings(folder), DETECTION_TOLERANCES)


def test_fine_tuning_to_other_classes_keeps_every_class_output_fresh(folder):
    """A 3-class model from the 90-class checkpoint with a fresh class head (``include: all``): each
    map's class convolution keeps its prior bias, everything else is restored. At 64 px: no
    variable depends on the input size."""
    model = build_model(_config(64), 3)
    outcomes = restore_zoo_checkpoint(model, checkpoint_prefix(folder), fresh_class_head=True)
    skipped = [outcome.key for outcome in outcomes if outcome.status == "skipped_for_shape"]
    assert len(skipped) == 12 and all("class_predictions_with_background" in key for key in skipped)
    assert sum(outcome.status == "restored" for outcome in outcomes) == 324 - 12
    for class_output in model.head.class_outputs:
        np.testing.assert_allclose(class_output.bias.numpy(), -4.6)


@pytest.mark.parametrize("changes, problem", [
    ({"image_size": 32}, "image_size: the SSD MobileNetV2 extractor needs at least 33 px, got 32"),
    ({"neck": NeckConfig(channels=64)}, "neck.channels: ssd_mobilenet_v2's feature maps are the TF OD API's fixed"),
    ({"head": HeadConfig(convs=2)}, "head.convs: the layers before each map's outputs are model.head.channels"),
    ({"head": HeadConfig(share_tower=True)}, "head.share_tower: ssd_mobilenet_v2's predictor has its own layers"),
    ({"head": HeadConfig(separable=True)}, "head.separable: ssd_mobilenet_v2's depthwise predictor"),
    ({"backbone": BackboneConfig(name="tiny", depth_multiplier=0.5)},
     "backbone.depth_multiplier: only the API's MobileNetV2"),
    ({"backbone": BackboneConfig(name="mobilenetv2", weights="imagenet", depth_multiplier=0.5)},
     "backbone.weights: the API's MobileNetV2 at depth multiplier 0.5"),
    ({"backbone": BackboneConfig(name="resnet50")}, "backbone.name: the SSD MobileNetV2 families are built on"),
])
def test_the_check_refuses_what_the_fixed_layout_cannot_build(changes, problem):
    config = dataclasses.replace(_config(), **changes)
    problems = model_config_problems(config)
    assert len(problems) == 1 and problems[0].startswith(problem), problems
    with pytest.raises(ConfigError, match="model." + problem.split(":")[0]):
        build_model(config, 3)


def test_any_side_from_33_px_builds_with_anchors_on_its_maps():
    """Not a multiple of 32 (the API checks only the 33 px minimum): maps 3, 2, 1, 1, 1, 1 at 33 px."""
    model = build_model(dataclasses.replace(_config(33), backbone=BackboneConfig(name="tiny")), 3)
    outputs = model(tf.zeros([1, 33, 33, 3]))
    assert outputs["box_encodings"].shape[1] == model.anchors.shape[0] == 3 * 3 * 3 + 4 * 6 + 4 * 6
