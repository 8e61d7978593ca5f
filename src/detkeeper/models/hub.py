"""keras-hub detectors by name: ``hub_retinanet`` wraps keras-hub's ``RetinaNetObjectDetector``.

The keras-hub model is wrapped, not exposed: :class:`HubRetinaNet` is a detkeeper
:class:`~detkeeper.models.detector.Detector`, so it trains with ``fit``, checkpoints and exports
like the built-in families. ``call`` returns keras-hub's raw head outputs (``cls_logits``,
``bbox_regression``); ``compute_loss`` takes detkeeper's padded targets and computes keras-hub's
loss with keras-hub's own anchor generator and label encoder; ``decode_boxes_and_scores`` decodes
with keras-hub's anchors and box coding, and the shared class-aware NMS does the rest. Inputs are
detkeeper's float32 RGB 0..255; the backbone's normalization is applied inside the model.

Two ways to build, chosen by the ``model`` config:

- ``model.preset`` (a keras-hub preset name such as ``retinanet_resnet50_fpn_coco`` or
  ``resnet_50_imagenet``, a ``kaggle://`` or ``hf://`` handle, or a local preset directory): the
  backbone and its input normalization come from the preset, downloaded on first use (network
  access to Kaggle or Hugging Face; cached afterwards). A RetinaNet preset gives ResNet + FPN
  weights; an image-classifier preset with a feature pyramid (ResNet, ...) gives the ResNet
  weights and a new FPN. The heads are always new, for ``num_classes`` classes.
  ``model.backbone.name`` is then ignored and ``model.backbone.weights`` must stay ``none``.
- no preset: random weights. ``model.backbone.name`` picks a keras-hub ``ResNetBackbone`` config:
  ``tiny`` (one basic block per stage, 64-128 channels: tests and CPU demos), ``resnet18``,
  ``resnet50`` (the keras-hub ResNet presets' architectures); ``weights`` must be ``none``.

``model.neck.min_level`` / ``max_level`` (default 3 / 7) set the pyramid levels and
``model.head.convs`` (default 4) the head depth. keras-hub fixes pyramid and head widths at 256,
so ``neck.channels`` and ``head.channels`` must be unset (or 256); ``head.block`` is not supported.
``image_size`` must be a multiple of ``2 ** max_level``: keras-hub's anchor generator otherwise
places the coarsest level's anchors with a wrong stride (at 320 px and P7, 106 instead of 128).

keras-hub 0.32 puts the focal-loss prior bias (-4.6) on the box head and 0 on the class head;
:func:`init_heads` moves it where it belongs, and draws the head kernels with the paper's
stddev 0.01 instead of 0.05, whenever the heads are new.

Not registered: keras-hub's ``DFineObjectDetector`` (checked with keras-hub 0.32 on CPU, random
HGNetV2 + D-FINE config of 3.75 M parameters at 128 px, batch 4). It builds offline, but (1)
tracing its training step (Hungarian matching in graph mode) took 152 s and each step then
1.5-2.3 s, far too slow for the shared checks on CPU; (2) its ``compute_loss`` counts every row
of padded targets as an object (``num_targets_per_image`` is the padded ``M`` for every image),
so detkeeper's -1 padding would train as class-0 boxes, and fixing that means copying its
250-line loss rather than wrapping it; (3) ``num_queries`` must not exceed the encoder's
positions (80 at 128 px), and the training example in its docstring fails as written.

keras-hub is imported only when a hub model is built or loaded, so ``import detkeeper.models``
works without it; the names are always listed and building one without keras-hub raises a
:class:`~detkeeper.errors.ConfigError`.
"""

from __future__ import annotations

import copy
import logging
import math

import keras
import tensorflow as tf

from detkeeper.errors import ConfigError
from detkeeper.models import boxes
from detkeeper.models.detector import Detector
from detkeeper.models.registry import Postprocess, register_model, resize_settings

