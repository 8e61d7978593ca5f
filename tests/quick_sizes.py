"""Smaller sizes for the families whose defaults are slow to trace, in the tests that build and
train every registered model on a tiny backbone (what those tests check does not depend on them)."""

from __future__ import annotations

import dataclasses

#: ``model`` sections' overrides by family: EfficientDet's three BiFPN passes and three-conv towers
#: cost about twice another family's tracing time; one pass and one conv, about the same.
QUICK_SIZES = {"ssd_efficientdet": {"neck": {"repeats": 1}, "head": {"convs": 1}},
               # RetinaNet's 256-wide FPN and two four-conv towers of regular convolutions: FPN-lite's cost
               # at 64 channels and one conv per tower.
               "ssd_resnet_v1_fpn": {"neck": {"channels": 64}, "head": {"channels": 64, "convs": 1}}}


def quick(config):
    """`config` (a ``ModelConfig``) with its family's :data:`QUICK_SIZES` applied."""
    for section, values in QUICK_SIZES.get(config.name, {}).items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})
    return config
