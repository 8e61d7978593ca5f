"""What the TF OD API's SSD meta-architecture does around its feature extractor and box predictor.

``meta_architectures/ssd_meta_arch.py``, shared by the SSD families reproduced here (FPN-lite, the
MobileNetV2 SSD without FPN, EfficientDet): ``call`` runs the family's ``feature_maps`` and
``head`` and returns the API's raw ``predict`` outputs, ``box_encodings [B, A, 4]`` (``ty, tx,
th, tw`` of the faster-rcnn box coder, before its scales 10, 10, 5, 5 are undone) and
``class_logits`` (``class_predictions_with_background``: ``[B, A, C + 1]`` with slot 0 the
background where the family has one, ``BACKGROUND_CLASS``, the API's ``add_background_class``;
``[B, A, C]`` otherwise), over the family's ``anchors`` (``[A, 4]`` yxyx in input pixels, in the
API's order). Decoding uses the sigmoid score converter and drops the background slot; NMS suppresses
the boxes as they are, then clips each class's survivors to the image's content window and drops
those it leaves empty (``CLIP_BEFORE_NMS = False``, ``Detector.nms_clipping``), as the API's
``multiclass_non_max_suppression`` does with the clip window ``postprocess`` gives it
(``_compute_clip_window``: the resized photo without its padding).

The loss (detkeeper's pieces, as the zoo configs set them): the argmax matcher (IoU >= 0.5
positive, below background, each object's best anchor forced), sigmoid focal loss
(``FOCAL_ALPHA``, ``FOCAL_GAMMA``: the family config's ``weighted_sigmoid_focal``) over every slot,
a background slot's target always 0 (``encode_background_as_zeros``), smooth-L1
(``SMOOTH_L1_DELTA``) on the encodings divided by the code size (``normalize_loc_loss_by_codesize``),
both normalised by the number of matches. The API's L2 regularizer on the convolutions is not carried.
"""

from __future__ import annotations

import tensorflow as tf

from detkeeper.models import boxes, losses
from detkeeper.models.detector import Detector
from detkeeper.models.losses import huber_loss, sigmoid_focal_loss
from detkeeper.models.ssd.predictor import BOX_CODE_SIZE

BOX_CODER_SCALES = (10.0, 10.0, 5.0, 5.0)
MATCHED_THRESHOLD = 0.5
UNMATCHED_THRESHOLD = 0.5


class SsdMetaArch(Detector):
    """Base of the SSD families: subclasses set ``backbone`` (images -> ``{"C3", ...}``), ``fpn``
    (-> the feature maps; or override :meth:`feature_maps`), ``head`` (-> box encodings and class
    logits), ``anchors`` and their config's loss settings."""

    LOSS_TERMS = ("class_loss", "box_loss")
    CLIP_BEFORE_NMS = False  # the API's NMS clips its survivors to the content window and prunes empty ones
    BACKGROUND_CLASS = True  # slot 0 of class_logits
    FOCAL_ALPHA, FOCAL_GAMMA, SMOOTH_L1_DELTA = 0.25, 2.0, 1.0  # the zoo configs' usual values

    def feature_maps(self, images, training=False) -> list:
        """The neck's outputs, finest first (the API's ``feature_maps``)."""
        return self.fpn(self.backbone(images, training=training), training=training)

    def call(self, images, training=False):
        """The API's raw ``predict`` outputs: ``box_encodings`` and ``class_logits``."""
        box_encodings, class_logits = self.head(self.feature_maps(images, training=training), training=training)
        return {"box_encodings": box_encodings, "class_logits": class_logits}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        class_logits = tf.cast(y_pred["class_logits"], tf.float32)
        box_encodings = tf.cast(y_pred["box_encodings"], tf.float32)
        match = boxes.match_anchors(self.anchors, y["boxes"], y["classes"], positive_iou=MATCHED_THRESHOLD,
                                    negative_iou=UNMATCHED_THRESHOLD)
        labels = match["labels"]
        positive = tf.cast(labels >= 0, tf.float32)
        not_ignored = tf.cast(labels >= -1, tf.float32)
        num_positive = tf.maximum(losses.replica_sum(tf.reduce_sum(positive)), 1.0)

        # A positive anchor's class c is slot c + 1 behind a background slot, slot c without one.
        offset = 1 if self.BACKGROUND_CLASS else 0
        class_targets = tf.one_hot(tf.maximum(labels, 0) + offset, self.num_classes + offset) * positive[..., None]
        focal = sigmoid_focal_loss(class_targets, class_logits, self.FOCAL_ALPHA, self.FOCAL_GAMMA)
        class_loss = tf.reduce_sum(focal * not_ignored[..., None]) / num_positive

        box_targets = boxes.encode(match["matched_boxes"], self.anchors, BOX_CODER_SCALES)
        box_loss = tf.reduce_sum(huber_loss(box_targets, box_encodings, self.SMOOTH_L1_DELTA) * positive[..., None])
        box_loss = box_loss / (num_positive * BOX_CODE_SIZE)

        self.track_losses(class_loss=class_loss, box_loss=box_loss)
        return self.with_regularization(class_loss + box_loss)

    def background_scores(self, outputs):
        return tf.sigmoid(tf.cast(outputs["class_logits"][..., 0], tf.float32))

    def decode_boxes_and_scores(self, outputs):
        decoded = boxes.decode(tf.cast(outputs["box_encodings"], tf.float32), self.anchors, BOX_CODER_SCALES)
        scores = tf.sigmoid(tf.cast(outputs["class_logits"], tf.float32))
        return decoded, scores[..., 1:] if self.BACKGROUND_CLASS else scores
