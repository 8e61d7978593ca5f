"""Backbones: Keras models mapping RGB images in 0..255 to C3/C4/C5 feature maps.

Every backbone normalizes its own input with Keras layers (so the normalization is saved with the
model and the pipeline can stay in 0..255) and returns ``{"C3", "C4", "C5"}`` at strides 8, 16 and
32. The keras.applications backbones expose intermediate layers of the application chosen by name;
"tiny" is a small custom CNN for tests and the CPU demo.
"""

from __future__ import annotations

import os
import urllib.error
import warnings
from dataclasses import dataclass
from typing import Callable

import keras
from keras import layers

from detkeeper.errors import ConfigError
from detkeeper.models import batch_norm

FEATURE_STRIDES = {"C3": 8, "C4": 16, "C5": 32}
"""Output key -> stride in pixels, the same for every backbone."""

InputShape = tuple[int | None, int | None, int]
Preprocess = Callable[[keras.KerasTensor], keras.KerasTensor]
Builder = Callable[[InputShape, str | None], keras.Model]
"""`build(input_shape, keras_weights)`, keras_weights None (random init) or "imagenet"."""


@dataclass(frozen=True)
class _Spec:
    """How to build one named backbone, and whether ImageNet weights exist for it."""

    build: Builder
    imagenet: bool


_BACKBONES: dict[str, _Spec] = {}


def register_backbone(name: str, imagenet: bool) -> Callable[[Builder], Builder]:
    """Decorator: make `build(input_shape, keras_weights)` available under `name`."""

    def add(build: Builder) -> Builder:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = _Spec(build, imagenet)
        return build

    return add


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def check_backbone(name: str, weights: str = "none", image_size: int | None = None,
                   size_multiple: int = 32) -> None:
    """Raise the ``ConfigError`` :func:`build_backbone` would raise for these settings, building nothing."""
    if name not in _BACKBONES:
        raise ConfigError(f"model.backbone.name: unknown backbone {name!r}; available backbones: "
                          f"{', '.join(list_backbones())}")
    if image_size is not None and (image_size < 32 or image_size % size_multiple):
        raise ConfigError(f"model.image_size: expected a multiple of {size_multiple} for backbone {name!r}, "
                          f"got {image_size}")
    if weights == "imagenet" and not _BACKBONES[name].imagenet:
        raise ConfigError(f"model.backbone.weights: backbone {name!r} has no ImageNet weights; "
                          "use `model.backbone.weights: none` or a path to a local weights file")
    if weights not in ("none", "imagenet") and not os.path.isfile(weights):
        raise ConfigError(f"model.backbone.weights: weights file {weights!r} not found")


def build_backbone(name: str, weights: str = "none", image_size: int | None = None,
                   size_multiple: int = 32) -> keras.Model:
    """The backbone `name` with `weights` "none" (random), "imagenet" or a local weights file.

    `image_size` fixes a square input side, a multiple of `size_multiple`: 32 (so C5 has stride
    exactly 32, as a pyramid's levels need), or 1 for a family that lays its anchors out on the
    feature maps' own sizes (the TF OD API's SSD at 300 px; ``feature_strides`` is then nominal).
    None leaves height and width dynamic.
    """
    check_backbone(name, weights, image_size, size_multiple)
    spec = _BACKBONES[name]
    input_shape = (image_size, image_size, 3)
    if weights == "imagenet":
        backbone = _build_imagenet(name, spec, input_shape)
    else:
        backbone = spec.build(input_shape, None)
        if weights == "none":
            _track_statistics_quickly(backbone)
        else:
            _load_local_weights(backbone, name, weights)
    backbone.feature_strides = dict(FEATURE_STRIDES)
    return backbone


#: BatchNormalization momentum for randomly initialised backbones (PyTorch's default, 0.1 there).
RANDOM_INIT_BN_MOMENTUM = 0.9


def _track_statistics_quickly(backbone: keras.Model) -> None:
    """From random init, moving statistics start at mean 0 / variance 1, far from the truth (depthwise
    outputs have variances near 1e-3). With Keras' 0.99 (MobileNetV2: 0.999) that start still
    dominates after hundreds of steps, and inference-mode outputs differ wildly from training-mode
    ones: a model with near-zero training loss scored mAP 0.01 on its own training images. At 0.9
    the start is forgotten within ~50 steps. Pretrained weights keep their own momentum. The
    keras.applications backbones hold the application as one nested model: every level is walked."""
    for layer in all_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = RANDOM_INIT_BN_MOMENTUM


