"""TF OD API SSD families; importing it registers `ssd_mobilenet_v2_fpnlite` and `ssd_mobilenet_v2`."""

from detkeeper.models.ssd.ssd import SsdFpnLite
from detkeeper.models.ssd.ssd_mobilenet_v2 import SsdMobileNetV2

__all__ = ["SsdFpnLite", "SsdMobileNetV2"]
