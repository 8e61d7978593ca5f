"""RetinaNet (Lin et al. 2017): backbone -> FPN -> shared heads over anchors, focal loss.

The TF OD API's most used kind of detector (SSD-FPN / RetinaNet). Anchors are matched to ground
truth inside ``compute_loss`` (IoU >= 0.5 positive, < 0.4 background, in between ignored, and every
object's best anchor forced positive), boxes are coded like the API's FasterRcnnBoxCoder.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from detkeeper.models import boxes, losses
from detkeeper.models.detector import Detector, PyramidDefaults, build_pyramid_detector, check_pyramid_config
from detkeeper.models.losses import huber_loss, sigmoid_focal_loss
from detkeeper.models.registry import Postprocess, register_model
from detkeeper.models.fpn import FeaturePyramid
from detkeeper.models.retinanet.head import RetinaNetHead

ASPECT_RATIOS = (0.5, 1.0, 2.0)
SCALES_PER_OCTAVE = 3
ANCHOR_SIZE_MULTIPLE = 4.0


@keras.saving.register_keras_serializable(package="detkeeper")
class RetinaNet(Detector):
    """Anchor-based single-stage detector with a feature pyramid and focal loss."""

    LOSS_TERMS = ("class_loss", "box_loss")

    def __init__(self, backbone: keras.Model, num_classes: int, image_size: int, fpn_channels: int = 64,
                 head_channels: int = 64, head_convs: int = 2, min_level: int = 3, max_level: int = 6,
                 box_loss_weight: float = 1.0, head_block: str | None = None, **kwargs) -> None:
        super().__init__(num_classes=num_classes, image_size=image_size, **kwargs)
        self.backbone = backbone
        self.fpn_channels, self.head_channels, self.head_convs = fpn_channels, head_channels, head_convs
        self.head_block = head_block
        self.min_level, self.max_level = min_level, max_level
        self.box_loss_weight = float(box_loss_weight)
        self.fpn = FeaturePyramid(fpn_channels, min_level, max_level, name="fpn")
        self.head = RetinaNetHead(num_classes, len(ASPECT_RATIOS) * SCALES_PER_OCTAVE, head_channels,
                                  head_convs, head_block, name="head")
        self.anchors = boxes.generate_anchors(
            image_size, strides=tuple(2 ** level for level in range(min_level, max_level + 1)),
            anchor_size_multiple=ANCHOR_SIZE_MULTIPLE, aspect_ratios=ASPECT_RATIOS,
            scales_per_octave=SCALES_PER_OCTAVE)

    def call(self, images, training=False):
        features = self.backbone(images, training=training)
        class_logits, box_deltas = self.head(self.fpn(features))
        return {"class_logits": class_logits, "box_deltas": box_deltas}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        class_logits = tf.cast(y_pred["class_logits"], tf.float32)
        box_deltas = tf.cast(y_pred["box_deltas"], tf.float32)
        match = boxes.match_anchors(self.anchors, y["boxes"], y["classes"])
        labels = match["labels"]
        positive = tf.cast(labels >= 0, tf.float32)
        not_ignored = tf.cast(labels >= -1, tf.float32)
        num_positive = tf.maximum(losses.replica_sum(tf.reduce_sum(positive)), 1.0)  # of the global batch

        class_targets = tf.one_hot(tf.maximum(labels, 0), self.num_classes) * positive[..., None]
        class_loss = tf.reduce_sum(sigmoid_focal_loss(class_targets, class_logits) * not_ignored[..., None])
        class_loss = class_loss / num_positive

        box_targets = boxes.encode(match["matched_boxes"], self.anchors)
        box_loss = tf.reduce_sum(huber_loss(box_targets, box_deltas) * positive[..., None]) / num_positive

        self.track_losses(class_loss=class_loss, box_loss=box_loss)
        return self.with_regularization(class_loss + self.box_loss_weight * box_loss)

    def decode_boxes_and_scores(self, outputs):
        decoded = boxes.decode(tf.cast(outputs["box_deltas"], tf.float32), self.anchors)
        return decoded, tf.sigmoid(tf.cast(outputs["class_logits"], tf.float32))

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": keras.saving.serialize_keras_object(self.backbone),
                "fpn_channels": self.fpn_channels, "head_channels": self.head_channels,
                "head_convs": self.head_convs, "min_level": self.min_level, "max_level": self.max_level,
                "box_loss_weight": self.box_loss_weight, "head_block": self.head_block}



@register_model("retinanet_tiny", check=check_pyramid_config)
def retinanet_tiny(model_config, num_classes: int, postprocess: Postprocess) -> RetinaNet:
    """Small and fast: 64-channel pyramid P3-P6 and two-conv heads; the demo's and the tests' model."""
    return build_pyramid_detector(RetinaNet, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=64, head_convs=2, min_level=3, max_level=6))


@register_model("retinanet", check=check_pyramid_config)
def retinanet(model_config, num_classes: int, postprocess: Postprocess) -> RetinaNet:
    """The paper's shape at a width that trains on one GPU: 128-channel pyramid P3-P7, four-conv heads."""
    return build_pyramid_detector(RetinaNet, model_config, num_classes, postprocess,
                                  PyramidDefaults(channels=128, head_convs=4, min_level=3, max_level=7))
