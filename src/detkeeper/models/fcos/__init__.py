"""FCOS family; importing it registers `fcos_tiny` and `fcos`."""

from detkeeper.models.fcos.fcos import FCOS

__all__ = ["FCOS"]
