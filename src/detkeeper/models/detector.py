"""What every detector shares: input contract, decoding with NMS, prediction.

A detector is a Keras 3 model. It takes float32 images ``[B, S, S, 3]`` with RGB values 0..255
(the input pipeline's output), returns raw head outputs from ``call``, computes its loss from
padded targets in ``compute_loss`` (so ``fit`` trains it), and ``predict`` returns decoded
detections: ``boxes`` ``[B, N, 4]`` yxyx in input pixels, ``scores`` ``[B, N]``, ``classes``
``[B, N]`` contiguous class indices (-1 for padding) and ``num_detections`` ``[B]``.
Families implement :meth:`decode_boxes_and_scores`; everything after it is shared here.
"""

from __future__ import annotations

import copy
import dataclasses

import keras
import tensorflow as tf

from detkeeper.errors import DetkeeperError
from detkeeper.models import boxes, losses
from detkeeper.models.backbones import build_backbone, check_backbone
from detkeeper.models.custom import tower_layer
from detkeeper.models.registry import resize_settings


@tf.autograph.experimental.do_not_convert  # mapped over the pipeline: nothing to convert
def fit_inputs(batch: dict) -> tuple[tf.Tensor, dict]:
    """Pipeline batch -> ``(images, {"boxes", "classes"})`` as ``fit`` and ``compute_loss`` take it."""
    return batch["images"], {"boxes": batch["boxes"], "classes": batch["classes"]}


