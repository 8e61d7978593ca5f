"""``train_config.data_augmentation_options`` as ``data.augment``.

Part of :mod:`detkeeper.tfod.training`: the TF OD API's augmentation steps that detkeeper has
exactly (flips, the quarter turn), those it approximates (zoom ranges and crops as one scale jitter,
colour steps as one strength) and, noted with their reason, the rest.
"""

from __future__ import annotations

from typing import Any

from detkeeper.tfod.reasons import augmentation_reason
from detkeeper.tfod.tracking import Node

_CROPS = ("ssd_random_crop", "random_crop_image", "random_crop_pad_image", "ssd_random_crop_pad",
          "ssd_random_crop_fixed_aspect_ratio", "ssd_random_crop_pad_fixed_aspect_ratio",
          "random_crop_to_aspect_ratio")
CROP_ZOOM = [1.0, 2.0]
# Strength of detkeeper's colour jitter (brightness +-s/2, contrast and saturation 1+-s, hue +-s/10)
# that reaches each TF OD API colour step at its proto defaults or given values.
_COLOUR = ("random_adjust_brightness", "random_adjust_contrast", "random_adjust_saturation",
           "random_adjust_hue", "random_distort_color")


#: The TF OD API's flip and quarter-turn steps that data.augment has exactly (probability 1/2 each).
_SYMMETRIES = {"random_vertical_flip": "vertical_flip", "random_rotation90": "rotate_90"}


def map_augmentation(steps: list[Node], config: Node, image_size: int) -> dict[str, Any]:
    """``train_config.data_augmentation_options`` -> ``data.augment``: the flips and the quarter turn
    exactly, the zoom ranges as their union, the colour steps as one strength."""
    track = config.tracker
    flip, ranges, colour, colour_sources, range_sources = False, [], 0.0, [], []
    symmetries = {"vertical_flip": False, "rotate_90": False}
    for step in steps:
        name, op = step.oneof("augmentation step")
        if name in _SYMMETRIES:
            key = _SYMMETRIES[name]
            symmetries[key] = True
            noted = [field for field in ("keypoint_flip_permutation", "keypoint_rot_permutation") if op.has(field)]
            for field in noted:
                op.note(field, "detkeeper trains boxes only")
            if op.number("probability", 0.5) != 0.5:
                noted.append("probability")
                op.note("probability", f"detkeeper's data.augment.{key} applies with probability 0.5")
            if not noted:
                step.use(name)
            track.map(step.at(name), f"data.augment.{key}", True)
        elif name == "random_horizontal_flip":
            flip = True
            if op.has("keypoint_flip_permutation"):
                op.note("keypoint_flip_permutation", "detkeeper trains boxes only")
            else:
                step.use(name)
            track.map(step.at(name), "data.augment.horizontal_flip", True)
        elif name in ("random_scale_crop_and_pad_to_square", "random_image_scale"):
            low_name, high_name, low, high = (("scale_min", "scale_max", 0.1, 2.0) if name.endswith("square")
                                              else ("min_scale_ratio", "max_scale_ratio", 0.5, 2.0))
            ranges.append((op.number(low_name, low), op.number(high_name, high)))
            range_sources.append(step.at(name))
            if op.peek("output_size") == image_size:
                op.use("output_size")
            else:
                op.note("output_size", f"detkeeper crops and pads to model.image_size ({image_size})")
        elif name in _CROPS:
            ranges.append(tuple(CROP_ZOOM))
            range_sources.append(step.at(name))
            step.note(name, f"approximated by data.augment.scale_jitter {CROP_ZOOM}: a zoom of up to 2x with a "
                            "random window; detkeeper's crop keeps no object-coverage, aspect-ratio or area limits")
        elif name in _COLOUR:
            colour = max(colour, _colour_strength(name, op))
            colour_sources.append(step.at(name))
            step.use(name)
        else:
            step.note(name, augmentation_reason(name))
    low = max(min((low for low, _ in ranges), default=1.0), 0.05)
    high = min(max((high for _, high in ranges), default=1.0), 4.0)
    augment = {"horizontal_flip": flip, "scale_jitter": [low, high], "colour_jitter": round(min(colour, 1.0), 3),
               **{key: True for key, wanted in symmetries.items() if wanted}}  # off by default: said when on
    where = config.at("data_augmentation_options")
    if not flip:
        track.map(where, "data.augment.horizontal_flip", False, "no random_horizontal_flip in the pipeline")
    track.map(" + ".join(range_sources) or where, "data.augment.scale_jitter", augment["scale_jitter"],
              "the union of the zoom ranges" if range_sources else "no scale or crop step in the pipeline")
    track.map(" + ".join(colour_sources) or where, "data.augment.colour_jitter", augment["colour_jitter"],
              "approximation: one strength for brightness, contrast, saturation and hue, the strongest step's"
              if colour_sources else "no colour step in the pipeline")
    return augment


def _colour_strength(name: str, op: Node) -> float:
    if name == "random_adjust_brightness":
        return 2 * op.number("max_delta", 0.2)
    if name == "random_adjust_hue":
        return 10 * op.number("max_delta", 0.02)
    if name in ("random_adjust_contrast", "random_adjust_saturation"):
        return max(1 - op.number("min_delta", 0.8), op.number("max_delta", 1.25) - 1)
    return 0.5  # random_distort_color: saturation and contrast 0.5..1.5
