"""The run config: one frozen dataclass per section, the single source of truth for every setting.

Each field carries a one-sentence `help` (the config reference is generated from it), its range
and, for filesystem paths, a `path` mark the loader uses to make it absolute. Checks that involve
more than one field live in each class's ``validate()``, which returns ``"key: message"`` strings
relative to the section. The classes are frozen so the config written into a run folder is
exactly the config the run used.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from detkeeper.config.validate import setting

SourceFormat = Literal["voc", "coco", "tfrecord", "synthetic"]

WEIGHTS_KEYWORDS = ("imagenet", "none")
"""Values of `model.backbone.weights` that are not paths."""

SPLITS = ("train", "val", "test")
"""The dataset splits a run config names, in the order they are read."""

STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
"""COCO's twelve box stats, in COCO's order: what every evaluation reports."""

MONITOR_STATS = (*STAT_NAMES, "latency_ms")
"""What a monitor may read: the COCO stats and the evaluation's latency. Here, not in evaluation,
so the schema can check monitor names without importing the layer above it."""

_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class BackboneConfig:
    """The feature extractor and where its starting weights come from."""

    name: str = setting("tiny", help="Backbone name known to the model registry.")
    weights: str = setting(
        "none",
        help='Starting weights: "imagenet", "none" (random init) or a path to a weights file.',
        path=True,
        path_keywords=WEIGHTS_KEYWORDS,
    )
    depth_multiplier: float = setting(
        1.0, help="Width multiplier of the TF OD API's MobileNetV2 (its depth_multiplier); 1.0 elsewhere.",
        gt=0, le=2)

    def validate(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name: expected a non-empty backbone name, got ''")
        if not self.weights:
            problems.append("weights: expected \"imagenet\", \"none\" or a path, got ''")
        return problems


@dataclass(frozen=True)
class NeckConfig:
    """The feature pyramid; unset values take the registered model's default."""

    channels: int | None = setting(None, help="Channels of every pyramid level.", ge=8)
    min_level: int | None = setting(None, help="Finest pyramid level (3 = stride 8).", ge=3, le=7)
    max_level: int | None = setting(None, help="Coarsest pyramid level (7 = stride 128).", ge=3, le=7)
    repeats: int | None = setting(None, help="BiFPN iterations; unset: the family's default.", ge=1)
    separable: bool | None = setting(
        None, help="3x3 convolutions are depthwise-separable (TF OD API FPN use_depthwise); unset: the family's.")

    def validate(self) -> list[str]:
        if self.min_level is not None and self.max_level is not None and self.min_level > self.max_level:
            return [f"max_level: expected >= min_level ({self.min_level}), got {self.max_level}"]
        return []


FcosAssigner = Literal["fcos", "atss"]
FcosClassificationLoss = Literal["focal", "quality_focal"]


@dataclass(frozen=True)
class HeadConfig:
    """The prediction head shared across pyramid levels; unset values take the model's default."""

    channels: int | None = setting(None, help="Channels of the head's hidden convolutions.", ge=8)
    convs: int | None = setting(None, help="Hidden 3x3 convolutions before each output.", ge=0, le=8)
    kernel_size: int | None = setting(
        None, help="Kernel side of the TF OD API SSD predictors' convolutions; unset: the family's default.",
        ge=1, le=7)
    share_tower: bool | None = setting(
        None, help="Box and class outputs share one tower (TF OD API share_prediction_tower); unset: the family's.")
    separable: bool | None = setting(
        None, help="Tower and outputs are depthwise-separable (TF OD API use_depthwise); unset: the family's.")
    assigner: FcosAssigner | None = setting(
        None,
        help=(
            "FCOS only: which locations train on which box. fcos: inside the box's center region, at "
            "the pyramid level its size range suits (the paper's); atss: per box, the 9 locations "
            "nearest its center on each level, kept where they lie inside it and their IoU with it "
            "(as square anchors of 8 strides) reaches the mean + std of those (Zhang et al. 2020); "
            "unset: fcos."
        ),
    )
    classification_loss: FcosClassificationLoss | None = setting(
        None,
        help=(
            "FCOS only: focal: focal loss on 0/1 class targets, plus a centerness branch that "
            "ranks detections with the class score; quality_focal: quality focal loss whose target is "
            "the predicted box's IoU with its object (Li et al. 2020), the class score alone ranks "
            "detections and the head has no centerness branch; unset: focal."
        ),
    )
    block: str | None = setting(
        None,
        help=(
            "Registered Keras layer used for each conv of the head towers, as 'package>ClassName' "
            "(see keras.saving.register_keras_serializable); built with (filters, name=...)."
        ),
    )

    def validate(self) -> list[str]:
        package, _, class_name = (self.block or "").rpartition(">")
        if self.block is not None and not (package and class_name):
            return [f"block: expected a registered layer name 'package>ClassName', got {self.block!r}"]
        return []


