"""Backbones: every registered name builds with C3/C4/C5 at strides 8/16/32, normalizes 0..255
input the way its application expects, and loads weights from a local file or fails with a
ConfigError that names the problem."""

from __future__ import annotations

import functools
import os
import socket
import urllib.error
from pathlib import Path

import keras
import numpy as np
import pytest

from detkeeper.errors import ConfigError
from detkeeper.models import batch_norm
from detkeeper.models.backbones import (FEATURE_STRIDES, RANDOM_INIT_BN_MOMENTUM, _with_fused_batch_norm, all_layers,
                                       build_backbone, feature_channels, list_backbones)

# Fast enough to run forward passes in every test; the others are only built.
FAST = ("tiny", "mobilenetv2_035")


@functools.cache
def _built(name: str, image_size: int | None) -> keras.Model:
    """One random-init build per (name, size) for the tests that only read the model."""
    return build_backbone(name, "none", image_size)


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def _submodel(model: keras.Model, layer: str) -> keras.Model:
    """The model from `model`'s input up to the output of its layer `layer`."""
    return keras.Model(model.input, model.get_layer(layer).output)


def test_list_backbones_names_the_required_architectures():
    assert {"tiny", "mobilenetv2", "resnet50", "efficientnetv2b0"} <= set(list_backbones())


@pytest.mark.parametrize("image_size", [64, 128])
@pytest.mark.parametrize("name", list_backbones())
def test_outputs_are_c3_c4_c5_at_strides_8_16_32(name: str, image_size: int):
    backbone = _built(name, image_size)
    assert list(backbone.output) == ["C3", "C4", "C5"]
    assert backbone.feature_strides == FEATURE_STRIDES == {"C3": 8, "C4": 16, "C5": 32}
    channels = feature_channels(backbone)
    for key, stride in FEATURE_STRIDES.items():
        side = image_size // stride
        assert tuple(backbone.output[key].shape) == (None, side, side, channels[key])


@pytest.mark.parametrize("name", FAST)
def test_forward_pass_at_a_dynamic_size(name: str):
    features = _built(name, None)(_images(96))
    assert {key: tuple(value.shape[1:3]) for key, value in features.items()} == {
        "C3": (12, 12), "C4": (6, 6), "C5": (3, 3)}


@pytest.mark.parametrize("name", list_backbones())
def test_variable_paths_are_unique_and_stable(name: str):
    """Checkpoints restore per variable by `.path`: it must not depend on build order."""
    paths = [variable.path for variable in _built(name, 64).weights]
    assert len(paths) == len(set(paths))
    assert paths == [variable.path for variable in build_backbone(name, "none", 128).weights]


@pytest.mark.parametrize("name", list_backbones())
def test_from_random_init_every_batch_norm_tracks_its_statistics_quickly(name: str):
    """Every BatchNormalization, those inside a keras.applications model too, gets momentum 0.9."""
    backbone = build_backbone(name, "none", 64)
    norms = [layer for layer in all_layers(backbone) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and {layer.momentum for layer in norms} == {RANDOM_INIT_BN_MOMENTUM}


@pytest.mark.parametrize("name", list_backbones())
def test_every_batch_norm_trains_through_the_fused_kernel(name: str):
    """The keras.applications' layers too: each application is cloned with detkeeper's layer."""
    norms = [layer for layer in all_layers(_built(name, 64)) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is batch_norm.BatchNormalization for layer in norms)


def test_the_applications_batch_norms_change_class_in_place_and_answer_as_before():
    """Re-classed, not rebuilt: the same layers and variables, the same answers at inference, and
    Keras' training outputs and moving statistics through the fused kernel (to the rounding of 52
    layers: each layer's own is in test_fused_normalization.py)."""
    application = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3),
                                                  alpha=0.35)
    application(_images(64), training=True)  # moves the BatchNorm statistics away from their init
    layers, variables = list(application.layers), list(application.weights)
    expected = application(_images(64, seed=1))
    keras_training = keras.models.clone_model(application)
    keras_training.set_weights(application.get_weights())
    assert _with_fused_batch_norm(application) is application
    assert application.layers == layers and application.weights == variables
    assert any(type(layer) is batch_norm.BatchNormalization for layer in layers)
    np.testing.assert_array_equal(application(_images(64, seed=1)), expected)
    np.testing.assert_allclose(application(_images(64, seed=2), training=True),
                               keras_training(_images(64, seed=2), training=True), rtol=1e-3, atol=1e-3)
    for got, wanted in zip(application.weights, keras_training.weights):  # the moving statistics moved alike
        np.testing.assert_allclose(got, wanted, rtol=1e-5, atol=1e-5, err_msg=got.path)


