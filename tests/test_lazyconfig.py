"""LazyConfig (``configs/lazy/*.py``) as a first-class path: every recipe trains 2 iterations and
is evaluated on tiny data by tools/train_net.py, the stage-2 recipe also by detectron2's own
tools/lazyconfig_train_net.py; the recipes say what their yaml twins say; detectron2's predictor
flags that lt_det cannot honour are refused; LTStandardROIHeads refuses a predictor that is not
lt_det's; the class prior needs no yaml config."""
import glob
import json
import math
import os
import subprocess
import sys
import tarfile
from collections import Counter

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import FastRCNNOutputLayers

from lt_det.config import add_lt_config
from lt_det.engine.defaults import load_config
from lt_det.engine.lazy import check_lazy_datasets, load_lazy_config, register_lazy_datasets
from lt_det.errors import ERROR_PREFIX, LTDetError
from lt_det.modeling import LTCascadeROIHeads, LTFastRCNNOutputLayers
from lt_det.modeling.box_predictor import check_detectron2_cls_options
from lt_det.modeling.losses import cls_loss_class
from lt_det.modeling.priors import class_prior_from_cfg, class_prior_from_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAZY = os.path.join(ROOT, "configs", "lazy")
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(LAZY, "*.py")))
STAGE1, STAGE2 = "lvis_rfs.py", "lvis_stage2_crt.py"
# detectron2 main's source snapshot (the Makefile's D2MAIN_SOURCE): tools/lazyconfig_train_net.py
D2MAIN_SOURCE = os.environ.get(
    "D2MAIN_SOURCE", os.path.join(ROOT, "..", "shared", "vendor", "detectron2-02b5c4e.tar.gz")
)
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _quote(s: str) -> str:
    return "'" + str(s) + "'"


def tiny_overrides(tiny_lvis, out) -> list:
    """``path.key=value`` overrides that run a recipe on the tiny dataset, 2 iterations on CPU.

    The backbone's FrozenBN becomes GroupNorm: without the ImageNet weights (not fetched in
    tests) FrozenBN is an identity and an untrained R-50 gives inf/NaN features after a step;
    GroupNorm keeps the 2-iteration runs finite. Everything else is the recipe's.
    """
    with open(tiny_lvis["train_json"]) as f:
        images = json.load(f)["images"]
    short = min(min(i["width"], i["height"]) for i in images)
    long_ = max(max(i["width"], i["height"]) for i in images)
    lvis_format = "[" + ",".join(
        "[" + ",".join(_quote(x) for x in entry) + "]"
        for entry in ([tiny_lvis["train"], tiny_lvis["train_json"], tiny_lvis["train_image_root"]],
                      [tiny_lvis["val"], tiny_lvis["val_json"], tiny_lvis["val_image_root"]])
    ) + "]"
    return [
        f"datasets.lvis_format={lvis_format}",
        f"dataloader.train.dataset.names={tiny_lvis['train']}",
        f"dataloader.test.dataset.names={tiny_lvis['val']}",
        f"model.roi_heads.num_classes={tiny_lvis['num_classes']}",
        "train.device=cpu",
        "train.max_iter=2",
        f"train.output_dir={_quote(out)}",
        "train.init_checkpoint=''",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        f"dataloader.train.mapper.augmentations.0.short_edge_length=[{short}]",
        f"dataloader.train.mapper.augmentations.0.max_size={long_}",
        f"dataloader.test.mapper.augmentations.0.short_edge_length={short}",
        f"dataloader.test.mapper.augmentations.0.max_size={long_}",
        "model.backbone.bottom_up.stem.norm=GN",
        "model.backbone.bottom_up.stages.norm=GN",
    ]


def train_net(config: str, opts: list, *flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *flags,
           "--config-file", os.path.join(LAZY, config), *opts]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)


def state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.fixture(scope="module")
def stage1(tiny_lvis, tmp_path_factory):
    """The stage-1 recipe (RFS) trained on the tiny data: (its run folder, the process)."""
    out = tmp_path_factory.mktemp("lazy") / "lvis_rfs"
    proc = train_net(STAGE1, tiny_overrides(tiny_lvis, out))
    return out, proc


