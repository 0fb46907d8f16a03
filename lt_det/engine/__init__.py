"""Training entry points: LTTrainer and a CPU-capable launch."""
from .defaults import load_config, setup_cfg
from .launch import launch
from .trainer import LTTrainer

__all__ = ["LTTrainer", "launch", "load_config", "setup_cfg"]