logger = logging.getLogger("detkeeper.models")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``x * scale + offset`` maps 0..255 RGB to ImageNet-standardized input, as keras-hub's ResNet
#: image converters do (``ImageConverter(scale=1/255, mean=..., std=...)``).
IMAGENET_SCALE = tuple(1.0 / (255.0 * std) for std in IMAGENET_STD)
IMAGENET_OFFSET = tuple(-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD))

#: ``model.backbone.name`` -> keras-hub ``ResNetBackbone`` arguments, for random initialization.
#: keras-hub requires 64 filters in the stem and the first stage.
RESNET_CONFIGS = {
    "tiny": dict(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                 stackwise_num_filters=[64, 64, 96, 128], stackwise_num_blocks=[1, 1, 1, 1],
                 stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block"),
    "resnet18": dict(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                     stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2],
                     stackwise_num_strides=[1, 2, 2, 2], block_type="basic_block"),
    "resnet50": dict(input_conv_filters=[64], input_conv_kernel_sizes=[7],
                     stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3],
                     stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block"),
}

#: keras-hub's RetinaNet defaults where the config leaves a value unset.
DEFAULT_MIN_LEVEL, DEFAULT_MAX_LEVEL, DEFAULT_HEAD_CONVS = 3, 7, 4
HUB_WIDTH = 256  # keras-hub's FeaturePyramid and PredictionHead width; RetinaNet does not expose it


def import_keras_hub(model_name: str):
    """keras_hub, imported on first use; a ConfigError saying how to install it when it is missing."""
    try:
        import keras_hub  # optional: keras-hub is an optional dependency
    except ImportError as error:
        raise ConfigError(f"model {model_name!r} needs keras-hub: pip install 'detkeeper[hub]'") from error
    return keras_hub