def test_tiny_has_meaningful_variable_names_and_a_small_size():
    backbone = _built("tiny", 64)
    assert all(variable.path.startswith("tiny_") for variable in backbone.weights)
    assert "tiny_stage2_block1_dwconv/kernel" in {variable.path for variable in backbone.weights}
    assert 100_000 < backbone.count_params() < 600_000


def test_tiny_x2_is_tiny_at_twice_the_channels_with_the_same_layer_names():
    tiny, wide = _built("tiny", 64), _built("tiny_x2", 64)
    assert feature_channels(wide) == {key: 2 * channels for key, channels in feature_channels(tiny).items()}
    assert [layer.name for layer in wide.layers] == [layer.name for layer in tiny.layers]
    assert 3.5 * tiny.count_params() < wide.count_params() < 4.5 * tiny.count_params()


@pytest.mark.parametrize("name", list_backbones())
def test_config_round_trip_rebuilds_the_same_outputs(name: str):
    """Detectors serialize their backbone inside their own config."""
    backbone = _built(name, 64)
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert {key: tuple(t.shape) for key, t in rebuilt.output.items()} == {
        key: tuple(t.shape) for key, t in backbone.output.items()}


def test_tiny_saves_and_loads_as_a_keras_archive_without_custom_objects(tmp_path: Path):
    backbone = build_backbone("tiny", image_size=64)
    backbone.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")
    images = _images(64)
    for key, value in backbone(images).items():
        np.testing.assert_array_equal(loaded(images)[key], value)


# --- input normalization ------------------------------------------------------------------------

BLACK_AND_WHITE = np.stack([np.zeros((64, 64, 3)), np.full((64, 64, 3), 255.0)]).astype("float32")


@pytest.mark.parametrize("name", ["tiny", "mobilenetv2", "mobilenetv2_035"])
def test_unit_range_scaling_maps_0_255_to_minus_1_1(name: str):
    scaled = np.asarray(_submodel(_built(name, 64), f"{name}_input_scaling")(_images(64)))
    assert scaled.min() >= -1.0 and scaled.max() <= 1.0
    ends = np.asarray(_submodel(_built(name, 64), f"{name}_input_scaling")(BLACK_AND_WHITE))
    np.testing.assert_allclose(ends[0], -1.0)
    np.testing.assert_allclose(ends[1], 1.0, rtol=1e-6)


