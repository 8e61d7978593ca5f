"""RetinaNet family; importing it registers `retinanet_tiny` and `retinanet`."""

from detkeeper.models.retinanet.retinanet import RetinaNet

__all__ = ["RetinaNet"]
