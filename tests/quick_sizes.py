"""Smaller sizes for the families whose defaults are slow to trace, in the tests that build and
train every registered model on a tiny backbone (what those tests check does not depend on them)."""

from __future__ import annotations

import dataclasses

#: 64 channels and one conv per tower, for the pyramid families whose defaults are wider and deeper.
NARROW = {"neck": {"channels": 64}, "head": {"channels": 64, "convs": 1}}
#: ``model`` sections' overrides by family: EfficientDet's three BiFPN passes and three-conv towers
#: cost about twice another family's tracing time; one pass and one conv, about the same. The full
#: FCOS and RetinaNet and SSD FPN-lite (128 channels, four-conv towers) and the SSD ResNet FPN (a
#: 256-wide pyramid, four-conv towers of regular convolutions) take NARROW.
QUICK_SIZES = {"ssd_efficientdet": {"neck": {"repeats": 1}, "head": {"convs": 1}},
               "fcos": NARROW, "retinanet": NARROW, "ssd_mobilenet_v2_fpnlite": NARROW, "ssd_resnet_v1_fpn": NARROW}


def quick(config):
    """`config` (a ``ModelConfig``) with its family's :data:`QUICK_SIZES` applied."""
    for section, values in QUICK_SIZES.get(config.name, {}).items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})
    return config