ResizeMode = Literal["pad", "stretch"]
ResizeMethod = Literal["antialias", "tf1_bilinear"]


@dataclass(frozen=True)
class ResizeConfig:
    """How every image becomes the model's square input, in training, evaluation and export alike."""

    mode: ResizeMode | None = setting(
        None,
        help=(
            "pad: keep the aspect ratio, long side to image_size, pad bottom and right; stretch: "
            "each side to image_size (the TF OD API's fixed_shape_resizer); unset: the model's own "
            "(pad for detkeeper's families, the zoo config's for the TF OD API ones)."
        ),
    )
    method: ResizeMethod | None = setting(
        None,
        help=(
            "antialias: bilinear with antialiasing; tf1_bilinear: TF1's resize_images bilinear (no "
            "antialiasing, no half-pixel centres), which TF OD API models were trained with; unset: "
            "the model's own (antialias for detkeeper's families, tf1_bilinear for the TF OD API ones)."
        ),
    )


InitFromParts = Literal["backbone", "backbone+neck", "all"]


@dataclass(frozen=True)
class InitFromConfig:
    """Where a new run's detector takes its starting weights from, and which parts of it."""

    path: str = setting(
        help=(
            "A run directory (its best checkpoint), one of its checkpoints "
            "(RUN/checkpoints/step-NNNNNNN) or an export directory."
        ),
        path=True,
    )
    include: InitFromParts = setting(
        "backbone+neck",
        help=(
            "Parts restored: backbone, backbone+neck, or all (the head too, where its variables "
            "have the same shape; a head for other classes keeps its new class output)."
        ),
    )

    def validate(self) -> list[str]:
        return [] if self.path else ["path: expected a run directory, checkpoint or export, got ''"]