def test_resnet50_gets_bgr_minus_the_imagenet_mean():
    pixel = np.array([255.0, 0.0, 128.0], dtype="float32")  # R, G, B
    images = np.broadcast_to(pixel, (1, 64, 64, 3)).astype("float32")
    caffe = np.asarray(_submodel(_built("resnet50", 64), "resnet50_caffe_mean")(images))
    np.testing.assert_allclose(caffe[0, 0, 0], [128 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-5)


def test_efficientnetv2_standardizes_0_255_with_its_own_layers():
    """include_preprocessing=True: 0..255 -> /255 -> ImageNet mean/std, inside the application."""
    features = _built("efficientnetv2b0", 64).get_layer("efficientnetv2b0_features")
    # Found by type: Keras names it "normalization_N" when the process has made N such layers before.
    normalization = next(layer.name for layer in features.layers if isinstance(layer, keras.layers.Normalization))
    normalized = np.asarray(_submodel(features, normalization)(BLACK_AND_WHITE))
    mean, std = np.array([0.485, 0.456, 0.406]), np.sqrt([0.052441, 0.050176, 0.050625])
    np.testing.assert_allclose(normalized[0, 0, 0], -mean / std, rtol=1e-4)
    np.testing.assert_allclose(normalized[1, 0, 0], (1 - mean) / std, rtol=1e-4)


# --- weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAST)
def test_weights_from_a_local_file_reproduce_the_outputs(name: str, tmp_path: Path):
    source = build_backbone(name, image_size=64)
    source(_images(64), training=True)  # moves the BatchNorm statistics away from their init
    path = tmp_path / f"{name}.weights.h5"
    source.save_weights(path)
    for image_size in (64, None):
        loaded = build_backbone(name, weights=str(path), image_size=image_size)
        for key, value in source(_images(64, seed=1)).items():
            np.testing.assert_array_equal(loaded(_images(64, seed=1))[key], value)


def test_missing_weights_file_is_a_config_error_naming_it(tmp_path: Path):
    path = str(tmp_path / "nowhere.weights.h5")
    with pytest.raises(ConfigError, match="not found") as raised:
        build_backbone("tiny", weights=path)
    assert path in str(raised.value)


def test_weights_of_another_architecture_are_a_config_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "mobilenet.weights.h5"
    _built("mobilenetv2_035", 64).save_weights(path)
    with pytest.raises(ConfigError, match="does not fit backbone 'tiny'") as raised:
        build_backbone("tiny", weights=str(path), image_size=64)
    message = str(raised.value)
    assert str(path) in message and "tiny_stem_conv" in message and len(message) < 800


def test_weights_of_another_width_name_the_shapes_that_differ(tmp_path: Path):
    path = tmp_path / "mobilenet035.weights.h5"
    _built("mobilenetv2_035", 64).save_weights(path)
    with pytest.raises(ConfigError, match=r"shape=\(3, 3, 3, 32\).*shape=\(3, 3, 3, 16\)") as raised:
        build_backbone("mobilenetv2", weights=str(path), image_size=64)
    assert str(path) in str(raised.value)


def test_a_file_that_is_not_hdf5_is_a_config_error(tmp_path: Path):
    path = tmp_path / "garbage.weights.h5"
    path.write_text("not a weights file")
    with pytest.raises(ConfigError, match="does not fit") as raised:
        build_backbone("tiny", weights=str(path))
    assert str(path) in str(raised.value)


def test_unknown_name_is_a_config_error_listing_the_available_names():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'") as raised:
        build_backbone("vgg16")
    assert all(name in str(raised.value) for name in list_backbones())


def test_image_size_must_be_a_multiple_of_32():
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_backbone("tiny", image_size=100)


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(ConfigError, match="has no ImageNet weights"):
        build_backbone("tiny", weights="imagenet")


def _keras_cache_has(filename: str) -> bool:
    """Where keras.utils.get_file caches: $KERAS_HOME or ~/.keras, else /tmp/.keras."""
    homes = [os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "/tmp/.keras"]
    return any(os.path.exists(os.path.join(home, "models", filename)) for home in homes)


@pytest.mark.skipif(
    _keras_cache_has("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_96_no_top.h5"),
    reason="the MobileNetV2 0.35 ImageNet weights are in the keras cache, so they would load")
def test_imagenet_offline_is_a_config_error_with_the_way_out(monkeypatch: pytest.MonkeyPatch):
    """The real keras download path with the network cut (as in CI), also on an online machine."""
    def no_network(*args, **kwargs):
        raise OSError("network disabled by this test")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ConfigError, match="could not be fetched") as raised:
        build_backbone("mobilenetv2_035", weights="imagenet", image_size=96)
    assert "model.backbone.weights: none" in str(raised.value)


def _fails_like_keras_get_file(**kwargs) -> keras.Model:
    """keras' get_file turns a URLError into a bare Exception raised inside the handler."""
    try:
        raise urllib.error.URLError("Name or service not known")
    except urllib.error.URLError as error:
        raise Exception(f"URL fetch failure on https://example: None -- {error.reason}")


def _fails_otherwise(**kwargs) -> keras.Model:
    raise ValueError("not a download problem")


def test_a_failed_fetch_is_recognized_by_its_urlerror(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(keras.applications, "ResNet50", _fails_like_keras_get_file)
    with pytest.raises(ConfigError, match="ImageNet weights for backbone 'resnet50' could not be"):
        build_backbone("resnet50", weights="imagenet")


def test_other_errors_while_building_with_imagenet_weights_propagate(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(keras.applications, "ResNet50", _fails_otherwise)
    with pytest.raises(ValueError, match="not a download problem"):
        build_backbone("resnet50", weights="imagenet")