@keras.saving.register_keras_serializable(package="detkeeper")
class HubRetinaNet(Detector):
    """A keras-hub ``RetinaNetObjectDetector`` as a detkeeper detector.

    `detector` must use ``bounding_box_format="yxyx"``; `scale` and `offset` (a number or one per
    channel, None to skip) normalize the 0..255 input for its backbone.
    """

    LOSS_TERMS = ("class_loss", "box_loss")

    def __init__(self, detector: keras.Model, num_classes: int, image_size: int,
                 scale: float | list[float] | None = None, offset: float | list[float] | None = None,
                 **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        if detector.bounding_box_format != "yxyx":
            raise ValueError(f"the keras-hub detector must use bounding_box_format='yxyx', "
                             f"got {detector.bounding_box_format!r}")
        if detector.num_classes != self.num_classes:
            raise ValueError(f"the keras-hub detector has {detector.num_classes} classes, expected {num_classes}")
        self.detector = detector
        self.scale = _as_tuple(scale)
        self.offset = _as_tuple(offset)
        # The anchors of a fixed input size, in the order of the head outputs (level, y, x, anchor).
        levels = detector.anchor_generator(tf.zeros([1, self.image_size, self.image_size, 3]))
        self.anchors = tf.concat(list(levels.values()), axis=0)
        # The losses keras-hub's ObjectDetector.compile("auto") picks for RetinaNet.
        self.box_loss_fn = keras.losses.Huber(reduction="sum")
        self.class_loss_fn = keras.losses.BinaryFocalCrossentropy(from_logits=True, reduction="sum")

    def call(self, images, training=False):
        x = images
        if self.scale is not None:
            x = x * tf.constant(self.scale, x.dtype)
        if self.offset is not None:
            x = x + tf.constant(self.offset, x.dtype)
        outputs = self.detector(x, training=training)
        return {"cls_logits": outputs["cls_logits"], "bbox_regression": outputs["bbox_regression"]}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """keras-hub's RetinaNet loss (``RetinaNetObjectDetector.compute_loss``) on detkeeper targets.

        keras-hub's label encoder matches its anchors to the boxes (IoU >= 0.5 positive, < 0.4
        background, ignored between; padded rows never match) and encodes the targets. Smooth-L1
        over positives plus focal loss over non-ignored anchors (mean over classes), both summed
        and divided by the number of positives; a batch without any positive has loss 0, as in
        keras-hub.
        """
        box_pred = tf.cast(y_pred["bbox_regression"], tf.float32)
        cls_pred = tf.cast(y_pred["cls_logits"], tf.float32)
        box_targets, labels = self.detector.label_encoder(
            images=x, gt_boxes=tf.cast(y["boxes"], tf.float32), gt_classes=tf.cast(y["classes"], tf.float32))
        positive = tf.cast(labels > -1.0, tf.float32)
        normalizer = tf.reduce_sum(positive)
        has_positives = tf.cast(normalizer > 0.0, tf.float32)
        weight = has_positives / tf.maximum(normalizer, 1.0)
        class_weights = tf.cast(tf.not_equal(labels, -2.0), tf.float32) * weight
        class_targets = tf.one_hot(tf.cast(labels, tf.int32), self.num_classes)  # -1, -2 -> all zeros
        class_loss = self.class_loss_fn(class_targets, cls_pred, sample_weight=class_weights)
        box_loss = self.box_loss_fn(box_targets, box_pred, sample_weight=positive * weight)

        self.track_losses(class_loss=class_loss, box_loss=box_loss)
        return self.with_regularization(class_loss + box_loss)

    def decode_boxes_and_scores(self, outputs):
        """keras-hub's box decoding (its encoding format and variance) against the anchors, with
        the log-size deltas clipped at ``boxes.DECODE_CLIP`` so an untrained head gives finite boxes."""
        encoder = self.detector.label_encoder
        variance = tf.constant(encoder.box_variance, tf.float32)
        deltas = tf.cast(outputs["bbox_regression"], tf.float32)
        deltas = tf.concat([deltas[..., :2], tf.minimum(deltas[..., 2:], boxes.DECODE_CLIP / variance[2:])], -1)
        decoded = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=self.anchors, boxes_delta=deltas, anchor_format=self.detector.anchor_generator.bounding_box_format,
            box_format="yxyx", encoded_format=encoder.encoding_format, variance=encoder.box_variance,
            image_shape=(self.image_size, self.image_size, 3))
        return decoded, tf.sigmoid(tf.cast(outputs["cls_logits"], tf.float32))

    def parts(self) -> dict[str, list]:
        """keras-hub's ``RetinaNetBackbone`` holds both the image encoder (the backbone here) and
        the feature pyramid (the neck); the class and box heads sit on the object detector."""
        pyramid = self.detector.backbone
        encoder = list(pyramid.image_encoder.weights)
        in_encoder = {id(variable) for variable in encoder}
        in_pyramid = {id(variable) for variable in pyramid.weights}
        return {"backbone": encoder,
                "neck": [variable for variable in pyramid.weights if id(variable) not in in_encoder],
                "head": [variable for variable in self.weights if id(variable) not in in_pyramid]}

    def get_config(self) -> dict:
        return {**super().get_config(), "detector": keras.saving.serialize_keras_object(self.detector),
                "scale": _to_json(self.scale), "offset": _to_json(self.offset)}

    @classmethod
    def from_config(cls, config: dict) -> "HubRetinaNet":
        import_keras_hub(config.get("name") or "hub_retinanet")  # registers keras-hub's classes
        config = copy.deepcopy(config)
        detector_config = config.pop("detector")
        # keras-hub tasks compile themselves on construction unless told not to; this one is
        # never compiled or trained on its own (its optimizer would only clutter checkpoints).
        detector_config["config"]["compile"] = False
        detector = keras.saving.deserialize_keras_object(detector_config)
        init_heads(detector)  # the heads are new here; loading weights, if any, comes after
        return cls(detector=detector, **config)