def test_configs_are_found():
    assert {"base_lvis_mask_rcnn_R_50_FPN.py", STAGE1, STAGE2, "lvis_balanced_softmax.py",
            "lvis_sigmoid_federated_rfs.py"} <= set(CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_each_lazy_config_trains_two_iterations_and_evaluates(config, tiny_lvis, stage1, tmp_path):
    if config == STAGE1:
        out, proc = stage1
    else:
        out = tmp_path / "run"
        opts = tiny_overrides(tiny_lvis, out)
        if config == STAGE2:
            opts.append(f"model.stage1_weights={_quote(stage1[0] / 'model_final.pth')}")
        proc = train_net(config, opts)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    trained = [m for m in metrics if "total_loss" in m]
    assert trained[-1]["iteration"] == 1 and math.isfinite(trained[-1]["total_loss"])
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) == {"bbox", "segm"}  # Mask R-CNN, LVIS evaluation of boxes and masks
    for task in ("bbox", "segm"):
        for key in ("AP", "APr", "APc"):
            assert math.isfinite(results[task][key]), (task, key)
    assert "AR@300" in results["bbox"]  # 300 detections per image
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / "per_class_ap_bbox.csv").is_file()
    # The model trained is the recipe's: lt_det's predictor with the recipe's loss.
    cfg = load_lazy_config(os.path.join(LAZY, config))
    loss = cls_loss_class(cfg.model.roi_heads.box_predictor.cls_loss).__name__
    assert f"(cls_loss): {loss}(" in (out / "log.txt").read_text()

    if config == STAGE2:  # cRT: only the classifier trained, the rest is stage 1's
        before, after = state(stage1[0] / "model_final.pth"), state(out / "model_final.pth")
        cls = "roi_heads.box_predictor.cls_score."
        for name, value in after.items():
            if name.startswith(cls):
                assert not torch.equal(value, before[name]), name  # re-initialised, trained
            elif value.is_floating_point():
                assert torch.equal(value, before[name]), name


def test_lazy_eval_only_reproduces_the_training_evaluation(tiny_lvis, stage1):
    """--eval-only of a LazyConfig run: the same results, written under inference/, the training
    run's own files left as they are; options after the overrides are refused."""
    out, proc = stage1
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    before = {n: (out / n).read_bytes() for n in ("config.yaml", "eval_results.json", "log.txt")}
    opts = tiny_overrides(tiny_lvis, out) + [
        f"train.init_checkpoint={_quote(out / 'model_final.pth')}"]
    proc = train_net(STAGE1, opts, "--eval-only")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    again = json.loads((out / "inference" / "eval_results.json").read_text())
    first = json.loads(before["eval_results.json"])
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)  # NaN-safe
    assert (out / "inference" / "config.yaml").is_file()

    proc = train_net(STAGE1, opts + ["--eval-only"])
    assert proc.returncode == 2
    assert "options (--eval-only, --resume, --num-gpus, ...) go before them" in proc.stderr


def _d2_lazyconfig_train_net(tmp_path) -> str:
    if not os.path.isfile(D2MAIN_SOURCE):
        pytest.skip(f"detectron2 main's source snapshot ({D2MAIN_SOURCE}) with "
                    "tools/lazyconfig_train_net.py is not present")
    with tarfile.open(D2MAIN_SOURCE) as tar:
        member = next(m for m in tar.getmembers()
                      if m.name.endswith("/tools/lazyconfig_train_net.py"))
        path = tmp_path / "lazyconfig_train_net.py"
        path.write_bytes(tar.extractfile(member).read())
    return str(path)


