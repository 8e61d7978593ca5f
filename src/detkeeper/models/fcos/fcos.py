"""FCOS (Tian et al. 2019): backbone -> FPN -> shared head predicting per location, no anchors.

Every feature-map cell ("location") predicts class scores, the four distances from itself to the
sides of its object and a centerness that down-weights off-center predictions at inference.
Targets are assigned inside ``compute_loss`` by :func:`detkeeper.models.fcos.assign.assign_targets`:
a location is positive for a ground-truth box when it lies in the box's center region (center
sampling) and the box's size suits the location's pyramid level. Two options from later work, both
off by default: ``assigner="atss"`` picks the positives by each box's own IoU statistics
(:func:`detkeeper.models.fcos.assign.assign_targets_atss`), and
``classification_loss="quality_focal"`` trains the class score to predict the box's IoU, which then
ranks detections alone (no centerness branch).
"""

from __future__ import annotations

from typing import get_args

import keras
import tensorflow as tf

from detkeeper.config.schema import FcosAssigner, FcosClassificationLoss
from detkeeper.models import boxes, losses
from detkeeper.models.detector import Detector, PyramidDefaults, build_pyramid_detector, check_pyramid_config
from detkeeper.models.fcos.assign import (assign_targets, assign_targets_atss, distances_to_boxes, level_counts,
                                          locations)
from detkeeper.models.fcos.head import FCOSHead
from detkeeper.models.fpn import FeaturePyramid
from detkeeper.models.losses import quality_focal_loss, sigmoid_focal_loss
from detkeeper.models.registry import Postprocess, register_model

#: The values of ``model.head.assigner`` and ``model.head.classification_loss``.
ASSIGNERS, CLASSIFICATION_LOSSES = get_args(FcosAssigner), get_args(FcosClassificationLoss)


