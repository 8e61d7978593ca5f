"""TF OD API SSD families; importing it registers `ssd_mobilenet_v2_fpnlite`."""

from detkeeper.models.ssd.ssd import SsdFpnLite

__all__ = ["SsdFpnLite"]
