"""EfficientDet (``ssd_efficientdet``) against the TF OD API itself (``../shared/data/tfod-oracle``).

The fixture ``ssd_efficientdet_d0_512`` holds a zoo-layout EfficientDet-D0 checkpoint with seeded
weights and what the API computed with it on one photo (640 x 480: resized to 512 x 384, padded
to 512). The model is built, restored and run once per module; the model sees the photo as
detkeeper's pipeline resizes and pads it for this family, and normalises it itself.

Tolerances as for FPN-lite (tests/models/test_ssd_zoo.py): box encodings, class logits and feature
maps 2e-4 (issue 17). Measured 2026-12-05: feature maps at most 1.2e-5, box encodings 2.8e-6, class
logits 3.5e-6, preprocessed input 4.8e-7, anchors 0, detection scores 4.8e-7 in the API's order.

The API clips each class's survivors of NMS to the resized photo (its clip window) and drops those
left empty, so a detection wholly in the padding gives its place to the next one; none of the D0
fixture's 100 detections is such a box, so the photo's outputs with a few logits raised are checked
against what the API's ``postprocess`` made of them (``tests/fixtures/tfod/clip_window``).
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, HeadConfig, ModelConfig, NeckConfig
from detkeeper.models import build_model
from detkeeper.models.registry import model_config_problems
from tfod_oracle_checks import (ZooRun, assert_detections_match, assert_serving_graph_matches, checkpoint_prefix,
                                nms_settings, run_restored)

FOLDER = "ssd_efficientdet_d0_512"
TOLERANCE = 2e-4
CHECKPOINT_KEYS = 683  # the fixture's 685 less save_counter and the object graph
UNUSED = "model/_feature_extractor/classification_backbone/"  # EfficientNet's top and classifier
CLIP_WINDOW_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tfod" / "clip_window" / "clip_window.npz"


@pytest.fixture(scope="module")
def zoo_run(tfod_oracle_dir) -> ZooRun:
    config = ModelConfig(name="ssd_efficientdet", image_size=512,
                         backbone=BackboneConfig(name="efficientnet-b0", weights="none"))
    return run_restored(build_model(config, 90), tfod_oracle_dir / FOLDER)


def test_every_checkpoint_variable_is_restored_one_to_one(zoo_run, tfod_oracle_dir):
    keys = [name[: -len("/.ATTRIBUTES/VARIABLE_VALUE")]
            for name, _ in tf.train.list_variables(checkpoint_prefix(tfod_oracle_dir / FOLDER))
            if name.startswith("model/")]
    assert len(keys) == CHECKPOINT_KEYS
    used = sorted(key for key in keys if not key.startswith(UNUSED))
    # Left out: the top 1x1 convolution (320 -> 1280), its batch norm and the 1000-class classifier.
    assert len(keys) - len(used) == 1 + 4 + 2
    assert sorted(outcome.key for outcome in zoo_run.outcomes) == used
    assert {outcome.status for outcome in zoo_run.outcomes} == {"restored"}
    assert len({outcome.path for outcome in zoo_run.outcomes}) == len(zoo_run.model.weights) == len(used)


def test_anchors_and_the_preprocessed_input_are_the_apis(zoo_run):
    expected = zoo_run.reference["raw/anchors"]
    got = zoo_run.model.anchors.numpy() / zoo_run.model.image_size
    assert got.shape == expected.shape == (9 * (64 ** 2 + 32 ** 2 + 16 ** 2 + 8 ** 2 + 4 ** 2), 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # Padded with the mean pixel, which the model's normalisation turns into the API's zeros.
    normalised = zoo_run.model.backbone.get_layer("imagenet_normalization")(zoo_run.images)
    np.testing.assert_allclose(normalised.numpy(), zoo_run.reference["preprocessed_inputs"], rtol=0, atol=1e-6)


def test_feature_maps_and_raw_outputs_match_the_api(zoo_run):
    assert len(zoo_run.feature_maps) == 5
    for index, got in enumerate(zoo_run.feature_maps):
        expected = zoo_run.reference[f"raw/feature_maps/{index}"]
        assert got.shape == expected.shape, index
        assert np.abs(got - expected).max() <= TOLERANCE, (index, np.abs(got - expected).max())
    for got, key in ((zoo_run.box_encodings, "raw/box_encodings"),
                     (zoo_run.class_logits, "raw/class_predictions_with_background")):  # 90 slots, no background
        expected = zoo_run.reference[key]
        assert got.shape == expected.shape, key
        assert np.abs(got - expected).max() <= TOLERANCE, (key, np.abs(got - expected).max())


def test_detections_match_the_api(zoo_run, tfod_oracle_dir, monkeypatch):
    assert_detections_match(zoo_run.model, {"box_encodings": zoo_run.box_encodings,
                                            "class_logits": zoo_run.class_logits},
                            zoo_run.reference, nms_settings(tfod_oracle_dir / FOLDER), monkeypatch)


def test_detections_in_the_padding_are_dropped_as_the_api_drops_them(zoo_run, tfod_oracle_dir, monkeypatch):
    """The API's raw outputs for the photo, four anchors' logits raised (``make_fixture.py`` beside
    the fixture): one box wholly in the padding above every detection, one in the padding over a
    box across the padding's edge (IoU > 0.5, same class, lower score), one across the edge alone.
    The API keeps only the last, clipped at the edge: the padded ones are dropped after NMS, so the
    one across the edge stays suppressed, and the best below them move up."""
    with np.load(CLIP_WINDOW_FIXTURE) as npz:
        fixture = {key[len("efficientdet/"):]: npz[key] for key in npz.files if key.startswith("efficientdet/")}
    reference = zoo_run.reference
    class_logits = reference["raw/class_predictions_with_background"].copy()
    class_logits[0, fixture["anchors"], fixture["classes"]] = fixture["logits"]
    outputs = {"box_encodings": reference["raw/box_encodings"], "class_logits": class_logits}
    expected = {**reference, **{f"det/{key}": value for key, value in fixture.items()
                                if key.startswith("detection_") or key == "num_detections"}}
    settings = nms_settings(tfod_oracle_dir / FOLDER)
    assert_detections_match(zoo_run.model, outputs, expected, settings, monkeypatch)
    kept = set(expected["det/detection_anchor_indices"][0].tolist())
    assert [int(anchor) in kept for anchor in fixture["anchors"]] == [False, False, False, True]
    # Clipped to the canvas instead (what detkeeper did before), the padded box would come first.
    canvas = zoo_run.model.postprocess({key: tf.constant(value) for key, value in outputs.items()})
    assert int(canvas["classes"][0, 0]) == fixture["classes"][0]
    assert float(canvas["boxes"][0, 0, 0]) > reference["true_image_shapes"][0, 0]


def test_the_serving_graph_answers_like_the_api_exporter(zoo_run, tfod_oracle_dir):
    assert_serving_graph_matches(zoo_run.model, zoo_run.reference, nms_settings(tfod_oracle_dir / FOLDER))


def test_another_size_is_scaled_from_the_config_fields():
    """EfficientNet-B2 (width 1.1, depth 1.2), an 88-channel BiFPN repeated 4 times, towers of 2
    convolutions of 96: the variables' shapes follow EfficientNet's rounding and the API's BiFPN."""
    config = ModelConfig(name="ssd_efficientdet", image_size=128,
                         backbone=BackboneConfig(name="efficientnet-b2", weights="none"),
                         neck=NeckConfig(channels=88, repeats=4), head=HeadConfig(channels=96, convs=2))
    model = build_model(config, 3)
    features = {key: tf.zeros([1, *tensor.shape[1:]]) for key, tensor in model.backbone.output.items()}
    model.head(model.fpn(features))  # builds the neck and the head; the backbone is built already
    slots = {slot.key: tuple(slot.variable.shape) for slot in model.zoo_checkpoint_slots()}
    backbone = "model/_feature_extractor/_efficientnet/"
    # round_filters(32 * 1.1) = 32 for the stem; repeats ceil(1.2 * (1, 2, 2, 3, 3, 4, 1)) up to stack 6's first block.
    assert slots[f"{backbone}layer_with_weights-0/kernel"] == (3, 3, 3, 32)
    assert len(model.backbone.get_layer("stack_5_block_4_depthwise_conv2d").weights) == 1
    assert sum("depthwise_conv2d" in layer.name for layer in model.backbone.layers) == 2 + 3 + 3 + 4 + 4 + 5 + 1
    # The BiFPN's 1x1 projections take the tapped widths: round_filters(40, 112, 320 times 1.1) = 48, 120, 352.
    bifpn = "model/_feature_extractor/_bifpn_stage/"
    inputs = {shape[2] for key, shape in slots.items() if key.startswith(f"{bifpn}node_input_blocks")
              and key.endswith("/kernel")}
    assert inputs == {48, 120, 352}
    combined = [key for key in slots if key.endswith("bifpn_combine_weights")]
    assert len(combined) == 8 * 4  # two levels made from level 5 and 6 have a single input
    assert slots[f"{bifpn}node_post_combine_block/33/1/pointwise_kernel"] == (1, 1, 88, 88)
    assert f"{bifpn}node_post_combine_block/34/1/pointwise_kernel" not in slots
    head = "model/_box_predictor/"
    assert slots[f"{head}_head_scope_conv_layers/ClassPredictionTower/1/pointwise_kernel"] == (1, 1, 96, 96)
    assert f"{head}_head_scope_conv_layers/BoxPredictionTower/2/bias" not in slots
    assert slots[f"{head}_prediction_heads/class_predictions_with_background/_class_predictor_layers/0/bias"] == (27,)
    assert model.anchors.shape[0] == 9 * (16 ** 2 + 8 ** 2 + 4 ** 2 + 2 ** 2 + 1)


def test_only_a_repeating_neck_takes_repeats():
    fpnlite = ModelConfig(name="ssd_mobilenet_v2_fpnlite", image_size=320, neck=NeckConfig(repeats=2))
    assert model_config_problems(fpnlite) == [
        "neck.repeats: ssd_mobilenet_v2_fpnlite does not read it (the families that do: ssd_efficientdet); "
        "expected null, got 2"]
    assert model_config_problems(dataclasses.replace(fpnlite, name="ssd_efficientdet", image_size=512)) == []
