"""keras-hub detectors (hub_retinanet): building from config and from presets, the head init fix,
keras-hub's own loss, training with fit, config and .keras round trips, and the errors users see
without keras-hub or without network. The shared checks in test_detectors.py run on it too."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from detkeeper.config.schema import BackboneConfig, HeadConfig, ModelConfig, NeckConfig
from detkeeper.data.pipeline import evaluation_dataset
from detkeeper.data.voc import read_voc
from detkeeper.errors import ConfigError
from detkeeper.models import build_model, list_models
from detkeeper.models.detector import fit_inputs
from detkeeper.models.hub import IMAGENET_OFFSET, IMAGENET_SCALE, RESNET_CONFIGS, HubRetinaNet

IMAGE_SIZE = 128
PRESET = "retinanet_resnet50_fpn_coco"


@pytest.fixture
def keras_hub():
    return pytest.importorskip("keras_hub", reason="hub_* models need keras-hub: pip install 'detkeeper[hub]'")


@pytest.fixture(scope="module")
def shapes(shapes_dataset):
    """The first 8 training images as two pipeline batches, and the number of classes."""
    readout = read_voc(shapes_dataset, split="train")
    dataset = evaluation_dataset(readout.records[:8], readout.label_map, image_size=IMAGE_SIZE,
                                 batch_size=4, max_boxes=10)
    return dataset, readout.label_map.num_classes


def _config(**changes) -> ModelConfig:
    config = ModelConfig(name="hub_retinanet", image_size=IMAGE_SIZE,
                         backbone=BackboneConfig(name="tiny", weights="none"), head=HeadConfig(convs=2))
    return dataclasses.replace(config, **changes)


def _first_batch(shapes):
    """Images, targets and the number of classes of the first batch."""
    dataset, num_classes = shapes
    images, targets = next(iter(dataset.map(fit_inputs)))
    return images, targets, num_classes


def _probabilities(model, images) -> np.ndarray:
    return model.decode_boxes_and_scores(model(images))[1].numpy()


def test_importing_the_registry_does_not_import_keras_hub():
    code = ("import sys; from detkeeper.models import list_models; "
            "print('hub_retinanet' in list_models(), 'keras_hub' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "False"]


def test_without_keras_hub_the_name_is_listed_and_building_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # makes `import keras_hub` fail
    assert "hub_retinanet" in list_models()
    with pytest.raises(ConfigError) as caught:
        build_model(_config(), 3)
    assert str(caught.value) == "model 'hub_retinanet' needs keras-hub: pip install 'detkeeper[hub]'"


def test_offline_preset_says_what_to_do(keras_hub, monkeypatch):
    def offline(*args, **kwargs):
        # What kagglehub raises here without network (the real call fails the same way in ~1 s,
        # but with network it would download 130 MB).
        raise __import__("requests").exceptions.ConnectionError(
            "HTTPSConnectionPool(host='api.kaggle.com', port=443): Max retries exceeded with url: "
            "/v1/models.ModelApiService/DownloadModelInstanceVersion (Caused by NameResolutionError("
            "\"HTTPSConnection(host='api.kaggle.com', port=443): Failed to resolve 'api.kaggle.com' "
            "([Errno -2] Name or service not known)\"))")

    monkeypatch.setattr(keras_hub.models.Backbone, "from_preset", offline)
    with pytest.raises(ConfigError) as caught:
        build_model(_config(preset=PRESET, image_size=512), 3)
    message = str(caught.value)
    assert message.startswith(f"model.preset: keras-hub could not load preset '{PRESET}'")
    assert "\n" not in message  # one paragraph
    for part in ("ConnectionError", "api.kaggle.com", "network access", "Kaggle or Hugging Face",
                 "random weights", "`model.preset: null`", "`model.backbone.name: tiny`",
                 "KAGGLEHUB_CACHE", "local preset directory"):
        assert part in message, part


def test_unknown_preset_name_is_a_config_error(keras_hub):
    with pytest.raises(ConfigError, match="could not load preset 'no_such_preset_xyz'.*Unknown preset"):
        build_model(_config(preset="no_such_preset_xyz"), 3)


def test_local_retinanet_preset_gives_its_weights_and_normalization(keras_hub, shapes, tmp_path):
    encoder = keras_hub.models.ResNetBackbone(**RESNET_CONFIGS["tiny"])
    saved = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=3, max_level=6, use_p5=False)
    saved.save_to_preset(str(tmp_path))
    converter = keras_hub.layers.ResNetImageConverter(scale=[0.01, 0.02, 0.03], offset=[-1.0, -2.0, -3.0])
    converter.save_to_preset(str(tmp_path))

    model = build_model(_config(preset=str(tmp_path)), 3)
    loaded = model.detector.backbone
    assert isinstance(loaded, keras_hub.models.RetinaNetBackbone) and loaded.max_level == 6
    assert len(loaded.weights) == len(saved.weights)
    for want, got in zip(saved.weights, loaded.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    assert model.scale == (0.01, 0.02, 0.03) and model.offset == (-1.0, -2.0, -3.0)
    images, _, _ = _first_batch(shapes)
    assert abs(_probabilities(model, images).mean() - 0.01) < 0.002  # new heads, initialized

    with pytest.raises(ConfigError, match="model.neck.max_level: preset .* has a feature pyramid with max_level 6"):
        build_model(_config(preset=str(tmp_path), neck=NeckConfig(max_level=7)), 3)


def test_image_backbone_preset_gets_a_new_pyramid(keras_hub, tmp_path):
    saved = keras_hub.models.ResNetBackbone(**RESNET_CONFIGS["tiny"])
    saved.save_to_preset(str(tmp_path))  # no image converter: ImageNet normalization

    model = build_model(_config(preset=str(tmp_path), neck=NeckConfig(max_level=6)), 3)
    encoder = model.detector.backbone.image_encoder
    for want, got in zip(saved.weights, encoder.weights, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    assert model.detector.backbone.max_level == 6
    assert model.scale == IMAGENET_SCALE and model.offset == IMAGENET_OFFSET


def test_new_heads_start_at_the_focal_prior(keras_hub, shapes):
    images, _, num_classes = _first_batch(shapes)
    keras.utils.set_random_seed(0)
    model = build_model(_config(head=HeadConfig()), num_classes)  # keras-hub's four-conv heads
    class_bias = model.detector.classification_head.prediction_layer.bias.numpy()
    box_bias = model.detector.box_head.prediction_layer.bias.numpy()
    np.testing.assert_allclose(class_bias, -math.log(99.0), rtol=1e-6)
    np.testing.assert_array_equal(box_bias, 0.0)
    for candidate in (model, HubRetinaNet.from_config(model.get_config())):
        probabilities = _probabilities(candidate, images)
        assert abs(probabilities.mean() - 0.01) < 0.002, probabilities.mean()
        assert probabilities.max() < 0.03, probabilities.max()


def test_loss_is_keras_hubs_own(keras_hub, shapes):
    images, targets, num_classes = _first_batch(shapes)
    keras.utils.set_random_seed(0)
    model = build_model(_config(), num_classes)
    outputs = model(images)
    ours = model.compute_loss(images, targets, outputs)
    model.detector.compile()  # keras-hub's defaults: Huber and focal loss, summed
    hub_targets = {"boxes": targets["boxes"], "labels": tf.cast(targets["classes"], tf.float32)}
    theirs = model.detector.compute_loss(images, hub_targets, outputs, None)
    assert np.isfinite(ours.numpy()) and ours.numpy() > 0
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


def test_fit_on_a_pipeline_dataset_lowers_the_loss(keras_hub, shapes):
    dataset, num_classes = shapes
    keras.utils.set_random_seed(0)
    model = build_model(_config(), num_classes)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=10.0))
    history = model.fit(dataset.map(fit_inputs).cache().repeat(), epochs=4, steps_per_epoch=2,
                        verbose=0, shuffle=False).history  # a tf.data dataset: Keras cannot shuffle it
    assert {"loss", "class_loss", "box_loss"} <= set(history)
    assert all(np.isfinite(history["loss"])), history
    assert history["loss"][-1] < history["loss"][0], history


def test_config_round_trip(keras_hub, shapes):
    images, _, num_classes = _first_batch(shapes)
    model = build_model(_config(), num_classes)
    model(images[:1])
    config = model.get_config()
    json.dumps(config)  # plain data, as a .keras archive stores it
    for rebuilt in (HubRetinaNet.from_config(config), HubRetinaNet.from_config(config)):  # not consumed
        rebuilt(images[:1])
        assert [v.shape for v in rebuilt.weights] == [v.shape for v in model.weights]
        assert (rebuilt.num_classes, rebuilt.image_size, rebuilt.scale) == (num_classes, IMAGE_SIZE, model.scale)
        assert rebuilt.detector.pre_logits_num_conv_layers == 2


def test_keras_archive_round_trip_in_safe_mode(keras_hub, shapes, tmp_path):
    images, _, num_classes = _first_batch(shapes)
    keras.utils.set_random_seed(3)
    model = build_model(_config(), num_classes)
    expected = model(images)
    path = tmp_path / "hub.keras"
    keras.saving.save_model(model, path)

    restored = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(restored, HubRetinaNet)
    got = restored(images)
    fresh = HubRetinaNet.from_config(model.get_config())(images)  # new random weights differ
    assert not np.array_equal(fresh["cls_logits"].numpy(), expected["cls_logits"].numpy())
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
    expected, got = model.detect(images), restored.detect(images)
    for key in expected:
        np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)


@pytest.mark.parametrize(("changes", "expected"), [
    ({"backbone": BackboneConfig(name="mobilenetv2")}, "model.backbone.name: .* tiny, resnet18, resnet50"),
    ({"backbone": BackboneConfig(name="resnet50", weights="imagenet")},
     "model.backbone.weights: .* only from a keras-hub preset .*resnet_50_imagenet"),
    ({"preset": PRESET, "backbone": BackboneConfig(weights="imagenet")},
     "model.backbone.weights: the weights come from `model.preset`"),
    ({"neck": NeckConfig(channels=128)}, "model.neck.channels: .* 256 channels wide"),
    ({"head": HeadConfig(channels=64)}, "model.head.channels: .* 256 channels wide"),
    ({"image_size": 160}, "model.image_size: .* pyramid level 7 needs a multiple of 128 .*got 160"),
])
def test_unsupported_settings_are_config_errors(keras_hub, changes, expected):
    with pytest.raises(ConfigError, match=expected):
        build_model(_config(**changes), 3)
