"""lt_det: long-tailed object detection and instance segmentation on Detectron2."""
from .config import add_lt_config

__version__ = "0.1.0"

__all__ = ["add_lt_config"]