def test_detectron2_lazyconfig_train_net_trains_the_stage2_recipe(tiny_lvis, stage1, tmp_path):
    """detectron2's own tool, unchanged: the caller registers its own datasets (as detectron2
    asks for custom data); the cRT model trains its classifier alone under SimpleTrainer."""
    tool = _d2_lazyconfig_train_net(tmp_path)
    assert stage1[1].returncode == 0, (stage1[1].stdout + stage1[1].stderr)[-3000:]
    out = tmp_path / "d2run"
    opts = [o for o in tiny_overrides(tiny_lvis, out) if not o.startswith("datasets.")]
    opts.append(f"model.stage1_weights={_quote(stage1[0] / 'model_final.pth')}")
    launcher = (
        "import runpy, sys\n"
        "from lt_det.data import register_lvis_format\n"
        f"register_lvis_format({tiny_lvis['train']!r}, {tiny_lvis['train_json']!r}, "
        f"{tiny_lvis['train_image_root']!r})\n"
        f"register_lvis_format({tiny_lvis['val']!r}, {tiny_lvis['val_json']!r}, "
        f"{tiny_lvis['val_image_root']!r})\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    cmd = [sys.executable, "-c", launcher, tool, "--config-file", os.path.join(LAZY, STAGE2),
           *opts]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf,AR@300" in log
    assert (out / "inference" / "lvis_instances_results.json").is_file()
    before, after = state(stage1[0] / "model_final.pth"), state(out / "model_final.pth")
    changed = sorted(n for n, v in after.items() if not torch.equal(v, before[n]))
    assert changed == ["roi_heads.box_predictor.cls_score.bias",
                       "roi_heads.box_predictor.cls_score.weight"]


# ----------------------------------------------------------------------------- the recipes


def _yaml(name: str):
    return load_config(os.path.join(ROOT, "configs", name))


def test_recipes_say_what_their_yaml_twins_say():
    base, yaml = load_lazy_config(os.path.join(LAZY, CONFIGS[0])), _yaml("lvis_softmax.yaml")
    assert CONFIGS[0] == "base_lvis_mask_rcnn_R_50_FPN.py"
    heads, pred = base.model.roi_heads, base.model.roi_heads.box_predictor
    assert heads._target_.__name__ == "LTStandardROIHeads"
    assert pred._target_ is LTFastRCNNOutputLayers and pred.cls_loss == "softmax_ce"
    assert heads.num_classes == yaml.MODEL.ROI_HEADS.NUM_CLASSES == 1203
    assert pred.test_score_thresh == yaml.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 1e-4
    assert pred.test_topk_per_image == yaml.TEST.DETECTIONS_PER_IMAGE == 300
    assert base.dataloader.evaluator.max_dets_per_image == 300
    assert "mask_head" in heads and yaml.MODEL.MASK_ON
    assert base.optimizer.lr == yaml.SOLVER.BASE_LR
    assert base.train.max_iter == yaml.SOLVER.MAX_ITER
    assert list(base.lr_multiplier.scheduler.milestones[:-1]) == list(yaml.SOLVER.STEPS)
    assert base.lr_multiplier.warmup_length * base.train.max_iter == pytest.approx(
        yaml.SOLVER.WARMUP_ITERS)
    assert base.train.init_checkpoint == yaml.MODEL.WEIGHTS
    assert list(base.dataloader.train.mapper.augmentations[0].short_edge_length) == list(
        yaml.INPUT.MIN_SIZE_TRAIN)

    rfs, rfs_yaml = load_lazy_config(os.path.join(LAZY, STAGE1)), _yaml("lvis_rfs.yaml")
    assert rfs.dataloader.train.sampler._target_.__name__ == rfs_yaml.DATALOADER.SAMPLER_TRAIN
    assert rfs.dataloader.train.sampler.repeat_factors.repeat_thresh == (
        rfs_yaml.DATALOADER.REPEAT_THRESHOLD)

    crt, crt_yaml = load_lazy_config(os.path.join(LAZY, STAGE2)), _yaml("lvis_stage2_crt.yaml")
    assert crt.model._target_.__name__ == "DecoupledGeneralizedRCNN"
    assert crt.model.decouple._target_.__name__ == "ClassifierRetraining"
    assert list(crt.model.decouple.trainable) == list(crt_yaml.MODEL.DECOUPLE.TRAINABLE)
    assert list(crt.model.decouple.reinit) == list(crt_yaml.MODEL.DECOUPLE.REINIT)
    assert crt.dataloader.train.sampler.power == 0.0  # ClassBalancedSampler: power 0 of n_c
    assert crt_yaml.DATALOADER.SAMPLER_TRAIN == "ClassBalancedSampler"
    assert crt.train.max_iter == crt_yaml.SOLVER.MAX_ITER
    assert list(crt.lr_multiplier.scheduler.milestones[:-1]) == list(crt_yaml.SOLVER.STEPS)
    assert crt.lr_multiplier.warmup_length * crt.train.max_iter == pytest.approx(
        crt_yaml.SOLVER.WARMUP_ITERS)
    assert crt.model.stage1_weights == os.path.join(rfs.train.output_dir, "model_final.pth")

    bal = load_lazy_config(os.path.join(LAZY, "lvis_balanced_softmax.py"))
    bal_yaml = _yaml("lvis_balanced_e2e.yaml")
    assert bal.model.roi_heads.box_predictor.cls_loss == bal_yaml.MODEL.ROI_BOX_HEAD.CLS_LOSS
    assert bal.model.roi_heads.box_predictor.class_prior.source == (
        bal_yaml.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE)

    # detectron2's ViTDet LVIS head, in lt_det's terms (projects/ViTDet/configs/LVIS: sigmoid
    # CE + federated loss with image_count ** 0.5 weights and 50 classes, RFS 0.001, 300
    # detections at score 0.02; detectron2's FED_LOSS defaults give the 50 and the 0.5).
    fed = load_lazy_config(os.path.join(LAZY, "lvis_sigmoid_federated_rfs.py"))
    d2 = get_cfg()
    p = fed.model.roi_heads.box_predictor
    assert p.cls_loss == "federated" and p.cls_loss_kwargs.class_sets == "batch"
    assert p.cls_loss_kwargs.num_classes_sampled == d2.MODEL.ROI_BOX_HEAD.get(
        "FED_LOSS_NUM_CLASSES", 50) == 50
    assert p.cls_loss_kwargs.power == d2.MODEL.ROI_BOX_HEAD.get(
        "FED_LOSS_FREQ_WEIGHT_POWER", 0.5) == 0.5
    assert p.cls_loss_kwargs.bias_prior_prob == 0.0  # detectron2's cls_score bias starts at 0
    assert p.class_prior.source == "image_count"
    assert p.test_score_thresh == 0.02 and p.test_topk_per_image == 300
    assert fed.dataloader.train.sampler.repeat_factors.repeat_thresh == 0.001