@dataclass(frozen=True)
class ModelConfig:
    """Which detector to build and at what input size."""

    name: str = setting("retinanet_tiny", help="Detector name in the model registry.")
    image_size: int = setting(
        320,
        help="Square input side in pixels; images are resized to it as `resize` says.",
        ge=32,
    )
    resize: ResizeConfig = setting(
        default_factory=ResizeConfig, help="How images are resized to the square input."
    )
    backbone: BackboneConfig = setting(
        default_factory=BackboneConfig, help="The backbone network and its starting weights."
    )
    neck: NeckConfig = setting(default_factory=NeckConfig, help="Feature pyramid options.")
    head: HeadConfig = setting(default_factory=HeadConfig, help="Prediction head options.")
    preset: str | None = setting(
        None, help="keras-hub preset to build from (hub_* models only; needs network on first use)."
    )
    custom_objects_module: str | None = setting(
        None, help="Importable module that registers extra Keras-serializable layers, if any."
    )
    init_from: InitFromConfig | None = setting(
        None,
        help=(
            "Start training from another run's checkpoint or an export, matching variables by name "
            "and shape (fine-tuning); applied on a fresh start only, never on resume."
        ),
    )

    def validate(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name: expected a non-empty model name, got ''")
        if self.preset is not None and not self.name.startswith("hub_"):
            problems.append(f"preset: only keras-hub models (hub_*) build from a preset (name is "
                            f"{self.name!r}); expected null, got {self.preset!r}")
        if self.preset == "":
            problems.append("preset: expected a keras-hub preset name, handle or directory, got ''")
        module = self.custom_objects_module
        if module is not None and not _MODULE_NAME.match(module):
            problems.append(f"custom_objects_module: expected a dotted module name, got {module!r}")
        return problems


@dataclass(frozen=True)
class SourceConfig:
    """One data split: where it is stored and in which format."""

    format: SourceFormat = setting(help="Storage format of this split.")
    path: str = setting(
        help=(
            "voc: dataset root holding Annotations/, JPEGImages/ and ImageSets/; coco: the "
            "instances JSON file; tfrecord: a file, a glob or a comma-separated list of them; "
            "synthetic: the folder the built-in dataset is generated into."
        ),
        path=True,
    )
    split: str | None = setting(
        None,
        help="voc/synthetic: read ImageSets/Main/<split>.txt; null reads every annotation.",
    )
    images: str | None = setting(
        None, help="coco: the image folder; null means the JSON file's folder.", path=True
    )

    def patterns(self) -> list[str]:
        """The file patterns `path` names: tfrecord paths are comma-separated, others are one."""
        if self.format == "tfrecord":
            return [part.strip() for part in self.path.split(",")]
        return [self.path]

    def validate(self) -> list[str]:
        problems = []
        if not all(self.patterns()):
            problems.append(f"path: expected a non-empty path for every entry, got {self.path!r}")
        if self.split is not None and self.format not in ("voc", "synthetic"):
            problems.append(
                f"split: only voc and synthetic sources have splits (format is {self.format!r}); "
                f"expected null, got {self.split!r}"
            )
        if self.images is not None and self.format != "coco":
            problems.append(
                f"images: only coco sources take an image folder (format is {self.format!r}); "
                f"expected null, got {self.images!r}"
            )
        return problems


@dataclass(frozen=True)
class AugmentConfig:
    """Random training-time augmentation; evaluation never augments."""

    horizontal_flip: bool = setting(True, help="Flip half of the training images left to right.")
    vertical_flip: bool = setting(
        False, help="Flip half of the training images top to bottom (the TF OD API's random_vertical_flip): for "
                    "subjects with no up, such as cells, aerial or microscope images."
    )
    rotate_90: bool = setting(
        False, help="Turn half of the training images 90 degrees counter-clockwise (the TF OD API's "
                    "random_rotation90); with both flips on, each of the square's 8 symmetries is equally likely."
    )
    scale_jitter: tuple[float, float] = setting(
        (0.75, 1.25), help="Random zoom range [min, max]; [1, 1] disables it."
    )
    colour_jitter: float = setting(
        0.1,
        help="Strength of brightness/contrast/saturation/hue jitter; 0 disables it.",
        ge=0,
        le=1,
    )
    mosaic: float = setting(
        0.0,
        help="Probability that a training example is a mosaic of 4 images (YOLO's): its own and 3 random others, "
             "each augmented as above, a window of each in one quadrant of the canvas split at a random centre in "
             "its middle half; boxes less than a quarter visible are dropped. Up to 4x the boxes of one image: "
             "data.max_boxes truncates. 0 disables it.",
        ge=0,
        le=1,
    )

    def validate(self) -> list[str]:
        low, high = self.scale_jitter
        if not 0 < low <= high <= 4:
            expected = "[min, max] with 0 < min <= max <= 4"
            return [f"scale_jitter: expected {expected}, got {[low, high]}"]
        return []


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in procedurally generated shapes dataset."""

    num_train: int = setting(400, help="Number of generated training images.", ge=1)
    num_val: int = setting(100, help="Number of generated validation images.", ge=1)
    num_test: int = setting(100, help="Number of generated test images.", ge=1)
    image_size: int = setting(256, help="Side of each generated square image in pixels.", ge=64)
    max_objects: int = setting(6, help="Most shapes drawn in one image.", ge=1)
    seed: int = setting(0, help="Random seed; the same seed generates the same dataset.", ge=0)


@dataclass(frozen=True)
class DataConfig:
    """The dataset splits and how they are read and augmented."""

    train: SourceConfig | None = setting(None, help="The training split.")
    val: SourceConfig | None = setting(
        None, help="The validation split, evaluated during training to pick checkpoints."
    )
    test: SourceConfig | None = setting(None, help="The held-out test split, for final reports.")
    label_map: str | None = setting(
        None, help="Path to a label_map.pbtxt; null derives it from the train split.", path=True
    )
    bad_records: Literal["skip", "strict"] = setting(
        "skip", help="skip: drop unreadable records and report them; strict: stop at the first."
    )
    max_boxes: int = setting(100, help="Boxes kept per image after padding.", ge=1)
    augment: AugmentConfig = setting(
        default_factory=AugmentConfig, help="Training-time augmentation."
    )
    synthetic: SyntheticConfig = setting(
        default_factory=SyntheticConfig, help="Settings of the built-in synthetic dataset."
    )

    def validate(self) -> list[str]:
        sources = (self.train, self.val, self.test)
        uses_synthetic = any(source and source.format == "synthetic" for source in sources)
        if uses_synthetic and self.synthetic.max_objects > self.max_boxes:
            return [
                f"synthetic.max_objects: expected at most max_boxes ({self.max_boxes}), "
                f"got {self.synthetic.max_objects}"
            ]
        return []


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer and its hyperparameters."""

    name: Literal["sgd", "adam", "adamw"] = setting("sgd", help="Optimizer algorithm.")
    learning_rate: float = setting(0.01, help="Peak learning rate, reached after warmup.", gt=0)
    momentum: float = setting(0.9, help="SGD momentum; ignored by adam and adamw.", ge=0, lt=1)
    weight_decay: float = setting(0.0, help="Decoupled weight decay; 0 disables it.", ge=0)
    clipnorm: float | None = setting(
        10.0, help="Clip the gradients by their global norm, as the TF OD API does; null: no clipping.", gt=0
    )


@dataclass(frozen=True)
class ScheduleConfig:
    """How the learning rate changes over training."""

    name: Literal["constant", "cosine", "step"] = setting("cosine", help="Learning-rate schedule.")
    warmup_steps: int = setting(100, help="Steps of linear warmup from 0 to the peak rate.", ge=0)
    decay_rate: float = setting(
        0.1, help="step schedule: multiply the rate by this at each boundary.", gt=0, le=1
    )
    decay_steps: list[int] = setting(
        default_factory=list, help="step schedule: increasing step numbers where the rate decays."
    )

    def validate(self) -> list[str]:
        steps = self.decay_steps
        if any(step < 1 for step in steps) or any(a >= b for a, b in zip(steps, steps[1:])):
            return [f"decay_steps: expected strictly increasing positive steps, got {steps}"]
        return []


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    batch_size: int = setting(
        8, help="Images per training step: the global batch, split evenly over tf.distribute replicas.", ge=1
    )
    steps: int = setting(2000, help="Total training steps.", ge=1)
    seed: int = setting(0, help="Seed for weight init, shuffling and augmentation.", ge=0)
    optimizer: OptimizerConfig = setting(
        default_factory=OptimizerConfig, help="Optimizer and its hyperparameters."
    )
    schedule: ScheduleConfig = setting(
        default_factory=ScheduleConfig, help="Learning-rate schedule."
    )
    mixed_precision: bool = setting(False, help="Compute in float16 with float32 weights.")
    ema_decay: float | None = setting(
        None,
        help="Keep an exponential moving average of weights with this decay; null disables it.",
        gt=0,
        lt=1,
    )

    def validate(self) -> list[str]:
        warmup = self.schedule.warmup_steps
        if warmup > self.steps:
            return [f"schedule.warmup_steps: expected at most train.steps ({self.steps}): the rate would "
                    f"never reach its peak; got {warmup}"]
        return []


DistributeStrategy = Literal["default", "mirrored", "multi_worker", "tpu"]


@dataclass(frozen=True)
class DistributeConfig:
    """How training is spread over devices and machines with tf.distribute (docs/distributed.md).
    train.batch_size is the global batch, split evenly over the replicas; the learning rate is
    used as configured for that global batch, never scaled automatically."""

    strategy: DistributeStrategy = setting(
        "default",
        help=(
            "default: one device; mirrored: every GPU of this machine (or distribute.devices); "
            "multi_worker: several machines, each described by the TF_CONFIG environment variable; "
            "tpu: a Cloud TPU found by TPUClusterResolver."
        ),
    )
    devices: list[str] = setting(
        default_factory=list,
        help="mirrored: the devices to replicate over, e.g. [/gpu:0, /gpu:1]; empty uses every GPU, or the CPU.",
    )
    sync_batch_norm: bool = setting(
        True,
        help=(
            "With more than one replica, BatchNormalization normalises over the global batch and "
            "keeps identical moving statistics on every replica; false normalises each replica's "
            "slice alone and saves replica 0's statistics."
        ),
    )
    tpu: str | None = setting(
        None, help="tpu: the TPU name or grpc:// address for TPUClusterResolver; null reads the environment."
    )

    def validate(self) -> list[str]:
        problems = []
        if self.devices and self.strategy != "mirrored":
            problems.append(f"devices: only the mirrored strategy takes a device list (strategy is "
                            f"{self.strategy!r}); expected [], got {self.devices}")
        if any(not device for device in self.devices):
            problems.append(f"devices: expected device names such as /gpu:0, got {self.devices}")
        if len(set(self.devices)) != len(self.devices):
            problems.append(f"devices: expected each device once, got {self.devices}")
        if self.tpu is not None and self.strategy != "tpu":
            problems.append(f"tpu: only the tpu strategy takes a TPU address (strategy is {self.strategy!r}); "
                            f"expected null, got {self.tpu!r}")
        return problems


@dataclass(frozen=True)
class EvaluationConfig:
    """Periodic evaluation on the validation split."""

    every_steps: int = setting(
        500, help="Evaluate on the validation split every this many steps.", ge=1
    )
    monitor: str = setting(
        "val_mAP", help="Metric that ranks checkpoints and drives early stopping."
    )
    score_threshold: float = setting(
        0.05, help="Drop detections scoring below this before evaluation.", ge=0, le=1
    )
    iou_threshold: float = setting(
        0.5, help="IoU above which non-maximum suppression merges boxes.", gt=0, le=1
    )
    max_detections: int = setting(100, help="Most detections kept per image.", ge=1)
    weighted_monitors: dict[str, dict[str, float]] = setting(
        default_factory=dict,
        help=(
            "Extra metrics as weighted sums of COCO stats, logged as val_<name>, e.g. "
            "{score: {mAP50: 0.1, mAP: 0.9}} then monitor: val_score. Stats: "
            f"{', '.join(MONITOR_STATS)}."
        ),
    )

    def validate(self) -> list[str]:
        problems = [] if self.monitor else ["monitor: expected a metric name, got ''"]
        known = set(MONITOR_STATS)
        for name, weights in self.weighted_monitors.items():
            if not name.isidentifier():
                problems.append(f"weighted_monitors.{name}: expected a name made of letters, digits and _")
            if not weights:
                problems.append(f"weighted_monitors.{name}: expected at least one stat with a weight, got {{}}")
            for stat in sorted(set(weights) - known):
                problems.append(f"weighted_monitors.{name}.{stat}: unknown stat; expected one of "
                                f"{', '.join(sorted(known))}")
        return problems


@dataclass(frozen=True)
class CheckpointConfig:
    """Which checkpoints are kept on disk."""

    keep_best: int = setting(
        3, help="Keep this many checkpoints with the best monitored metric.", ge=1
    )
    keep_last: int = setting(
        2, help="Also keep this many most recent checkpoints, for resuming.", ge=1
    )
    mode: Literal["max", "min"] = setting(
        "max", help="max: a higher monitored metric is better; min: lower is better."
    )
    min_delta: float = setting(
        0.0, help="Changes neither the best checkpoint nor what is kept: the best is always the top of "
        "the ranking by evaluation.monitor (export, evaluate, checkpoints/best and the report use it). "
        "What counts as an improvement for patience is early_stopping.min_delta. Recorded in the "
        "ledger's policy; accepted so existing configs load.", ge=0
    )


@dataclass(frozen=True)
class EarlyStoppingConfig:
    """Stop training when the monitored metric stops improving."""

    enabled: bool = setting(True, help="Stop early when the monitored metric stops improving.")
    patience: int = setting(
        5, help="Evaluations without improvement before training stops.", ge=1
    )
    min_delta: float = setting(
        0.0, help="Smallest change of the metric that counts as an improvement.", ge=0
    )
    start_from: int = setting(0, help="Step before which early stopping never triggers.", ge=0)
    baseline: float | None = setting(
        None, help="Stop unless the metric beats this value within `patience` evaluations."
    )


@dataclass(frozen=True)
class ExportConfig:
    """The exported SavedModel's post-processing; null values inherit the evaluation settings."""

    score_threshold: float | None = setting(
        None, help="Drop detections scoring below this; null uses evaluation's.", ge=0, le=1
    )
    iou_threshold: float | None = setting(
        None, help="Non-maximum suppression IoU threshold; null uses evaluation's.", gt=0, le=1
    )
    max_detections: int | None = setting(
        None, help="Most detections per image; null uses evaluation's.", ge=1
    )
    verify: bool = setting(
        True, help="Reload the export in a fresh process and check it matches the checkpoint."
    )


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; saved resolved into the run folder."""

    run_dir: str = setting(
        "runs/default",
        help="Folder receiving checkpoints, logs and exports of this run.",
        path=True,
    )
    model: ModelConfig = setting(default_factory=ModelConfig, help="The detector.")
    data: DataConfig = setting(default_factory=DataConfig, help="The dataset.")
    train: TrainConfig = setting(default_factory=TrainConfig, help="The training loop.")
    evaluation: EvaluationConfig = setting(
        default_factory=EvaluationConfig, help="Periodic validation."
    )
    checkpoint: CheckpointConfig = setting(
        default_factory=CheckpointConfig, help="Checkpoint retention."
    )
    early_stopping: EarlyStoppingConfig = setting(
        default_factory=EarlyStoppingConfig, help="Early stopping."
    )
    export: ExportConfig = setting(default_factory=ExportConfig, help="SavedModel export.")
    distribute: DistributeConfig = setting(
        default_factory=DistributeConfig, help="Training on several devices or machines (tf.distribute)."
    )

    def validate(self) -> list[str]:
        # TensorFlow finds a checkpoint's files by a glob pattern made from its path
        # (``TensorSliceReader``): in a folder named with one of these, a saved checkpoint cannot be read back.
        wildcards = sorted(set(self.run_dir) & set("*?["))
        if wildcards:
            return [f"run_dir: {self.run_dir!r} contains {' '.join(wildcards)}, which TensorFlow reads as glob "
                    "wildcards in checkpoint paths, so the run's checkpoints could not be read back; choose a "
                    "folder name without * ? ["]
        return []
