"""The serving module: what an exported SavedModel is, as the TF Object Detection API shapes it.

``tf.saved_model.load(path)(uint8_images)`` returns the eight float32 outputs of the TF OD API
exporter's ``serving_default`` (``exporter_lib_v2``, after ``SSDMetaArch.postprocess``), with
``N`` = max detections, ``A`` = anchors (for FCOS: locations) and ``C`` = classes:

- ``detection_boxes`` ``[B, N, 4]`` (ymin, xmin, ymax, xmax) normalized to each original image,
  ``detection_scores`` ``[B, N]``, ``detection_classes`` ``[B, N]`` label-map ids (1-based, as
  the TF OD API returns them; 0 in padding rows) and ``num_detections`` ``[B]``;
- ``raw_detection_boxes`` ``[B, A, 4]``: every anchor's decoded box before NMS, normalized to the
  original image like ``detection_boxes`` but not clipped (rows of anchors over the padding lie
  past 1);
- ``raw_detection_scores`` ``[B, A, C]``: every anchor's per-class scores before NMS (what NMS
  ranks: sigmoid probabilities; FCOS: ``sqrt(class * centerness)``);
- ``detection_multiclass_scores`` ``[B, N, C]``: the ``raw_detection_scores`` row of the anchor
  each detection came from; ``detection_anchor_indices`` ``[B, N]``: that anchor's index (0 in
  padding rows, as the TF OD API pads). So ``detection_scores[i]`` is
  ``detection_multiclass_scores[i, c]`` for the detection's class column ``c`` and
  ``detection_boxes[i]`` is ``raw_detection_boxes[anchor]`` clipped to the image.

Column ``c`` of the score outputs is the label map's ``c``-th class (id ``c + 1`` for ids
1..C): detkeeper's own detectors have no background logit, so there is no background column, as
in the TF OD API's exports of models without one (``add_background_class: false``, e.g.
EfficientDet). The TF OD API families with a background class (``Detector.BACKGROUND_CLASS``, the
SSDs) have ``C + 1`` columns, column 0 the background, as the API's exports of them; the
metadata's ``score_columns`` lists the label-map id of each column (0: background). The API's EfficientDet export gives its raw boxes relative to the padded model
input; here they are relative to the original image, the frame of ``detection_boxes``.

Preprocessing (the evaluation pipeline's own resize, ``model.resize``: aspect ratio kept and padded,
or stretched) and NMS are in the graph, so the SavedModel needs nothing but TensorFlow. NMS is
``Detector.postprocess``'s, with each image's window the resized photo inside its canvas: a TF OD
API family drops a detection that lies wholly in the padding, as the API's exporter does.

Signatures (each takes ``input_tensor``, as TF OD API exports do):
``serving_default`` uint8 ``[B, H, W, 3]`` (any size and batch), ``encoded_image_string_tensor``
string ``[B]`` (JPEG/PNG/BMP/GIF bytes, each its own size), ``tf_example`` string ``[B]``
(serialized ``tf.train.Example`` with ``image/encoded``), and ``metadata`` (no input: the
``metadata.json`` and ``label_map.pbtxt`` texts).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from detkeeper.data import augment
from detkeeper.data.image_format import decode_rgb
from detkeeper.data.label_map import LabelMap
from detkeeper.errors import DetkeeperError
from detkeeper.models import boxes as box_ops

#: The detections every detection SavedModel has (detkeeper exports before the raw outputs too).
DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
#: Every output's shape (all float32): B images, N max detections, A anchors, C classes.
OUTPUT_LAYOUT = {
    "detection_boxes": ("B", "N", 4), "detection_scores": ("B", "N"), "detection_classes": ("B", "N"),
    "num_detections": ("B",), "raw_detection_boxes": ("B", "A", 4), "raw_detection_scores": ("B", "A", "C"),
    "detection_multiclass_scores": ("B", "N", "C"), "detection_anchor_indices": ("B", "N"),
}
#: Everything ``serving_default`` returns: the TF OD API exporter's eight outputs.
OUTPUT_KEYS = tuple(OUTPUT_LAYOUT)
SIGNATURES = ("serving_default", "encoded_image_string_tensor", "tf_example", "metadata")


@dataclasses.dataclass(frozen=True)
class ServingSettings:
    """Post-processing recorded in the export (defaults: the run's ``evaluation`` section)."""

    score_threshold: float
    iou_threshold: float
    max_detections: int

    def validate(self) -> None:
        if not 0.0 <= self.score_threshold < 1.0:
            raise DetkeeperError(f"score threshold: expected 0 <= value < 1, got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise DetkeeperError(f"IoU threshold: expected 0 < value <= 1, got {self.iou_threshold}")
        if self.max_detections < 1:
            raise DetkeeperError(f"max detections: expected at least 1, got {self.max_detections}")


class DetectionModule(tf.Module):
    """A detector with its preprocessing, NMS and label map, ready for ``tf.saved_model.save``.

    ``self.model`` is the Keras detector, so the SavedModel's ``variables/`` read as a checkpoint
    with the same ``model/...`` keys as training checkpoints (fine-tuning from an export uses it).
    `asset_paths` maps asset names (``label_map.pbtxt``, ``config.yaml``, ``metadata.json``) to
    files copied into the SavedModel's ``assets/``."""

    def __init__(self, model, label_map: LabelMap, settings: ServingSettings, metadata_json: str,
                 asset_paths: dict[str, str] | None = None) -> None:
        super().__init__(name="detkeeper_detection_module")
        self.model = model
        self.image_size = int(model.image_size)
        self.resize = augment.Resize.of(model)
        self.settings = settings
        self.label_ids = tf.constant([0.0] + [float(i) for i in label_map.ids], tf.float32)  # index + 1 -> id
        self.metadata_text = tf.constant(metadata_json)
        self.label_map_text = tf.constant(label_map.to_pbtxt())
        self.assets = {name.replace(".", "_"): tf.saved_model.Asset(path)
                       for name, path in (asset_paths or {}).items()}
        # One traced function for the model, decoding and NMS that every image signature calls: the
        # detector is traced, saved and loaded once instead of once per signature.
        self.detect_canvases = tf.function(self._detect, autograph=False, input_signature=[
            tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32),
            tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 2], tf.float32)])

    # -- the graph -------------------------------------------------------------------------------
    def _preprocess_one(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One uint8 ``[H, W, 3]`` image -> model canvas, ``[fy, fx]`` factors, ``[H, W]``."""
        image = tf.cast(image, tf.float32)
        size = tf.shape(image)[:2]
        canvas, _, _, factors = augment.resize_for_model(image, tf.zeros([0, 4]), self.image_size, self.resize)
        canvas = tf.ensure_shape(canvas, [self.image_size, self.image_size, 3])
        return canvas, factors, tf.cast(size, tf.float32)

    def _detect(self, canvases: tf.Tensor, factors: tf.Tensor, sizes: tf.Tensor) -> dict:
        outputs = self.model(canvases, training=False)
        candidate_boxes, probabilities = self.model.decode_boxes_and_scores(outputs)
        candidate_boxes, probabilities = tf.cast(candidate_boxes, tf.float32), tf.cast(probabilities, tf.float32)
        # As Detector.postprocess, each image's window the resized photo inside its canvas.
        clipping = self.model.nms_clipping(box_ops.content_windows(factors, sizes), tf.shape(canvases)[0])
        found = box_ops.batched_nms(candidate_boxes, probabilities, max_detections=self.settings.max_detections,
                                    iou_threshold=self.settings.iou_threshold,
                                    score_threshold=self.settings.score_threshold, **clipping)
        anchors = kept_anchor_indices(candidate_boxes, probabilities, found, clipping)
        limits = tf.maximum(tf.tile(sizes, [1, 2])[:, None, :], 1.0)  # normalizes; never divides by 0
        original = box_ops.to_original_pixels(found["boxes"], factors, sizes)
        real = found["classes"] >= 0
        normalized = tf.where(real[..., None], original / limits, 0.0)
        kept = tf.maximum(anchors, 0)
        columns = probabilities  # and the background's first, where the model has one (as the API's exports)
        if self.model.BACKGROUND_CLASS:
            columns = tf.concat([tf.cast(self.model.background_scores(outputs), tf.float32)[..., None], columns], -1)
        return {
            "detection_boxes": normalized,
            "detection_scores": tf.where(real, found["scores"], 0.0),
            "detection_classes": tf.gather(self.label_ids, tf.where(real, found["classes"] + 1, 0)),
            "num_detections": tf.cast(found["num_detections"], tf.float32),
            "raw_detection_boxes": box_ops.to_original_pixels(candidate_boxes, factors) / limits,
            "raw_detection_scores": columns,
            "detection_multiclass_scores": tf.where(real[..., None], tf.gather(columns, kept, batch_dims=1), 0.0),
            "detection_anchor_indices": tf.cast(tf.where(real, anchors, 0), tf.float32),
        }

    def _detect_images(self, images: tf.Tensor) -> dict:
        """Images of one size ``[B, H, W, 3]`` uint8."""
        canvases, factors, sizes = tf.map_fn(
            self._preprocess_one, images, fn_output_signature=(
                tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
                tf.TensorSpec([2], tf.float32), tf.TensorSpec([2], tf.float32)))
        return self.detect_canvases(canvases, factors, sizes)

    def _detect_encoded(self, encoded: tf.Tensor) -> dict:
        """Encoded images ``[B]``, each decoded and resized on its own (sizes may differ)."""
        def preprocess(data):
            return self._preprocess_one(decode_rgb(data))

        canvases, factors, sizes = tf.map_fn(
            preprocess, encoded, fn_output_signature=(
                tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
                tf.TensorSpec([2], tf.float32), tf.TensorSpec([2], tf.float32)))
        return self.detect_canvases(canvases, factors, sizes)

    # -- the endpoints -------------------------------------------------------------------------
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="input_tensor")],
                 autograph=False)
    def __call__(self, input_tensor):
        return self._detect_images(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="input_tensor")], autograph=False)
    def detect_encoded_images(self, input_tensor):
        return self._detect_encoded(input_tensor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="input_tensor")], autograph=False)
    def detect_tf_examples(self, input_tensor):
        features = tf.io.parse_example(input_tensor, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
        return self._detect_encoded(features["image/encoded"])

    @tf.function(input_signature=[], autograph=False)
    def metadata(self):
        return {"metadata": self.metadata_text, "label_map": self.label_map_text}

    def signatures(self) -> dict:
        """The signatures as functions, for ``tf.saved_model.save`` to trace inside its save context:
        concrete functions traced before it are traced again there, and both copies were saved (every
        serving function twice in the SavedModel, each traced twice by the export)."""
        return {
            "serving_default": self.__call__,
            "encoded_image_string_tensor": self.detect_encoded_images,
            "tf_example": self.detect_tf_examples,
            "metadata": self.metadata,
        }


def kept_anchor_indices(boxes: tf.Tensor, scores: tf.Tensor, found: dict, clipping: dict) -> tf.Tensor:
    """The anchor each detection of ``box_ops.batched_nms(boxes, scores, **clipping)`` came from,
    ``[B, N]`` int32 (-1 in padding rows).

    ``combined_non_max_suppression`` returns no indices, and NMS rebuilt from per-class
    ``non_max_suppression`` calls would order equal scores differently (an image's zero padding
    gives many), so the detections could change. Instead the detections stay as they are and each
    is traced back: NMS copies the kept (clipped) box and score bit for bit, so the anchor is the
    one whose clipped box and score for the detection's class are exactly the detection's. Two
    anchors agree on both only if they clip to the same box with the same score (NMS keeps both
    only if they differ outside the clip window, with equal float32 scores); the lowest index is
    taken. Costs ``B x A x N`` comparisons."""
    clipped = box_ops.clipped_as_nms_returns(boxes, **clipping)
    classes = found["classes"]
    class_scores = tf.gather(scores, tf.maximum(classes, 0), axis=2, batch_dims=1)  # [B, A, N]
    same = tf.equal(class_scores, found["scores"][:, None, :])
    for coordinate in range(4):
        same &= tf.equal(clipped[:, :, coordinate, None], found["boxes"][:, None, :, coordinate])
    positions = tf.range(tf.shape(boxes)[1], dtype=tf.int32)[None, :, None]
    lowest = tf.reduce_min(tf.where(same, positions, tf.int32.max), axis=1)  # [B, N]
    return tf.where((classes >= 0) & (lowest < tf.int32.max), lowest, -1)
