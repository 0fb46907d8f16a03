"""What a user meets in the first hour: warnings that name the way out, logs, tool help."""
import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_frozen_bn_at_random_init_is_named(caplog):
    from lt_det.engine.init_check import untrained_frozen_bn, warn_frozen_bn_at_random_init

    model = nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.BatchNorm2d(4))
    with caplog.at_level(logging.WARNING, logger="lt_det.engine.init_check"):
        assert warn_frozen_bn_at_random_init(model, "") == ["1"]
    assert 'MODEL.WEIGHTS ""' in caplog.text and '"GN"' in caplog.text
    # Loaded statistics (any channel differs from the initial values): nothing to say.
    model[1].running_var[2] = 0.5
    assert untrained_frozen_bn(model) == []
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lt_det.engine.init_check"):
        assert warn_frozen_bn_at_random_init(model, "r50.pkl") == []
    assert caplog.text == ""


def test_importing_lt_det_leaves_warning_filters_alone():
    # The tools filter detectron2's torch.jit deprecation themselves; the library must not
    # hide it (or anything else) from the user's own program.
    code = (
        "import warnings; before = list(warnings.filters); import lt_det; "
        "print([f[1].pattern for f in warnings.filters if f not in before and f[1]])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "script" not in out.stdout


def test_class_summary_is_bounded():
    from lt_det.engine.log_setup import BoundedClassHistogram, log_class_summary

    k = 1203
    names = [f"class_{i}" for i in range(k)]
    groups = ["f"] * 405 + ["c"] * 461 + ["r"] * 337
    # two images with one instance each of classes 0..899; classes 900..1202 have none
    dicts = [{"annotations": [{"category_id": c}]} for c in range(900) for _ in range(2)]
    text = log_class_summary(dicts, names, groups, extremes=5)
    assert len(text.splitlines()) <= 1 + 2 + 4 + 2  # title, header, 4 rows, most, least
    rows = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")}
    assert rows["all classes"][1:] == ["1203", "303", "1800"]
    assert rows["rare classes"][1:] == ["337", "303", str(2 * (900 - 866))]  # rare: 866..1202
    assert log_class_summary(dicts, names[:50], groups[:50]) is None  # detectron2's table kept
    f = BoundedClassHistogram(max_classes=100)
    rec = logging.LogRecord("detectron2.data.build", logging.INFO, "", 0,
                            "Distribution of instances among all 1203 categories:\n|x|", None, None)
    assert not f.filter(rec)
    rec.msg = "Distribution of instances among all 48 categories:\n|x|"
    assert f.filter(rec)