class Detector(keras.Model):
    """Base class: subclasses build layers and implement ``call``, ``compute_loss`` and
    ``decode_boxes_and_scores(outputs) -> (boxes [B, A, 4] in input pixels, probabilities [B, A, C])``.

    ``custom_objects_module`` (``model.custom_objects_module``) is only recorded in the config, so
    a ``.keras`` archive says which module to import before loading it
    (:func:`detkeeper.models.archive.load_keras_archive`).

    ``LOSS_TERMS`` names the parts of the loss that ``compute_loss`` reports with
    :meth:`track_losses`; each is logged beside ``loss`` (``class_loss``, ``val_box_loss``, ...)."""

    LOSS_TERMS: tuple[str, ...] = ()
    #: The RGB value (0..255) padding fills with (``model.resize.mode: pad``): a family whose
    #: normalisation maps another value to zero overrides it (see ``detkeeper.data.augment.Resize``).
    pad_value: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Whether NMS sees the decoded boxes clipped to the canvas (detkeeper's families), or as they
    #: are, the survivors then clipped to the image's content window and those it leaves empty
    #: dropped (the TF OD API's SSD post-processing, see :meth:`nms_clipping`); the two suppress
    #: differently near the border, where clipping changes the overlaps.
    CLIP_BEFORE_NMS: bool = True
    #: Whether the outputs hold a background score (the TF OD API's slot 0, ``add_background_class``):
    #: exports then give it as score column 0 before the classes, as the API's exports do. Such a
    #: family defines ``background_scores(outputs) -> [B, A]`` (see ``SsdMetaArch``).
    BACKGROUND_CLASS: bool = False

    @property
    def _default_save_signature(self):
        """None: no signature of Keras' own in SavedModels. Keras gives every model a ``serving_default``
        that ``tf.saved_model.save`` traces and stores beside detkeeper's serving functions (the
        exporter's), which never call it."""
        return None

    def __init__(self, num_classes: int, image_size: int, score_threshold: float = 0.05,
                 iou_threshold: float = 0.5, max_detections: int = 100, custom_objects_module: str | None = None,
                 resize_mode: str = "pad", resize_method: str = "antialias", **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.image_size = int(image_size)
        self.resize_mode, self.resize_method = resize_mode, resize_method  # how images become its input
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.max_detections = int(max_detections)
        self.custom_objects_module = custom_objects_module
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in self.LOSS_TERMS}

    def track_losses(self, **terms: tf.Tensor) -> None:
        """Update the tracker of each loss term (names of ``LOSS_TERMS``), with the global batch's
        value under a multi-replica strategy (``losses.for_tracking``), as Keras tracks ``loss``."""
        for name, value in terms.items():
            self.loss_trackers[name].update_state(losses.for_tracking(value))

    def with_regularization(self, total: tf.Tensor) -> tf.Tensor:
        """`total` plus the layers' regularization losses (``self.losses``), this replica's share of
        them (``losses.replica_share``): the replicas' gradients are summed, the terms counted once."""
        if self.losses:
            total = total + losses.replica_share(tf.add_n(self.losses))
        return total

    @property
    def metrics(self):
        return [*super().metrics, *self.loss_trackers.values()]

    def compile(self, *args, jit_compile=False, **kwargs):
        """As Keras' compile, but XLA stays off unless asked for: ``predict`` runs NMS
        (``CombinedNonMaxSuppression`` has no XLA kernel), and on CPU XLA trains slower."""
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def compile_from_config(self, config: dict) -> None:
        """As Keras' own, which skips models that override ``compile``: a loaded ``.keras`` archive
        comes back compiled, with its optimizer's slots, so training can go on from it."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        self._in_train_step = True  # read while tracing: compute_metrics knows which step it is in
        try:
            return super().train_step(data)
        finally:
            self._in_train_step = False

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Compiled metrics get the whole targets and raw outputs (Keras would pair them with the
        outputs one by one and refuse a detection metric such as
        :class:`detkeeper.evaluation.CocoMetric`); one with ``during_training=False`` is only
        updated in evaluation steps."""
        compiled = self._compile_metrics
        if compiled is not None:
            if not compiled.built:
                compiled.build(tf.zeros(()), tf.zeros(()))  # one "output": the whole detector
            for metric in compiled.metrics:
                if getattr(metric, "detector", False) is None:
                    metric.detector = self
                if getattr(self, "_in_train_step", False) and not getattr(metric, "during_training", True):
                    continue
                metric.update_state(y, y_pred)
        return self.get_metrics_result()

    def postprocess(self, outputs: dict, windows: tf.Tensor | None = None) -> dict:
        """Candidates -> the final detections, by class-aware NMS clipped as :meth:`nms_clipping` says.
        `windows` ``[B, 4]``: where each image lies in its canvas (``boxes.content_windows``)."""
        candidate_boxes, scores = self.decode_boxes_and_scores(outputs)
        return boxes.batched_nms(candidate_boxes, scores, max_detections=self.max_detections,
                                 iou_threshold=self.iou_threshold, score_threshold=self.score_threshold,
                                 **self.nms_clipping(windows, tf.shape(candidate_boxes)[0]))

    def nms_clipping(self, windows: tf.Tensor | None, batch_size) -> dict:
        """``boxes.batched_nms``'s clipping arguments for this family. Without ``CLIP_BEFORE_NMS``
        (the TF OD API's SSDs) the survivors of NMS are clipped to each image's content window and
        those wholly outside it dropped, as the API's post-processing does with its clip window
        (``true_image_shapes``; the whole canvas when `windows` is None, and for a stretched image).
        detkeeper's own families clip every candidate to the canvas before NMS and keep what NMS
        keeps: they ignore `windows` (their detections in the padding are empty once mapped back
        to the photo, see ``boxes.to_original_pixels``)."""
        if self.CLIP_BEFORE_NMS:
            return {"clip_size": self.image_size}
        if windows is None:
            size = float(self.image_size)
            windows = tf.tile(tf.constant([[0.0, 0.0, size, size]]), [batch_size, 1])
        return {"clip_window": tf.cast(windows, tf.float32)}

    def predict_step(self, data):
        """``predict`` over images, or over pipeline batches (their ``image_scales`` and
        ``image_sizes`` give each image's content window)."""
        images = data[0] if isinstance(data, (tuple, list)) else data
        windows = None
        if isinstance(images, dict):
            if "image_scales" in images and "image_sizes" in images:
                windows = boxes.content_windows(images["image_scales"], images["image_sizes"])
            images = images["images"]
        return self.postprocess(self(images, training=False), windows)

    def detect(self, images: tf.Tensor, windows: tf.Tensor | None = None) -> dict:
        """Decoded detections for a batch, without Keras' predict loop (for evaluation and tests);
        `windows` as :meth:`postprocess` takes them."""
        return self.postprocess(self(images, training=False), windows)

    def parts(self) -> dict[str, list]:
        """The model's variables as ``{"backbone", "neck", "head"}``, disjoint and covering
        ``self.weights`` (BatchNorm statistics included): fine-tuning (``model.init_from``) keeps
        some parts and starts others anew. Families built by :func:`build_pyramid_detector` hold
        them as ``backbone`` / ``fpn`` / ``head``; a family built otherwise overrides this."""
        missing = [name for name in ("backbone", "fpn", "head") if not hasattr(self, name)]
        if missing:
            raise DetkeeperError(f"{type(self).__name__} has no {', '.join(missing)} attribute: "
                                      "override Detector.parts() to say which variables are its backbone, "
                                      "neck and head")
        return {"backbone": list(self.backbone.weights), "neck": list(self.fpn.weights),
                "head": list(self.head.weights)}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, image_size=self.image_size,
                      score_threshold=self.score_threshold, iou_threshold=self.iou_threshold,
                      max_detections=self.max_detections, custom_objects_module=self.custom_objects_module,
                      resize_mode=self.resize_mode, resize_method=self.resize_method)
        return config

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        """TensorFlow's object graph, for ``tf.train.Checkpoint`` and ``tf.saved_model.save``: Keras 3
        leaves layers and weights held in lists and dicts (head towers, the FPN's levels, the SSD
        predictor's per-level batch norms, a user's block) out of it, so a checkpoint would silently
        skip them (keras-team/keras#18398 was fixed for SavedModel only, and not for every nesting:
        a SavedModel of an SSD family found its batch norms "untracked" unless a checkpoint had been
        written first). Each gets a named dependency first, e.g. ``head/class_tower[0]``."""
        for layer in self._flatten_layers(include_self=True, recursive=True):
            for attribute in getattr(layer, "_tracked", ()):
                _track_collection(layer, attribute, getattr(layer, attribute, None))
        return super()._trackable_children(save_type, **kwargs)

    @classmethod
    def from_config(cls, config: dict) -> "Detector":
        config = copy.deepcopy(config)  # deserializing the backbone empties its nested config in place
        if "backbone" in config:
            config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