def all_layers(model: keras.Model):
    """Every layer of `model`, nested models' layers included (depth first)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


def feature_channels(backbone: keras.Model) -> dict[str, int]:
    """Channels of each output feature map, read from the model's outputs (works after loading)."""
    return {key: int(tensor.shape[-1]) for key, tensor in backbone.output.items()}


def _build_imagenet(name: str, spec: _Spec, input_shape: InputShape) -> keras.Model:
    """Build with keras' own ImageNet download, turning a failed fetch into a ConfigError."""
    try:
        return spec.build(input_shape, "imagenet")
    except Exception as error:
        if not _is_fetch_failure(error):
            raise
        raise ConfigError(
            f"model.backbone.weights: the ImageNet weights for backbone {name!r} could not be "
            f"fetched ({error}); use `model.backbone.weights: none` to start from random weights, "
            "or a path to a local weights file") from error


def _is_fetch_failure(error: Exception) -> bool:
    """keras' `get_file` re-raises URLError/HTTPError as a bare Exception("URL fetch failure ..."),
    so the URLError is its context; a connection dropped mid-download escapes unwrapped."""
    network = (urllib.error.URLError, ConnectionError, TimeoutError)
    return isinstance(error, network) or isinstance(error.__context__, urllib.error.URLError)


def _load_local_weights(backbone: keras.Model, name: str, path: str) -> None:
    """Load a `save_weights` file; keras reports a mismatch as ValueError, an unreadable file
    (not HDF5, truncated) as OSError from h5py."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            backbone.load_weights(path)
        except (ValueError, OSError) as error:
            # On a mismatch keras also warns once per unmatched layer (dozens of lines); the error
            # below says the same, so those recorded warnings are dropped with it.
            raise ConfigError(f"model.backbone.weights: weights file {path!r} does not fit backbone "
                              f"{name!r} (it must be saved from the same backbone with "
                              f"`save_weights`): {_shorten(str(error))}") from error
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _shorten(message: str, limit: int = 400) -> str:
    """Keras' load errors list every object and dump variable values; its first two paragraphs
    (how many objects failed, and the first failure with its shapes) say what did not fit."""
    text = " ".join(" ".join(message.split("\n\n")[:2]).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _feature_model(name: str, inputs: keras.KerasTensor, features: dict[str, keras.KerasTensor]
                   ) -> keras.Model:
    """The backbone model, its outputs in C3, C4, C5 order whatever order `features` has."""
    outputs = {key: features[key] for key in FEATURE_STRIDES}
    return keras.Model(inputs, outputs, name=f"{name}_backbone")


# --- keras.applications -------------------------------------------------------------------------


def _application_backbone(name: str, application: keras.Model, feature_layers: dict[str, str],
                          preprocess: Preprocess, input_shape: InputShape) -> keras.Model:
    """Wrap an application (built standalone, so keras loads its weights exactly as for itself)
    as a nested feature extractor behind this backbone's own preprocessing."""
    application = _with_fused_batch_norm(application)
    extractor = keras.Model(
        application.input,
        {key: application.get_layer(layer).output for key, layer in feature_layers.items()},
        name=f"{name}_features")
    images = keras.Input(input_shape, name="images")
    return _feature_model(name, images, extractor(preprocess(images)))


def _with_fused_batch_norm(application: keras.Model) -> keras.Model:
    """The application with its BatchNormalization layers as :class:`batch_norm.BatchNormalization`
    (training through TensorFlow's fused kernel). That subclass changes ``call`` only and adds no
    state, so each built layer changes class in place: names, configs, weights and the graph stay the
    application's, without the second build a ``keras.models.clone_model`` costs (0.6-1.2 s)."""
    for layer in all_layers(application):
        if type(layer) is keras.layers.BatchNormalization:
            layer.__class__ = batch_norm.BatchNormalization
    return application


def _scale_to_unit_range(name: str) -> Preprocess:
    """0..255 -> [-1, 1], the "tf" convention of MobileNet."""
    return layers.Rescaling(1 / 127.5, offset=-1.0, name=f"{name}_input_scaling")


def _caffe(images: keras.KerasTensor) -> keras.KerasTensor:
    """RGB -> BGR, minus the ImageNet BGR mean: ResNet50's "caffe" convention."""
    bgr = keras.ops.flip(images, axis=-1)
    return layers.Rescaling(1.0, offset=[-103.939, -116.779, -123.68], name="resnet50_caffe_mean")(bgr)


