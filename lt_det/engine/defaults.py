"""Config set-up shared by the command-line tools."""
import os
from typing import List, Optional

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import default_setup

from ..config import add_lt_config
from ..data import register_datasets_from_cfg
from ..errors import LTDetError

__all__ = ["load_config", "setup_cfg", "check_num_classes"]


def load_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """detectron2 config + lt_det keys, merged from ``config_file`` and ``KEY VALUE`` overrides.

    Raises :class:`LTDetError` for a missing file or an unknown key.
    """
    cfg = add_lt_config(get_cfg())
    if not os.path.isfile(config_file):
        raise LTDetError(f"config file not found: '{config_file}'.")
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except KeyError as e:
        raise LTDetError(
            f"'{config_file}' (or a KEY VALUE override) sets a key detectron2 and lt_det do not "
            f"have: {e.args[0]}. Check the spelling against lt_det/config.py."
        ) from None
    except ValueError as e:
        raise LTDetError(f"'{config_file}': {e}") from None
    return cfg


def setup_cfg(args) -> CfgNode:
    """Load, freeze and register datasets; then detectron2's ``default_setup`` (logging, seeds)."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    register_datasets_from_cfg(cfg)
    check_num_classes(cfg)
    default_setup(cfg, args)
    return cfg


def check_num_classes(cfg: CfgNode) -> None:
    """``MODEL.ROI_HEADS.NUM_CLASSES`` must equal the class count of every configured dataset."""
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != k:
            raise LTDetError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {k} but dataset '{name}' has {len(classes)} "
                f"classes. Set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}."
            )