@keras.saving.register_keras_serializable(package="detkeeper")
class FCOS(Detector):
    """Anchor-free single-stage detector: per-location classes, side distances and centerness
    (no centerness with ``classification_loss="quality_focal"``)."""

    LOSS_TERMS = ("class_loss", "box_loss", "centerness_loss")

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int, fpn_channels: int = 64,
                 head_channels: int = 64, head_convs: int = 2, min_level: int = 3, max_level: int = 6,
                 center_sampling_radius: float = 1.5, box_loss_weight: float = 1.0, head_block: str | None = None,
                 assigner: str = "fcos", classification_loss: str = "focal", **kwargs) -> None:
        for name, value, known in (("assigner", assigner, ASSIGNERS),
                                   ("classification_loss", classification_loss, CLASSIFICATION_LOSSES)):
            if value not in known:
                raise ValueError(f"FCOS {name}: expected one of {', '.join(known)}, got {value!r}")
        if classification_loss != "focal":
            # Set before Detector.__init__, which makes one loss tracker per term.
            self.LOSS_TERMS = ("class_loss", "box_loss")
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.assigner, self.classification_loss = assigner, classification_loss
        self.uses_centerness = classification_loss == "focal"
        self.backbone = backbone
        self.fpn_channels, self.head_channels, self.head_convs = fpn_channels, head_channels, head_convs
        self.head_block = head_block
        self.min_level, self.max_level = min_level, max_level
        self.center_sampling_radius = float(center_sampling_radius)
        self.box_loss_weight = float(box_loss_weight)
        self.fpn = FeaturePyramid(fpn_channels, min_level, max_level, name="fpn")
        self.head = FCOSHead(num_classes, head_channels, head_convs, min_level, max_level, head_block,
                             centerness=self.uses_centerness, name="head")
        self.centers, self.location_strides, self.size_ranges = locations(image_size, min_level, max_level)
        self.level_counts = level_counts(image_size, min_level, max_level)

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        class_logits, box_distances, *centerness_logits = self.head(self.fpn(features))
        outputs = {"class_logits": class_logits, "box_distances": box_distances}
        return {**outputs, "centerness_logits": centerness_logits[0]} if self.uses_centerness else outputs

    def assign(self, gt_boxes: tf.Tensor, gt_classes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Every location's targets for padded gts ``[B, M, 4]`` / ``[B, M]``, by the configured assigner."""
        if self.assigner == "atss":
            return assign_targets_atss(self.centers, self.location_strides, self.level_counts, gt_boxes, gt_classes)
        return assign_targets(self.centers, self.location_strides, self.size_ranges, gt_boxes, gt_classes,
                              self.center_sampling_radius)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Focal loss over all locations and BCE on centerness, both per positive; GIoU on the
        positives' boxes weighted by their centerness target (the FCOS reference implementation's
        choice: boxes near the object center, which inference keeps, get the most weight).

        With quality focal loss a positive's class target is its predicted box's IoU with its gt
        (a constant to the loss: GFL stops its gradient too), and there is no centerness loss. The
        box loss keeps the centerness-target weights, which come from the assignment, not the branch."""
        class_logits = tf.cast(y_pred["class_logits"], tf.float32)
        box_distances = tf.cast(y_pred["box_distances"], tf.float32)
        targets = self.assign(y["boxes"], y["classes"])
        labels = targets["labels"]
        positive = tf.cast(labels >= 0, tf.float32)
        num_positive = tf.maximum(losses.replica_sum(tf.reduce_sum(positive)), 1.0)  # of the global batch
        predicted = distances_to_boxes(self.centers[None], box_distances)

        class_targets = tf.one_hot(tf.maximum(labels, 0), self.num_classes) * positive[..., None]
        if self.uses_centerness:
            class_loss = tf.reduce_sum(sigmoid_focal_loss(class_targets, class_logits)) / num_positive
        else:
            quality = tf.stop_gradient(boxes.matched_iou(predicted, targets["matched_boxes"]))[..., None]
            class_loss = tf.reduce_sum(quality_focal_loss(class_targets * quality, class_logits)) / num_positive

        box_weights = targets["centerness"] * positive
        box_loss = tf.math.divide_no_nan(
            tf.reduce_sum((1.0 - boxes.giou(predicted, targets["matched_boxes"])) * box_weights),
            losses.replica_sum(tf.reduce_sum(box_weights)))
        terms = {"class_loss": class_loss, "box_loss": box_loss}
        total = class_loss + self.box_loss_weight * box_loss

        if self.uses_centerness:
            centerness_logits = tf.cast(y_pred["centerness_logits"], tf.float32)
            centerness_loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets["centerness"],
                                                                      logits=centerness_logits)
            terms["centerness_loss"] = tf.reduce_sum(centerness_loss * positive) / num_positive
            total += terms["centerness_loss"]

        self.track_losses(**terms)
        return self.with_regularization(total)

    def decode_boxes_and_scores(self, outputs):
        """Boxes clipped to the image; scores ``sqrt(p_class * p_centerness)`` as FCOS inference ranks
        them, so off-center locations' boxes lose NMS to the central ones; with quality focal loss
        ``p_class`` alone, which was trained to be the box's IoU."""
        distances = tf.cast(outputs["box_distances"], tf.float32)
        decoded = tf.clip_by_value(distances_to_boxes(self.centers[None], distances), 0.0, float(self.image_size))
        class_probabilities = tf.sigmoid(tf.cast(outputs["class_logits"], tf.float32))
        if not self.uses_centerness:
            return decoded, class_probabilities
        centerness_probabilities = tf.sigmoid(tf.cast(outputs["centerness_logits"], tf.float32))
        return decoded, tf.sqrt(class_probabilities * centerness_probabilities[..., None])

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "fpn_channels": self.fpn_channels, "head_channels": self.head_channels,
                "head_convs": self.head_convs, "min_level": self.min_level, "max_level": self.max_level,
                "center_sampling_radius": self.center_sampling_radius, "box_loss_weight": self.box_loss_weight,
                "head_block": self.head_block, "assigner": self.assigner,
                "classification_loss": self.classification_loss}


#: The ``model`` keys of :data:`detkeeper.models.registry.FAMILY_OPTIONS` the FCOS family reads.
FCOS_OPTIONS = ("head.assigner", "head.classification_loss")


def _options(model_config) -> dict[str, str]:
    """``model.head.assigner`` / ``classification_loss`` as FCOS arguments where set (FCOS's defaults
    otherwise: the paper's assigner and focal loss)."""
    options = {"assigner": model_config.head.assigner, "classification_loss": model_config.head.classification_loss}
    return {name: value for name, value in options.items() if value is not None}


@register_model("fcos_tiny", check=check_pyramid_config, options=FCOS_OPTIONS)
def fcos_tiny(model_config, num_classes: int, postprocess: Postprocess) -> FCOS:
    """Small and fast: 64-channel pyramid P3-P6 and two-conv towers; for the tests and the demo."""
    return build_pyramid_detector(FCOS, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=64, head_convs=2, min_level=3, max_level=6),
                                  **_options(model_config))


@register_model("fcos", check=check_pyramid_config, options=FCOS_OPTIONS)
def fcos(model_config, num_classes: int, postprocess: Postprocess) -> FCOS:
    """The paper's shape at a width that trains on one GPU: 128-channel pyramid P3-P7, four-conv towers."""
    return build_pyramid_detector(FCOS, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=128, head_convs=4, min_level=3, max_level=7),
                                  **_options(model_config))
