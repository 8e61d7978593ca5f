"""Why a pipeline.config field is not carried over to detkeeper, by field name.

Used by :func:`detkeeper.tfod.tracking.unmapped_notes` for the fields the mapping does not
read; the mapping states its own reasons for the fields it decides about.
"""

from __future__ import annotations

_MODEL_OWN = "fixed by the detkeeper model family (model.name)"
_ONE_DEVICE = "a multi-replica setting; detkeeper trains on one device"
_PIPELINE = "tf.data tuning; detkeeper's input pipeline sets its own"
_EVAL_LOOP = "detkeeper evaluates inside training, every evaluation.every_steps steps, on all of data.val"
_BOXES_ONLY = "detkeeper trains boxes only (no masks, keypoints, DensePose or tracking)"
_EXTRACTOR = ("a layer-construction detail of the API's network; detkeeper builds its own (keras.applications "
              "backbones, its FPN and heads)")

REASONS: dict[str, str] = {
    "box_coder": "box encoding is " + _MODEL_OWN,
    "matcher": "assigning targets to anchors or locations is " + _MODEL_OWN,
    "similarity_calculator": "assigning targets to anchors or locations is " + _MODEL_OWN,
    "anchor_generator": "anchors are " + _MODEL_OWN + " (3 scales x 3 aspect ratios per pyramid level)",
    "loss": "the losses are " + _MODEL_OWN,
    "classification_loss": "the losses are " + _MODEL_OWN,
    "localization_loss": "the losses are " + _MODEL_OWN,
    "conv_hyperparams": ("initializers, L2 regularizers and batch-norm settings are the detkeeper model's own; "
                         "for regularization see train.optimizer.weight_decay (decoupled, not an L2 loss)"),
    "inplace_batchnorm_update": "batch normalization is updated as Keras does",
    "freeze_batchnorm": "batch normalization is trained as Keras does",
    "encode_background_as_zeros": "detkeeper's class outputs are sigmoids with no background class",
    "add_background_class": "detkeeper's class outputs are sigmoids with no background class",
    "normalize_loss_by_num_matches": "loss normalization is " + _MODEL_OWN,
    "normalize_loc_loss_by_codesize": "loss normalization is " + _MODEL_OWN,
    "object_detection_task": "CenterNet's box-size and offset heads; FCOS has its own box head and losses",
    "object_center_params": "CenterNet's centre heatmap head; FCOS has its own class and centerness heads",
    "object_center_loss_weight": "CenterNet's heatmap loss weight; FCOS has its own losses",
    "min_box_overlap_iou": "CenterNet's heatmap radius rule; FCOS assigns locations its own way",
    "keypoint_estimation_task": _BOXES_ONLY,
    "mask_estimation_task": _BOXES_ONLY,
    "densepose_estimation_task": _BOXES_ONLY,
    "track_estimation_task": _BOXES_ONLY,
    "temporal_offset_task": _BOXES_ONLY,
    "load_instance_masks": _BOXES_ONLY,
    "mask_type": _BOXES_ONLY,
    "min_depth": _EXTRACTOR,
    "pad_to_multiple": _EXTRACTOR,
    "use_explicit_padding": _EXTRACTOR,
    "use_depthwise": _EXTRACTOR,
    "override_base_feature_extractor_hyperparams": _EXTRACTOR,
    "num_layers": _EXTRACTOR,
    "num_iterations": "BiFPN repeats; detkeeper's FPN is one top-down pass",
    "channel_means": "detkeeper's backbones normalize their own input, inside the model",
    "channel_stds": "detkeeper's backbones normalize their own input, inside the model",
    "bgr_ordering": "detkeeper's backbones take RGB",
    "sync_replicas": _ONE_DEVICE,
    "replicas_to_aggregate": _ONE_DEVICE,
    "startup_delay_steps": _ONE_DEVICE,
    "fine_tune_checkpoint_version": "the format of fine_tune_checkpoint, which is not read",
    "load_all_detection_checkpoint_vars": "goes with fine_tune_checkpoint, which is not read",
    "unpad_groundtruth_tensors": "detkeeper always pads boxes to data.max_boxes",
    "keep_checkpoint_every_n_hours": ("detkeeper keeps the best checkpoints by val_mAP (checkpoint.keep_best) "
                                      "and the latest (checkpoint.keep_last)"),
    "use_bfloat16": ("bfloat16 is for TPUs; detkeeper's train.mixed_precision is float16 with loss scaling "
                     "for GPUs: set it there when you train on one"),
    "freeze_variables": "detkeeper trains every variable",
    "update_trainable_variables": "detkeeper trains every variable",
    "add_regularization_loss": "detkeeper adds no L2 loss; see train.optimizer.weight_decay",
    "merge_multiple_label_boxes": "detkeeper keeps one class per box",
    "summarize_gradients": "detkeeper's TensorBoard logs losses, the learning rate and validation stats",
    "retain_original_images": "detkeeper's TensorBoard shows its own pictures of predictions",
    "num_visualizations": "detkeeper's TensorBoard shows its own pictures of predictions",
    "shuffle": "detkeeper always shuffles training data (a permutation per epoch from train.seed)",
    "num_epochs": "detkeeper trains train.steps steps, repeating the data, and evaluates each image once",
    "sample_1_of_n_examples": "detkeeper reads every example",
    "num_readers": _PIPELINE,
    "read_block_length": _PIPELINE,
    "shuffle_buffer_size": _PIPELINE,
    "filenames_shuffle_buffer_size": _PIPELINE,
    "num_parallel_batches": _PIPELINE,
    "num_prefetch_batches": _PIPELINE,
    "queue_capacity": _PIPELINE,
    "min_after_dequeue": _PIPELINE,
    "num_examples": _EVAL_LOOP,
    "eval_interval_secs": _EVAL_LOOP,
    "max_evals": _EVAL_LOOP,
    "batch_size": _EVAL_LOOP,
    "include_metrics_per_category": "detkeeper evaluate writes AP and AP50 per class in metrics.json",
    "all_metrics_per_category": "detkeeper evaluate writes AP and AP50 per class in metrics.json",
    "graph_rewriter": ("quantization-aware training is not available; `detkeeper export --tflite` writes a "
                       "dynamic-range int8 model after training"),
}


def reason_for(path: str, name: str) -> str:
    """The reason a field that the mapping did not read is not carried over."""
    if name.startswith(("first_stage_", "second_stage_")):
        return "a Faster R-CNN stage setting; detkeeper's RetinaNet is one-stage"
    if ".data_augmentation_options" in path and path.count(".") == 2:
        return augmentation_reason(name)
    return REASONS.get(name, "detkeeper has no equivalent setting")


def augmentation_reason(name: str) -> str:
    return ("detkeeper's training augmentation is flips, a quarter turn, scale jitter with a random crop and "
            f"colour jitter (data.augment); it has no {name}")
