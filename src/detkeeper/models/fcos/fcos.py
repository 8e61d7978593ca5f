"""FCOS (Tian et al. 2019): backbone -> FPN -> shared head predicting per location, no anchors.

Every feature-map cell ("location") predicts class scores, the four distances from itself to the
sides of its object and a centerness that down-weights off-center predictions at inference.
Targets are assigned inside ``compute_loss`` by :func:`detkeeper.models.fcos.assign.assign_targets`:
a location is positive for a ground-truth box when it lies in the box's center region (center
sampling) and the box's size suits the location's pyramid level.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from detkeeper.models import boxes, losses
from detkeeper.models.detector import Detector, PyramidDefaults, build_pyramid_detector, check_pyramid_config
from detkeeper.models.fcos.assign import assign_targets, distances_to_boxes, locations
from detkeeper.models.fcos.head import FCOSHead
from detkeeper.models.fpn import FeaturePyramid
from detkeeper.models.losses import sigmoid_focal_loss
from detkeeper.models.registry import Postprocess, register_model


@keras.saving.register_keras_serializable(package="detkeeper")
class FCOS(Detector):
    """Anchor-free single-stage detector: per-location classes, side distances and centerness."""

    LOSS_TERMS = ("class_loss", "box_loss", "centerness_loss")

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int, fpn_channels: int = 64,
                 head_channels: int = 64, head_convs: int = 2, min_level: int = 3, max_level: int = 6,
                 center_sampling_radius: float = 1.5, box_loss_weight: float = 1.0, head_block: str | None = None,
                 **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.backbone = backbone
        self.fpn_channels, self.head_channels, self.head_convs = fpn_channels, head_channels, head_convs
        self.head_block = head_block
        self.min_level, self.max_level = min_level, max_level
        self.center_sampling_radius = float(center_sampling_radius)
        self.box_loss_weight = float(box_loss_weight)
        self.fpn = FeaturePyramid(fpn_channels, min_level, max_level, name="fpn")
        self.head = FCOSHead(num_classes, head_channels, head_convs, min_level, max_level, head_block, name="head")
        self.centers, self.location_strides, self.size_ranges = locations(image_size, min_level, max_level)

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        class_logits, box_distances, centerness_logits = self.head(self.fpn(features))
        return {"class_logits": class_logits, "box_distances": box_distances,
                "centerness_logits": centerness_logits}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Focal loss over all locations and BCE on centerness, both per positive; GIoU on the
        positives' boxes weighted by their centerness target (the FCOS reference implementation's
        choice: boxes near the object center, which inference keeps, get the most weight)."""
        class_logits = tf.cast(y_pred["class_logits"], tf.float32)
        box_distances = tf.cast(y_pred["box_distances"], tf.float32)
        centerness_logits = tf.cast(y_pred["centerness_logits"], tf.float32)
        targets = assign_targets(self.centers, self.location_strides, self.size_ranges, y["boxes"], y["classes"],
                                 self.center_sampling_radius)
        labels = targets["labels"]
        positive = tf.cast(labels >= 0, tf.float32)
        num_positive = tf.maximum(losses.replica_sum(tf.reduce_sum(positive)), 1.0)  # of the global batch

        class_targets = tf.one_hot(tf.maximum(labels, 0), self.num_classes) * positive[..., None]
        class_loss = tf.reduce_sum(sigmoid_focal_loss(class_targets, class_logits)) / num_positive

        box_weights = targets["centerness"] * positive
        predicted = distances_to_boxes(self.centers[None], box_distances)
        box_loss = tf.math.divide_no_nan(
            tf.reduce_sum((1.0 - boxes.giou(predicted, targets["matched_boxes"])) * box_weights),
            losses.replica_sum(tf.reduce_sum(box_weights)))

        centerness_loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets["centerness"],
                                                                  logits=centerness_logits)
        centerness_loss = tf.reduce_sum(centerness_loss * positive) / num_positive

        self.track_losses(class_loss=class_loss, box_loss=box_loss, centerness_loss=centerness_loss)
        return self.with_regularization(class_loss + self.box_loss_weight * box_loss + centerness_loss)

    def decode_boxes_and_scores(self, outputs):
        """Boxes clipped to the image; scores ``sqrt(p_class * p_centerness)`` as FCOS inference ranks
        them, so off-center locations' boxes lose NMS to the central ones."""
        distances = tf.cast(outputs["box_distances"], tf.float32)
        decoded = tf.clip_by_value(distances_to_boxes(self.centers[None], distances), 0.0, float(self.image_size))
        class_probabilities = tf.sigmoid(tf.cast(outputs["class_logits"], tf.float32))
        centerness_probabilities = tf.sigmoid(tf.cast(outputs["centerness_logits"], tf.float32))
        return decoded, tf.sqrt(class_probabilities * centerness_probabilities[..., None])

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "fpn_channels": self.fpn_channels, "head_channels": self.head_channels,
                "head_convs": self.head_convs, "min_level": self.min_level, "max_level": self.max_level,
                "center_sampling_radius": self.center_sampling_radius, "box_loss_weight": self.box_loss_weight,
                "head_block": self.head_block}


@register_model("fcos_tiny", check=check_pyramid_config)
def fcos_tiny(model_config, num_classes: int, postprocess: Postprocess) -> FCOS:
    """Small and fast: 64-channel pyramid P3-P6 and two-conv towers; for the tests and the demo."""
    return build_pyramid_detector(FCOS, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=64, head_convs=2, min_level=3, max_level=6))


@register_model("fcos", check=check_pyramid_config)
def fcos(model_config, num_classes: int, postprocess: Postprocess) -> FCOS:
    """The paper's shape at a width that trains on one GPU: 128-channel pyramid P3-P7, four-conv towers."""
    return build_pyramid_detector(FCOS, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=128, head_convs=4, min_level=3, max_level=7))