def _image_fractions(json_file: str) -> torch.Tensor:
    """Closed form of the image_count prior: images with a (non-crowd) instance of c / images."""
    with open(json_file) as f:
        data = json.load(f)
    ids = sorted(c["id"] for c in data["categories"])
    per_class = Counter()
    for cid, img in {(a["category_id"], a["image_id"]) for a in data["annotations"]
                     if not a.get("iscrowd", 0)}:
        per_class[cid] += 1
    return torch.tensor([per_class[c] / len(data["images"]) for c in ids], dtype=torch.float32)


def _tiny_cfg(config, tiny_lvis, tmp_path, *extra):
    cfg = load_lazy_config(os.path.join(LAZY, config),
                           tiny_overrides(tiny_lvis, tmp_path / "unused") + list(extra))
    register_lazy_datasets(cfg)
    return cfg


def test_balanced_softmax_recipe_prior_is_the_training_image_fraction(tiny_lvis, tmp_path):
    cfg = _tiny_cfg("lvis_balanced_softmax.py", tiny_lvis, tmp_path)
    predictor = instantiate(cfg.model.roi_heads.box_predictor)
    expected = _image_fractions(tiny_lvis["train_json"])
    assert (expected > 0).all()  # no zero-count floor involved
    torch.testing.assert_close(predictor.cls_loss.class_prior, expected)


def test_rfs_recipe_repeat_factors_follow_the_lvis_rule(tiny_lvis, tmp_path):
    """r_c = max(1, sqrt(t / f_c)), an image's factor the largest over its classes (Gupta et al.
    2019); t = 0.3 so that the tiny data's factors differ from 1."""
    t = 0.3
    cfg = _tiny_cfg("lvis_sigmoid_federated_rfs.py", tiny_lvis, tmp_path,
                    f"dataloader.train.sampler.repeat_factors.repeat_thresh={t}")
    factors = instantiate(cfg.dataloader.train.sampler.repeat_factors)
    dicts = instantiate(cfg.dataloader.train.dataset)  # the images the loader reads
    classes = [{a["category_id"] for a in d["annotations"] if not a.get("iscrowd", 0)}
               for d in dicts]
    f = {c: sum(c in s for s in classes) / len(dicts) for c in set().union(*classes)}
    r = {c: max(1.0, math.sqrt(t / fc)) for c, fc in f.items()}
    expected = [max([r[c] for c in s], default=1.0) for s in classes]
    torch.testing.assert_close(factors, torch.tensor(expected))
    assert factors.max() > 1.0


