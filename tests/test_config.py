"""Config keys: every key is commented, every yaml under configs/ parses, bad keys fail clearly."""
import glob
import os
import re

import pytest
from detectron2.config import get_cfg

from lt_det import add_lt_config
from lt_det.engine import load_config
from lt_det.errors import LTDetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def test_add_lt_config_is_idempotent_and_adds_no_top_level_key():
    base = set(get_cfg().keys())
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "balanced_softmax"
    add_lt_config(cfg)
    assert cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS == "balanced_softmax"
    assert set(cfg.keys()) == base


def test_every_key_has_a_comment():
    src = open(os.path.join(ROOT, "lt_det", "config.py")).read().splitlines()
    for i, line in enumerate(src):
        m = re.match(r"\s*_C\.([A-Z_.]+) = (?!CN\(\))", line)
        if m:
            above = src[i - 1].strip()
            assert above.startswith("#"), f"config key {m.group(1)} has no comment above it"


def test_there_are_configs():
    names = {os.path.relpath(p, ROOT) for p in CONFIGS}
    assert "configs/lvis_balanced.yaml" in names
    assert any(n.startswith("configs/synthetic/") for n in names)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_yaml_parses(path):
    cfg = load_config(path)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES > 0


def test_unknown_key_and_missing_file_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  ROI_BOX_HEAD:\n    CLS_LOSSS: softmax_ce\n")
    with pytest.raises(LTDetError, match="CLS_LOSSS"):
        load_config(str(bad))
    with pytest.raises(LTDetError, match="config file not found"):
        load_config(str(tmp_path / "none.yaml"))