_MOBILENETV2_LAYERS = {"C3": "block_6_expand_relu", "C4": "block_13_expand_relu", "C5": "out_relu"}


def _mobilenetv2(name: str, alpha: float, input_shape: InputShape, weights: str | None) -> keras.Model:
    application = keras.applications.MobileNetV2(
        include_top=False, weights=weights, input_shape=input_shape, alpha=alpha)
    return _application_backbone(name, application, _MOBILENETV2_LAYERS, _scale_to_unit_range(name),
                                 input_shape)


@register_backbone("mobilenetv2", imagenet=True)
def mobilenetv2(input_shape: InputShape, weights: str | None) -> keras.Model:
    return _mobilenetv2("mobilenetv2", 1.0, input_shape, weights)


@register_backbone("mobilenetv2_035", imagenet=True)
def mobilenetv2_035(input_shape: InputShape, weights: str | None) -> keras.Model:
    """MobileNetV2 at width 0.35: about 0.4 M parameters, for CPU training."""
    return _mobilenetv2("mobilenetv2_035", 0.35, input_shape, weights)


@register_backbone("resnet50", imagenet=True)
def resnet50(input_shape: InputShape, weights: str | None) -> keras.Model:
    application = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)
    feature_layers = {"C3": "conv3_block4_out", "C4": "conv4_block6_out", "C5": "conv5_block3_out"}
    return _application_backbone("resnet50", application, feature_layers, _caffe, input_shape)


@register_backbone("efficientnetv2b0", imagenet=True)
def efficientnetv2b0(input_shape: InputShape, weights: str | None) -> keras.Model:
    """The application rescales and normalizes 0..255 itself (include_preprocessing=True)."""
    application = keras.applications.EfficientNetV2B0(
        include_top=False, weights=weights, input_shape=input_shape, include_preprocessing=True)
    # The last block output of the stride-8 and stride-16 stages, and the 1x1 top conv at 32.
    feature_layers = {"C3": "block3b_add", "C4": "block5e_add", "C5": "top_activation"}
    return _application_backbone("efficientnetv2b0", application, feature_layers, lambda x: x,
                                 input_shape)


# --- tiny ---------------------------------------------------------------------------------------


def _conv_bn_relu(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """A full 3x3 stride-2 convolution: cheap at low channel counts, richer than separable."""
    x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = batch_norm.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable_block(x: keras.KerasTensor, filters: int, strides: int, name: str) -> keras.KerasTensor:
    """Depthwise 3x3 + pointwise 1x1, with a residual add when the shape is kept (trains faster
    from random init)."""
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                               name=f"{name}_dwconv")(x)
    y = batch_norm.BatchNormalization(name=f"{name}_dwbn")(y)
    y = layers.ReLU(name=f"{name}_dwrelu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pwconv")(y)
    y = batch_norm.BatchNormalization(name=f"{name}_pwbn")(y)
    if strides == 1 and x.shape[-1] == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(y)


_TINY_STAGES = {"C3": (64, 2), "C4": (128, 3), "C5": (256, 3)}
"""Output key -> (channels, separable blocks); each stage starts with a stride-2 block."""


@register_backbone("tiny", imagenet=False)
def tiny(input_shape: InputShape, weights: str | None) -> keras.Model:
    """Small custom CNN (about 0.2 M parameters) that trains fast on a CPU; random init only."""
    return _tiny("tiny", 1, input_shape)


@register_backbone("tiny_x2", imagenet=False)
def tiny_x2(input_shape: InputShape, weights: str | None) -> keras.Model:
    """"tiny" at twice the channels (about 0.9 M parameters): the bccd preset's training step on it
    takes at least 1.45x the time (its separable blocks keep that below a wider head's 1.67x)."""
    return _tiny("tiny_x2", 2, input_shape)


def _tiny(name: str, width: int, input_shape: InputShape) -> keras.Model:
    """The tiny CNN with `width` times the channels; layers keep "tiny"'s names at every width."""
    images = keras.Input(input_shape, name="images")
    x = _scale_to_unit_range("tiny")(images)
    x = _conv_bn_relu(x, 16 * width, "tiny_stem")
    x = _conv_bn_relu(x, 32 * width, "tiny_stage1")
    features = {}
    for stage, (key, (filters, blocks)) in enumerate(_TINY_STAGES.items(), start=2):
        for block in range(1, blocks + 1):
            x = _separable_block(x, filters * width, 2 if block == 1 else 1, f"tiny_stage{stage}_block{block}")
        features[key] = x
    return _feature_model(name, images, features)