def test_stage2_recipe_freezes_all_but_a_reinitialised_classifier(tiny_lvis, stage1, tmp_path):
    weights = stage1[0] / "model_final.pth"
    assert weights.is_file(), (stage1[1].stdout + stage1[1].stderr)[-3000:]
    cfg = _tiny_cfg(STAGE2, tiny_lvis, tmp_path, f"model.stage1_weights={_quote(weights)}")
    model = instantiate(cfg.model)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["roi_heads.box_predictor.cls_score.bias",
                         "roi_heads.box_predictor.cls_score.weight"]
    before = state(weights)
    for name, value in model.state_dict().items():
        if name in trainable:
            assert not torch.equal(value, before[name])
        elif name in before:
            assert torch.equal(value, before[name]), name

    cfg = _tiny_cfg(STAGE2, tiny_lvis, tmp_path, "model.stage1_weights=missing/model_final.pth")
    with pytest.raises(LTDetError, match="model.stage1_weights 'missing/model_final.pth' does"):
        instantiate(cfg.model)


# ----------------------------------------------------------------------------- refusals


def _predictor(**kwargs):
    return LTFastRCNNOutputLayers(
        ShapeSpec(channels=8), box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
        num_classes=3, **kwargs)


@pytest.mark.parametrize("flags,expected", [
    ({"use_sigmoid_ce": True}, ['use_sigmoid_ce=True', 'cls_loss="sigmoid_ce"']),
    ({"use_sigmoid_ce": True, "use_fed_loss": True,
      "get_fed_loss_cls_weights": lambda: torch.ones(3)},
     ["use_sigmoid_ce=True", "use_fed_loss=True", "get_fed_loss_cls_weights",
      'cls_loss="federated"', "class_prior"]),
    ({"fed_loss_num_classes": 50}, ["fed_loss_num_classes", "num_classes_sampled"]),
])
def test_predictor_refuses_detectron2_loss_flags(flags, expected):
    """detectron2 main's FastRCNNOutputLayers takes these (0.6 does not); lt_det's predictor
    would not honour them, so it refuses them on either version with one message."""
    with pytest.raises(LTDetError) as info:
        _predictor(**flags)
    message = str(info.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, text


def test_predictor_accepts_detectron2_loss_flags_left_off():
    predictor = _predictor(use_sigmoid_ce=False, use_fed_loss=False, cls_loss="sigmoid_ce")
    assert type(predictor.cls_loss).__name__ == "SigmoidCELoss"


def test_yaml_path_refuses_the_same_flags_by_the_same_rule():
    message = "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE True and MODEL.ROI_BOX_HEAD.USE_FED_LOSS True"
    with pytest.raises(LTDetError, match=message + r".*CLS_LOSS \"federated\""):
        check_detectron2_cls_options({"use_sigmoid_ce": True, "use_fed_loss": True}, config=True)
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = True  # detectron2 main's key (added here on 0.6)
    with pytest.raises(LTDetError, match="USE_SIGMOID_CE True.*CLS_LOSS \"sigmoid_ce\""):
        LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))


def test_train_net_refuses_vitdet_flags_on_lt_predictor_before_writing(tiny_lvis, tmp_path):
    """The ViTDet LVIS head settings on lt_det's predictor: one line, exit 2, nothing written."""
    out = tmp_path / "run"
    proc = train_net(CONFIGS[0], tiny_overrides(tiny_lvis, out) + [
        "model.roi_heads.box_predictor.use_sigmoid_ce=True",
        "model.roi_heads.box_predictor.use_fed_loss=True",
    ])
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(ERROR_PREFIX) and "Traceback" not in proc.stderr
    assert "use_sigmoid_ce=True, use_fed_loss=True" in lines[-1]
    assert 'cls_loss="federated"' in lines[-1]
    assert not out.exists()


