"""TF OD API SSD families; importing it registers `ssd_mobilenet_v2_fpnlite`, `ssd_mobilenet_v2` and
`ssd_resnet_v1_fpn`."""

from detkeeper.models.ssd.ssd import SsdFpnLite
from detkeeper.models.ssd.ssd_mobilenet_v2 import SsdMobileNetV2
from detkeeper.models.ssd.ssd_resnet_fpn import SsdResNetFpn

__all__ = ["SsdFpnLite", "SsdMobileNetV2", "SsdResNetFpn"]