def init_heads(detector: keras.Model) -> None:
    """Initialize new RetinaNet heads as the paper does (Lin et al. 2017, section 4.1): conv
    kernels from N(0, 0.01), biases 0, except the class output's bias, which starts every anchor at
    foreground probability ``box_head.prior_probability`` (0.01).

    keras-hub 0.32 puts that prior bias on the box head, leaves the class head's bias at 0 and draws
    kernels with Keras' "random_normal" (stddev 0.05), which grows activations through the towers:
    an untrained model then scores anchors around 0.3 and the first steps' focal loss is huge.
    """
    probability = detector.box_head.prior_probability
    normal = keras.initializers.RandomNormal(stddev=0.01)
    for head in (detector.classification_head, detector.box_head):
        for conv in [*head.conv_layers, head.prediction_layer]:
            conv.kernel.assign(normal(conv.kernel.shape))
            if conv.use_bias:
                conv.bias.assign(tf.zeros(conv.bias.shape))
    class_bias = detector.classification_head.prediction_layer.bias
    class_bias.assign(tf.fill(class_bias.shape, -math.log((1.0 - probability) / probability)))


def _as_tuple(value) -> float | tuple[float, ...] | None:
    """A number or a per-channel tuple (a tuple, so Keras does not wrap it as a tracked list)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return tuple(float(v) for v in value)


def _to_json(value):
    return list(value) if isinstance(value, tuple) else value


def _check_widths(model_config) -> None:
    neck, head = model_config.neck, model_config.head
    for key, value in (("neck.channels", neck.channels), ("head.channels", head.channels)):
        if value is not None and value != HUB_WIDTH:
            raise ConfigError(f"model.{key}: {model_config.name} uses keras-hub's RetinaNet, whose pyramid and "
                              f"heads are {HUB_WIDTH} channels wide; expected null or {HUB_WIDTH}, got {value}")
    if getattr(head, "block", None) is not None:
        raise ConfigError(f"model.head.block: {model_config.name} uses keras-hub's prediction heads, which "
                          f"take no custom layer; expected null, got {head.block!r}")


def _encoder_from_config(keras_hub, model_config):
    """A randomly initialized keras-hub ResNetBackbone named by ``model.backbone``."""
    backbone, size = model_config.backbone, model_config.image_size
    return keras_hub.models.ResNetBackbone(**RESNET_CONFIGS[backbone.name], image_shape=(size, size, 3),
                                           name=f"{backbone.name}_encoder")


def _load_preset(keras_hub, model_config):
    """The preset's backbone and its image normalization ``(scale, offset)``."""
    preset, size = model_config.preset, model_config.image_size
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, image_shape=(size, size, 3))
    # kagglehub, huggingface_hub and keras-hub report a preset they cannot get with many unrelated
    # types (requests' ConnectionError offline, kagglehub's NotFoundError, ValueError for an
    # unknown name or a handle without config.json); each means the same to the user.
    except Exception as error:
        raise ConfigError(_preset_failure(model_config.name, preset, error)) from error
    try:
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except FileNotFoundError:
        logger.warning("keras-hub preset %r has no image converter; normalizing input with ImageNet "
                       "mean and std", preset)
        return backbone, IMAGENET_SCALE, IMAGENET_OFFSET
    return backbone, converter.scale, converter.offset


def _preset_failure(model_name: str, preset: str, error: Exception) -> str:
    reason = " ".join(str(error).split())
    reason = reason if len(reason) <= 300 else reason[:300] + " ..."
    return (f"model.preset: keras-hub could not load preset {preset!r} for model {model_name!r} "
            f"({type(error).__name__}: {reason}). Preset names and kaggle:// or hf:// handles are "
            "downloaded from Kaggle or Hugging Face on first use, which needs network access (then "
            "they are cached). Without network, build from config with random weights instead "
            "(`model.preset: null`, `model.backbone.name: tiny`, `resnet18` or `resnet50`, "
            "`model.backbone.weights: none`), or load the preset once on a machine with network, copy "
            "its KaggleHub cache here and point the KAGGLEHUB_CACHE environment variable at it, or "
            "set `model.preset` to a local preset directory.")


