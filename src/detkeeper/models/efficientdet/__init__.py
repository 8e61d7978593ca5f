"""The TF OD API's EfficientDet (SSD + EfficientNet + BiFPN); importing it registers ``ssd_efficientdet``.

A package beside :mod:`detkeeper.models.ssd` rather than inside it: its backbone, neck and config
mapping are its own; what it shares with the SSD MobileNet families (anchors, the weight-shared
predictor, the meta-architecture's loss and decoding, zoo-checkpoint reading) it imports from there.
"""

from detkeeper.models.efficientdet.ssd_efficientdet import SsdEfficientDet

__all__ = ["SsdEfficientDet"]
