"""``model.init_from`` with a TF OD API model-zoo checkpoint (``.../checkpoint/ckpt-0`` of
``../shared/data/tfod-oracle``): the 90-class FPN-lite 320 checkpoint starts a 3-class
``ssd_mobilenet_v2_fpnlite``, as ``fine_tune_checkpoint`` does in the API (``detection``: the
feature extractor, backbone and FPN; ``full``: the head too, where its shapes fit). The models are
built at 128 px to keep the tests quick: no variable depends on the input size. Training from it
(through `config import` of the zoo's config) is tests/tfod/test_zoo_import.py's acceptance test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, InitFromConfig, ModelConfig
from detkeeper.errors import DetkeeperError
from detkeeper.models import build_model
from detkeeper.training.init_from import apply_init_from

FIRST_BACKBONE_KEY = "model/_feature_extractor/classification_backbone/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def zoo_prefix(tfod_oracle_dir) -> str:
    return str(tfod_oracle_dir / "ssd_mobilenet_v2_fpnlite_320" / "checkpoint" / "ckpt-0")


def _ssd(num_classes: int, image_size: int = 128):
    model = build_model(ModelConfig(name="ssd_mobilenet_v2_fpnlite", image_size=image_size,
                                    backbone=BackboneConfig(name="mobilenetv2", weights="none")), num_classes)
    model(tf.zeros([1, image_size, image_size, 3]))
    return model


def test_detection_restores_backbone_and_fpn_and_leaves_the_head_fresh(zoo_prefix, tmp_path):
    model = _ssd(3)
    head_before = [variable.numpy() for variable in model.head.weights]
    report = apply_init_from(model, InitFromConfig(path=zoo_prefix, include="backbone+neck"), tmp_path)

    parts = model.parts()
    assert report.count("restored") == len(parts["backbone"]) + len(parts["neck"])
    assert report.count("not_included") == len(parts["head"]) and report.count("newly_initialised") == 0
    written = json.loads((tmp_path / "init_from.json").read_text())
    assert written["applied"] and written["source"]["kind"] == "tfod_checkpoint"
    assert len(written["variables"]) == len(model.weights)  # every variable, with its outcome
    assert {row["part"] for row in written["variables"] if row["status"] == "restored"} == {"backbone", "neck"}
    reader = tf.train.load_checkpoint(zoo_prefix)
    np.testing.assert_array_equal(model.backbone.weights[0].numpy(), reader.get_tensor(FIRST_BACKBONE_KEY))
    for before, variable in zip(head_before, model.head.weights):
        np.testing.assert_array_equal(variable.numpy(), before)


def test_all_takes_the_head_where_it_fits_and_keeps_the_class_output_fresh(zoo_prefix, tmp_path):
    model = _ssd(3)
    report = apply_init_from(model, InitFromConfig(path=zoo_prefix, include="all"), tmp_path)
    skipped = [outcome for outcome in report.outcomes if outcome.status == "skipped_for_shape"]
    assert sorted(outcome.name.rsplit("/", 1)[-1] for outcome in skipped) == ["bias", "pointwise_kernel"]
    assert report.count("restored") == len(model.weights) - 2
    np.testing.assert_allclose(model.head.class_output.bias.numpy(), -4.6)  # the prior, for 3 classes


def test_a_detkeeper_family_is_refused_naming_the_families_that_read_it(zoo_prefix, tmp_path):
    model = build_model(ModelConfig(name="retinanet_tiny", image_size=128), 3)
    with pytest.raises(DetkeeperError, match=r"is a TF OD API checkpoint, read by the API's own variable names; "
                                             r"model 'retinanet_tiny' \(RetinaNet\) is not one of"):
        apply_init_from(model, InitFromConfig(path=zoo_prefix, include="backbone"), tmp_path)
    assert not (tmp_path / "init_from.json").exists()