def _pyramid_backbone(keras_hub, model_config):
    """keras-hub RetinaNetBackbone (ResNet + FPN) from the preset or from config, and its normalization."""
    neck, size = model_config.neck, model_config.image_size
    min_level, max_level = neck.min_level or DEFAULT_MIN_LEVEL, neck.max_level or DEFAULT_MAX_LEVEL
    if model_config.preset is None:
        encoder, scale, offset = _encoder_from_config(keras_hub, model_config), IMAGENET_SCALE, IMAGENET_OFFSET
    else:
        encoder, scale, offset = _load_preset(keras_hub, model_config)
        if isinstance(encoder, keras_hub.models.RetinaNetBackbone):
            for key, wanted, got in (("min_level", neck.min_level, encoder.min_level),
                                     ("max_level", neck.max_level, encoder.max_level)):
                if wanted is not None and wanted != got:
                    raise ConfigError(f"model.neck.{key}: preset {model_config.preset!r} has a feature "
                                      f"pyramid with {key} {got}; expected null or {got}, got {wanted}")
            return encoder, scale, offset
        if not getattr(encoder, "pyramid_outputs", None):
            raise ConfigError(f"model.preset: preset {model_config.preset!r} gives a "
                              f"{type(encoder).__name__}, which has no feature pyramid outputs; use a "
                              "RetinaNet preset or an image backbone preset such as resnet_50_imagenet")
    backbone = keras_hub.models.RetinaNetBackbone(image_encoder=encoder, min_level=min_level, max_level=max_level,
                                                  use_p5=False, image_shape=(size, size, 3), name="retinanet_backbone")
    return backbone, scale, offset


def _check_hub_config(model_config) -> None:
    """What hub_retinanet refuses before it downloads or builds anything."""
    import_keras_hub(model_config.name)
    _check_widths(model_config)
    if model_config.image_size % 32:
        raise ConfigError(f"model.image_size: {model_config.name}'s ResNet and pyramid need a multiple of 32, "
                          f"got {model_config.image_size}")
    backbone, preset = model_config.backbone, model_config.preset
    if preset is None and backbone.name not in RESNET_CONFIGS:
        raise ConfigError(f"model.backbone.name: {model_config.name} builds keras-hub ResNet backbones "
                          f"{', '.join(RESNET_CONFIGS)} from config (or anything from `model.preset`); "
                          f"got {backbone.name!r}")
    if backbone.weights != "none" and preset is not None:
        raise ConfigError(f"model.backbone.weights: the weights come from `model.preset` ({preset!r}); "
                          f"expected none, got {backbone.weights!r}")
    if backbone.weights != "none":
        raise ConfigError(f"model.backbone.weights: {model_config.name} takes pretrained weights only from a "
                          f"keras-hub preset (e.g. `model.preset: resnet_50_imagenet` for an ImageNet "
                          f"ResNet-50, or `retinanet_resnet50_fpn_coco` for a COCO ResNet-50 + FPN); "
                          f"expected none, got {backbone.weights!r}")


@register_model("hub_retinanet", check=_check_hub_config)
def hub_retinanet(model_config, num_classes: int, postprocess: Postprocess) -> HubRetinaNet:
    """keras-hub's RetinaNet (ResNet + FPN P3-P7, 256 wide, four-conv heads) from a preset or config."""
    _check_hub_config(model_config)
    keras_hub = import_keras_hub(model_config.name)
    backbone, scale, offset = _pyramid_backbone(keras_hub, model_config)
    stride = 2 ** backbone.max_level
    if model_config.image_size % stride:
        raise ConfigError(f"model.image_size: {model_config.name} with pyramid level {backbone.max_level} needs "
                          f"a multiple of {stride} (keras-hub's anchor generator does not line its anchors up "
                          f"with the features otherwise); got {model_config.image_size}: change the image "
                          "size, or lower `model.neck.max_level` (not with a RetinaNet preset)")
    head_convs = model_config.head.convs
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=backbone, num_classes=num_classes, bounding_box_format="yxyx",
        pre_logits_num_conv_layers=DEFAULT_HEAD_CONVS if head_convs is None else head_convs,
        compile=False, name="retinanet")
    init_heads(detector)
    return HubRetinaNet(detector, num_classes, model_config.image_size, scale=scale, offset=offset,
                        score_threshold=postprocess.score_threshold, iou_threshold=postprocess.iou_threshold,
                        max_detections=postprocess.max_detections, name=model_config.name,
                        **resize_settings(model_config))
