"""Warnings and messages that name what to do (FrozenBN at random init, missing synthetic data),
the warning filters importing lt_det leaves alone, the bounded per-class log summary, and the
class statistics --eval-only and the norm plot read (checkpoint prior, detectron2's builtin
LVIS)."""
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
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=1800
    )
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
    rows = {
        line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    }
    assert rows["all classes"][1:] == ["1203", "303", "1800"]
    assert rows["rare classes"][1:] == ["337", "303", str(2 * (900 - 866))]  # rare: 866..1202
    assert log_class_summary(dicts, names[:50], groups[:50]) is None  # detectron2's table kept
    f = BoundedClassHistogram(max_classes=100)
    rec = logging.LogRecord(
        "detectron2.data.build",
        logging.INFO,
        "",
        0,
        "Distribution of instances among all 1203 categories:\n|x|",
        None,
        None,
    )
    assert not f.filter(rec)
    rec.msg = "Distribution of instances among all 48 categories:\n|x|"
    assert f.filter(rec)


def test_eval_only_reads_the_prior_from_the_checkpoint(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from lt_det import add_lt_config
    from lt_det.engine import eval_only_config
    from lt_det.modeling.priors import class_prior_from_cfg

    def never_loaded():
        raise AssertionError("the training set was loaded to count a prior")

    if "lt_never_loaded" in DatasetCatalog.list():
        DatasetCatalog.remove("lt_never_loaded")
        MetadataCatalog.remove("lt_never_loaded")
    DatasetCatalog.register("lt_never_loaded", never_loaded)
    prior = torch.tensor([0.5, 0.25, 0.125])
    weights = tmp_path / "model_final.pth"
    torch.save({"model": {"roi_heads.box_predictor.cls_loss.class_prior": prior}}, weights)

    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.TRAIN = ("lt_never_loaded",)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "balanced_softmax"
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.freeze()
    eval_cfg = eval_only_config(cfg)
    assert eval_cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE == "checkpoint"
    assert cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE == "image_count"  # the run's config untouched
    assert torch.equal(class_prior_from_cfg(eval_cfg), prior)
    # A checkpoint without a prior (or a loss without one) keeps the configured source.
    torch.save({"model": {}}, weights)
    assert eval_only_config(cfg).MODEL.ROI_BOX_HEAD.PRIOR.SOURCE == "image_count"


def test_missing_synthetic_data_names_the_data_command(tmp_path, monkeypatch):
    from lt_det.engine import load_config
    from lt_det.engine.defaults import check_dataset_files
    from lt_det.errors import LTDetError

    monkeypatch.chdir(tmp_path)  # no datasets/ here
    cfg = load_config(os.path.join(ROOT, "configs", "synthetic", "rfs.yaml"))
    with pytest.raises(LTDetError) as e:
        check_dataset_files(cfg)
    msg = str(e.value)
    assert "datasets/lt_synth/lvis_v1_train.json" in msg and str(tmp_path) in msg
    assert "python tools/make_synthetic_lvis.py --out datasets/lt_synth" in msg


def test_norm_plot_frequencies_of_detectron2_builtin_lvis(tmp_path, monkeypatch):
    import json

    from detectron2.data import MetadataCatalog

    from lt_det.errors import LTDetError
    from lt_det.evaluation.classifier_norms import frequencies_from_metadata

    info = [{"id": i, "image_count": i % 300, "instance_count": i} for i in range(1, 1204)]
    path = tmp_path / "cat_info.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("LT_DET_LVIS_CAT_INFO", str(path))
    # detectron2 after v0.6 puts LVIS v1's own image counts in its builtin metadata; 0.6 does not,
    # and lt_det reads the cat_info file then.
    builtin = MetadataCatalog.get("lvis_v1_train").get("class_image_count", None)
    counts, groups = frequencies_from_metadata("lvis_v1_train")  # detectron2's builtin name
    if builtin is not None:
        assert counts == [int(c["image_count"]) for c in builtin] and len(counts) == 1203
        assert groups.count("r") + groups.count("c") + groups.count("f") == 1203
        monkeypatch.setenv("LT_DET_LVIS_CAT_INFO", str(tmp_path / "absent.json"))
        assert frequencies_from_metadata("lvis_v1_train")[0] == counts  # no file needed
    else:
        assert counts == [i % 300 for i in range(1, 1204)]
        assert groups[:3] == ["r", "r", "r"] and groups[199] == "f" and groups[49] == "c"
        monkeypatch.setenv("LT_DET_LVIS_CAT_INFO", str(tmp_path / "absent.json"))
        monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
        # Neither the cat_info file nor the json under DETECTRON2_DATASETS: say what to do.
        with pytest.raises(LTDetError, match="DETECTRON2_DATASETS"):
            frequencies_from_metadata("lvis_v1_train")
    with pytest.raises(LTDetError, match="is not registered"):
        frequencies_from_metadata("no_such_dataset")