def test_lt_roi_heads_refuse_a_detectron2_predictor(tiny_lvis, tmp_path):
    cfg = _tiny_cfg(CONFIGS[0], tiny_lvis, tmp_path)
    cfg.model.roi_heads.box_predictor = L(FastRCNNOutputLayers)(
        input_shape=ShapeSpec(channels=1024),
        box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
        num_classes="${..num_classes}",
    )
    with pytest.raises(LTDetError, match="LTStandardROIHeads got box_predictor of type "
                                         "FastRCNNOutputLayers; it needs lt_det's"):
        instantiate(cfg.model.roi_heads)

    yaml = add_lt_config(get_cfg())
    yaml.MODEL.ROI_HEADS.NAME = "LTCascadeROIHeads"
    yaml.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    yaml.MODEL.ROI_HEADS.IN_FEATURES = ["p2"]
    yaml.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    yaml.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    args = LTCascadeROIHeads.from_config(yaml, {"p2": ShapeSpec(channels=8, stride=4)})
    args["box_predictors"] = [
        FastRCNNOutputLayers(h.output_shape, box2box_transform=p.box2box_transform,
                             num_classes=yaml.MODEL.ROI_HEADS.NUM_CLASSES)
        for h, p in zip(args["box_heads"], args["box_predictors"])
    ]
    with pytest.raises(LTDetError, match="LTCascadeROIHeads got box_predictors of type "
                                         "FastRCNNOutputLayers"):
        LTCascadeROIHeads(**args)


# ----------------------------------------------------------------------------- door checks


@pytest.mark.parametrize("override,expected", [
    ("train.max_iters=2", "override 'train.max_iters': 'train' has no key 'max_iters'. "
                          "Did you mean train.max_iter?"),
    ("trian.max_iter=2", "override 'trian.max_iter': the config's root has no key 'trian'. "
                         "Did you mean train?"),
    ("model.roi_heads.box_pooler.output_sise=7", "'model.roi_heads.box_pooler' has no key "
     "'output_sise' and ROIPooler takes no such argument. Did you mean "
     "model.roi_heads.box_pooler.output_size?"),
    ("MODEL.DEVICE", "path.key=value overrides"),
])
def test_lazy_overrides_that_would_do_nothing_are_refused(override, expected):
    with pytest.raises(LTDetError) as info:
        load_lazy_config(os.path.join(LAZY, CONFIGS[0]), [override])
    assert expected in str(info.value)


def test_lazy_class_count_is_checked_against_the_training_set(tiny_lvis, tmp_path):
    cfg = _tiny_cfg(CONFIGS[0], tiny_lvis, tmp_path, "model.roi_heads.num_classes=1203")
    k = tiny_lvis["num_classes"]
    with pytest.raises(LTDetError, match=f"add the override model.roi_heads.num_classes={k}"):
        check_lazy_datasets(cfg)
    cfg = _tiny_cfg(CONFIGS[0], tiny_lvis, tmp_path, "dataloader.train.dataset.names=nowhere")
    with pytest.raises(LTDetError, match="dataset 'nowhere' is not registered"):
        check_lazy_datasets(cfg)


# ----------------------------------------------------------------------------- prior


def test_class_prior_from_dataset_needs_no_yaml_config(tiny_lvis):
    prior = class_prior_from_dataset(tiny_lvis["train"])
    torch.testing.assert_close(prior, _image_fractions(tiny_lvis["train_json"]))
    yaml = add_lt_config(get_cfg())
    yaml.DATASETS.TRAIN = (tiny_lvis["train"],)
    yaml.MODEL.ROI_HEADS.NUM_CLASSES = tiny_lvis["num_classes"]
    yaml.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "instance_count"
    torch.testing.assert_close(
        class_prior_from_dataset([tiny_lvis["train"]], "instance_count"),
        class_prior_from_cfg(yaml),
    )
    with pytest.raises(LTDetError, match="unknown source 'checkpoint'"):
        class_prior_from_dataset(tiny_lvis["train"], "checkpoint")
    with pytest.raises(LTDetError, match=r"dataset\(s\) \['nowhere'\] are not registered"):
        class_prior_from_dataset("nowhere")