def _track_collection(owner, name: str, value) -> None:
    """Make every layer or variable in the (nested) list or dict `value` a TF dependency of `owner`."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        child = f"{name}[{key}]"
        if isinstance(item, (keras.layers.Layer, keras.Variable)):
            owner._track_trackable(item, name=child, overwrite=True)
        else:
            _track_collection(owner, child, item)


@dataclasses.dataclass(frozen=True)
class PyramidDefaults:
    """A registered model's architecture where ``model.neck`` / ``model.head`` leave a value unset."""

    channels: int
    head_convs: int
    min_level: int
    max_level: int


def check_pyramid_config(model_config) -> None:
    """The registry check of families built by :func:`build_pyramid_detector`: their backbone and
    head block exist (the ``ConfigError`` building would raise, without building the model)."""
    check_backbone(model_config.backbone.name, model_config.backbone.weights, model_config.image_size)
    if model_config.head.block is not None:
        tower_layer(model_config.head.block, 8, "head_block_check")


def build_pyramid_detector(detector_class: type, model_config, num_classes: int, postprocess,
                           defaults: PyramidDefaults, **options) -> Detector:
    """Backbone from ``model.backbone``, then `detector_class` with config values over `defaults`
    (`detector_class` takes ``head_block``, the registered layer of ``model.head.block``) and the
    family's own `options`."""
    neck, head = model_config.neck, model_config.head
    backbone = build_backbone(model_config.backbone.name, model_config.backbone.weights, model_config.image_size)
    return detector_class(
        backbone, num_classes, model_config.image_size,
        fpn_channels=neck.channels or defaults.channels, head_channels=head.channels or defaults.channels,
        head_convs=head.convs if head.convs is not None else defaults.head_convs,
        min_level=neck.min_level or defaults.min_level, max_level=neck.max_level or defaults.max_level,
        score_threshold=postprocess.score_threshold, iou_threshold=postprocess.iou_threshold,
        max_detections=postprocess.max_detections, head_block=head.block,
        custom_objects_module=model_config.custom_objects_module, name=model_config.name,
        **resize_settings(model_config), **options)

