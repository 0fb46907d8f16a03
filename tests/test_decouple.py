"""Decoupled (stage-2) training: freezing, eval mode, cRT re-init, LWS, tau-norm, stage-2 step.

Tiny GeneralizedRCNN (ResNet-18-FPN with BatchNorm, 5 classes) on 64 x 64 random images, CPU.
"""
import json
import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import lt_det.modeling  # noqa: F401  registration of the LT ROI heads
from lt_det.config import add_lt_config
from lt_det.decouple import (
    DecoupledTrainer,
    LWSLinear,
    TauNormLinear,
    apply_decoupling,
    build_decouple_method,
    frozen_module_roots,
    stage1_load_guard,
    tau_normalize,
)
from lt_det.checkpoint import LTCheckpointer
from lt_det.errors import LTDetError
from lt_det.modeling.losses import build_cls_loss

K = 5
CLS = "roi_heads.box_predictor.cls_score"


def tiny_cfg(method: str = "none", **overrides):
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 50
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.NAME = "LTStandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.SOLVER.BASE_LR = 0.1
    cfg.MODEL.DECOUPLE.METHOD = method
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def make_model(cfg):
    torch.manual_seed(0)
    return apply_decoupling(build_model(cfg), cfg)


def batch(n: int = 2):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        inst = Instances((64, 64))
        inst.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 40.0, 44.0], [20.0, 10.0, 60.0, 50.0]]))
        inst.gt_classes = torch.tensor([i % K, (i + 2) % K])
        img = torch.randint(0, 255, (3, 64, 64), generator=g).to(torch.uint8)
        out.append({"image": img, "height": 64, "width": 64, "instances": inst})
    return out


def bn_stats(model):
    return {n: b.clone() for n, b in model.named_buffers() if "running_" in n or "num_batches" in n}


def test_unknown_method_lists_choices():
    cfg = tiny_cfg("crtt")
    with pytest.raises(LTDetError, match=r"METHOD.*'crt', .*'lws', 'none', 'tau_norm'"):
        build_decouple_method(cfg)


def test_prefix_matches_whole_components_only():
    cfg = tiny_cfg("crt", **{"MODEL.DECOUPLE.TRAINABLE": ["roi_heads.box_predictor.cls"]})
    with pytest.raises(LTDetError, match=r"matches no parameter.*cls_score"):
        make_model(cfg)


def test_crt_freezes_all_but_named_and_optimizer_sees_only_them():
    cfg = tiny_cfg("crt")
    model = make_model(cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {CLS + ".weight", CLS + ".bias"}
    opt = build_optimizer(cfg, model)
    opt_params = {id(p) for g in opt.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    roots = frozen_module_roots(model)
    assert "backbone" in roots and "roi_heads.box_head" in roots and CLS not in roots


def test_stage2_step_updates_only_classifier_and_keeps_bn_stats():
    cfg = tiny_cfg("crt")
    model = make_model(cfg)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = bn_stats(model)
    assert stats, "the tiny model must have BatchNorm layers"
    data = [batch(2)] * 3
    trainer = DecoupledTrainer(model, data, build_optimizer(cfg, model))
    assert model.training  # SimpleTrainer called model.train()
    with EventStorage(0) as storage:
        for it in range(2):
            trainer.iter = it
            trainer.run_step()
            storage.step()
    for n, b in bn_stats(model).items():
        assert torch.equal(b, stats[n]), n
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    assert changed == {CLS + ".weight", CLS + ".bias"}
    assert not model.backbone.training  # the pre-hook put it back in eval mode at forward
    assert "loss_cls" in storage.latest()


def test_tau_zero_is_identity_and_tau_one_unit_norms():
    w, b = torch.randn(K + 1, 8) * 3, torch.randn(K + 1)
    w0, b0 = tau_normalize(w, b, 0.0, num_normalized=K)
    assert torch.equal(w0, w) and torch.equal(b0, b)
    w1, b1 = tau_normalize(w, b, 1.0, num_normalized=K, bias_mode="scale")
    assert torch.allclose(w1[:K].norm(dim=1), torch.ones(K), atol=1e-6)
    assert torch.equal(w1[K], w[K]) and torch.equal(b1[K], b[K])  # background row kept
    assert torch.allclose(b1[:K], b[:K] / w[:K].norm(dim=1))
    wh, _ = tau_normalize(w, b, 0.5, num_normalized=K)
    assert torch.allclose(wh[:K].norm(dim=1), w[:K].norm(dim=1).sqrt(), atol=1e-5)

    base = make_model(tiny_cfg("none")).eval()
    tau0 = make_model(tiny_cfg("tau_norm", **{"MODEL.DECOUPLE.TAU": 0.0}))
    tau0.load_state_dict(base.state_dict())
    assert isinstance(tau0.roi_heads.box_predictor.cls_score, TauNormLinear)
    assert not any(p.requires_grad for p in tau0.parameters())
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch(1)]
    with torch.no_grad():
        a, c = base(inputs)[0]["instances"], tau0(inputs)[0]["instances"]
    assert torch.equal(a.scores, c.scores) and torch.equal(a.pred_boxes.tensor, c.pred_boxes.tensor)

    tau1 = make_model(tiny_cfg("tau_norm", **{"MODEL.DECOUPLE.TAU": 1.0}))
    tau1.load_state_dict(base.state_dict())
    weight, _ = tau1.roi_heads.box_predictor.cls_score.normalized_parameters()
    assert torch.allclose(weight[:K].norm(dim=1), torch.ones(K), atol=1e-6)


def test_lws_starts_as_identity_and_trains_only_scales():
    cfg = tiny_cfg("lws", **{"MODEL.DECOUPLE.TRAINABLE": [CLS + ".scale"]})
    base = make_model(tiny_cfg("none"))
    model = make_model(cfg)
    missing = model.load_state_dict(base.state_dict(), strict=False)
    assert missing.missing_keys == [CLS + ".scale"] and not missing.unexpected_keys
    layer = model.roi_heads.box_predictor.cls_score
    assert isinstance(layer, LWSLinear) and layer.scale.shape == (K + 1,)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [CLS + ".scale"]
    x = torch.randn(4, 32)
    assert torch.equal(layer(x), base.roi_heads.box_predictor.cls_score(x))


def test_lws_on_a_cosine_classifier_scales_the_cosine_logits():
    # the stage-1 cosine classifier's normalisation and temperature are kept: at scale 1 the
    # logits are the stage-1 ones, with scales s they are s * the stage-1 ones
    cosine = {"MODEL.ROI_BOX_HEAD.CLS_SCORE": "normed_linear"}
    base = make_model(tiny_cfg("none", **cosine))
    model = make_model(tiny_cfg("lws", **cosine, **{"MODEL.DECOUPLE.TRAINABLE": [CLS + ".scale"]}))
    model.load_state_dict(base.state_dict(), strict=False)
    layer = model.roi_heads.box_predictor.cls_score
    x = torch.randn(4, 32)
    stage1 = base.roi_heads.box_predictor.cls_score(x)
    assert torch.equal(layer(x), stage1)
    with torch.no_grad():
        layer.scale.copy_(torch.arange(1.0, K + 2))
    torch.testing.assert_close(layer(x), stage1 * torch.arange(1.0, K + 2))
    # a layer LWS cannot reproduce is refused
    with pytest.raises(LTDetError, match="'lws' scales an nn.Linear or normed_linear"):
        LWSLinear.from_linear(layer)


def test_tau_norm_on_a_cosine_classifier_is_refused_before_building():
    from lt_det.decouple import check_stage2_classifier

    cfg = tiny_cfg("tau_norm", **{"MODEL.ROI_BOX_HEAD.CLS_SCORE": "normed_linear"})
    with pytest.raises(LTDetError, match="changes nothing. Use 'lws' or 'crt'"):
        check_stage2_classifier(cfg)
    check_stage2_classifier(tiny_cfg("tau_norm"))  # a linear classifier is fine


def _save_stage1(tmp_path, cfg):
    model = make_model(cfg)
    with torch.no_grad():  # make every parameter differ from a fresh init
        for p in model.parameters():
            p.add_(0.5)
    os.makedirs(str(tmp_path), exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    return model, os.path.join(str(tmp_path), "model_final.pth")


def _load(cfg, out_dir, resume):
    model = make_model(cfg)
    os.makedirs(str(out_dir), exist_ok=True)
    ckpt = LTCheckpointer(model, save_dir=str(out_dir))
    with stage1_load_guard(cfg, model, ckpt, resume):
        ckpt.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    return model, ckpt


def test_stage1_checkpoint_loads_and_crt_reinits_only_where_asked(tmp_path):
    stage1, path = _save_stage1(tmp_path / "s1", tiny_cfg("none"))
    cfg = tiny_cfg("crt", **{"MODEL.WEIGHTS": path})
    out = tmp_path / "s2"
    model, ckpt = _load(cfg, out, resume=False)
    ref = dict(stage1.named_parameters())
    for n, p in model.named_parameters():
        if n.startswith(CLS + "."):
            assert not torch.equal(p, ref[n]), n
        else:
            assert torch.equal(p, ref[n]), n  # bbox_pred too: not in REINIT
    w = model.roi_heads.box_predictor.cls_score.weight
    assert w.abs().mean() < 0.05  # N(0, 0.01^2)
    # A resumed stage-2 run keeps its own classifier.
    with torch.no_grad():
        w.fill_(0.25)
    ckpt.save("model_0000009")
    resumed, _ = _load(cfg, out, resume=True)
    assert torch.all(resumed.roi_heads.box_predictor.cls_score.weight == 0.25)


def test_crt_reinit_box_regression_and_sigmoid_bias(tmp_path):
    _, path = _save_stage1(
        tmp_path, tiny_cfg("none", **{"MODEL.ROI_BOX_HEAD.CLS_LOSS": "sigmoid_ce"})
    )
    both = [CLS, "roi_heads.box_predictor.bbox_pred"]
    cfg = tiny_cfg(
        "crt",
        **{
            "MODEL.WEIGHTS": path,
            "MODEL.ROI_BOX_HEAD.CLS_LOSS": "sigmoid_ce",
            "MODEL.DECOUPLE.TRAINABLE": both,
            "MODEL.DECOUPLE.REINIT": both,
        },
    )
    model, _ = _load(cfg, tmp_path / "s2", resume=False)
    bias = model.roi_heads.box_predictor.cls_score.bias
    p = cfg.MODEL.ROI_BOX_HEAD.SIGMOID_BIAS_PRIOR_PROB
    assert torch.allclose(bias[:K], torch.full((K,), -math.log((1 - p) / p)))
    assert torch.all(model.roi_heads.box_predictor.bbox_pred.bias == 0)


def test_missing_or_incompatible_stage1_checkpoint(tmp_path):
    with pytest.raises(LTDetError, match="MODEL.WEIGHTS is empty"):
        _load(tiny_cfg("crt"), tmp_path, resume=False)
    with pytest.raises(LTDetError, match="does not exist"):
        _load(tiny_cfg("crt", **{"MODEL.WEIGHTS": str(tmp_path / "nope.pth")}), tmp_path, False)
    _, path = _save_stage1(tmp_path / "other", tiny_cfg("none", **{"MODEL.FPN.OUT_CHANNELS": 8}))
    with pytest.raises(LTDetError, match="does not fit this model"):
        _load(tiny_cfg("crt", **{"MODEL.WEIGHTS": path}), tmp_path / "s2", resume=False)


def test_stage1_values_equal_to_a_fresh_init_are_loaded_not_refused(tmp_path):
    """A stage-1 parameter that training never moved (e.g. the box-regression rows of classes
    absent from a short run) still loads: the check reads the checkpointer's report of missing
    and mis-shaped keys, not the values."""
    cfg1 = tiny_cfg("none")
    model = make_model(cfg1)
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.bias.zero_()  # as detectron2 initialises it
    os.makedirs(str(tmp_path / "s1"), exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(tmp_path / "s1")).save("model_final")
    cfg = tiny_cfg("crt", **{"MODEL.WEIGHTS": str(tmp_path / "s1" / "model_final.pth")})
    loaded, _ = _load(cfg, tmp_path / "s2", resume=False)
    assert torch.equal(loaded.roi_heads.box_predictor.bbox_pred.bias,
                       model.roi_heads.box_predictor.bbox_pred.bias)
    # while a checkpoint that lacks a frozen parameter is refused, naming it
    state = torch.load(str(tmp_path / "s1" / "model_final.pth"), weights_only=False)
    del state["model"]["roi_heads.box_predictor.bbox_pred.bias"]
    torch.save(state, str(tmp_path / "s1" / "partial.pth"))
    cfg = tiny_cfg("crt", **{"MODEL.WEIGHTS": str(tmp_path / "s1" / "partial.pth")})
    with pytest.raises(LTDetError,
                       match=r"1 of \d+ parameters that must be loaded were not .*bbox_pred"):
        _load(cfg, tmp_path / "s3", resume=False)


def test_finetune_keeps_every_stage1_weight_and_trains_only_the_classifier(tmp_path):
    stage1, path = _save_stage1(tmp_path / "s1", tiny_cfg("none"))
    model, _ = _load(tiny_cfg("finetune", **{"MODEL.WEIGHTS": path}), tmp_path / "s2", False)
    ref = dict(stage1.named_parameters())
    for n, p in model.named_parameters():
        assert torch.equal(p, ref[n]), n
        assert p.requires_grad == n.startswith(CLS + "."), n


def test_crt_without_reinit_points_to_finetune():
    with pytest.raises(LTDetError, match="'finetune'"):
        make_model(tiny_cfg("crt", **{"MODEL.DECOUPLE.REINIT": []}))


def test_reinit_of_frozen_module_is_an_error():
    cfg = tiny_cfg("crt", **{"MODEL.DECOUPLE.REINIT": ["roi_heads.box_predictor.bbox_pred"]})
    with pytest.raises(LTDetError, match="is frozen"):
        make_model(cfg)


@pytest.mark.parametrize(
    "name", ["softmax_ce", "balanced_softmax", "sigmoid_ce", "balanced_sigmoid"]
)
def test_meta_loss_matches_head_loss(name):
    prior = torch.tensor([0.5, 0.2, 0.1, 0.05, 0.01])
    loss = build_cls_loss(name, num_classes=K, class_prior=prior)
    logits = torch.randn(7, K + 1)
    gt = torch.tensor([0, 1, 2, 3, 4, 5, 5])
    per_roi = loss.per_roi(logits, gt)
    assert per_roi.shape == (7,)
    assert torch.allclose(per_roi.mean(), loss(logits, gt), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from lt_det.data.synthetic import generate_synthetic_lvis

    out = tmp_path_factory.mktemp("decouple_data")
    generate_synthetic_lvis(str(out), seed=0, preset="tiny")
    return str(out)


def _trainer_cfg(data, out_dir, method, **overrides):
    from lt_det.data import register_datasets_from_cfg

    train, val = f"dec_tiny_train_{method}", f"dec_tiny_val_{method}"
    cfg = tiny_cfg(method, **overrides)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 6
    cfg.DATASETS.LVIS_FORMAT = [
        [train, os.path.join(data, "lvis_v1_train.json"), os.path.join(data, "train")],
        [val, os.path.join(data, "lvis_v1_val.json"), os.path.join(data, "val")],
    ]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 48
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 2, 2, 0
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.CHECKPOINT_PERIOD = 100000
    cfg.OUTPUT_DIR = str(out_dir)
    register_datasets_from_cfg(cfg)
    return cfg


def test_lt_trainer_stage1_then_balms_stage2_and_resume(tiny_data, tmp_path):
    from lt_det.engine import LTTrainer

    s1 = LTTrainer(_trainer_cfg(tiny_data, tmp_path / "s1", "none"))
    s1.resume_or_load(resume=False)
    s1.train()
    stage1 = {n: p.detach().clone() for n, p in s1.model.named_parameters()}
    weights = str(tmp_path / "s1" / "model_final.pth")

    over = {
        "MODEL.WEIGHTS": weights,
        "MODEL.ROI_BOX_HEAD.CLS_LOSS": "balanced_softmax",
        "MODEL.ROI_BOX_HEAD.PRIOR.SOURCE": "image_count",
        "DATALOADER.SAMPLER_TRAIN": "MetaSampler",
    }
    cfg = _trainer_cfg(tiny_data, tmp_path / "s2", "crt", **over)
    s2 = LTTrainer(cfg)
    assert "meta_sampler" in s2.checkpointer.checkpointables
    # The learner writes the rates of the very sampler the trainer built for its loader.
    assert s2.checkpointer.checkpointables["meta_sampler"].rates is s2.train_sampler.sampler.rates
    s2.resume_or_load(resume=False)
    reinit = s2.model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    assert not torch.equal(reinit, stage1[CLS + ".weight"])
    s2.train()
    for n, p in s2.model.named_parameters():
        if n.startswith(CLS + "."):
            assert not torch.equal(p, stage1[n]), n
        else:
            assert torch.equal(p, stage1[n]), n
    saved = torch.load(str(tmp_path / "s2" / "model_final.pth"), weights_only=False)
    assert "meta_sampler" in saved
    # Resuming the finished stage-2 run loads its classifier and rates; nothing re-initialised.
    s3 = LTTrainer(cfg)
    s3.resume_or_load(resume=True)
    assert torch.equal(
        s3.model.roi_heads.box_predictor.cls_score.weight, saved["model"][CLS + ".weight"]
    )
    learner = s3.checkpointer.checkpointables["meta_sampler"]
    assert torch.equal(learner.logits.detach(), saved["meta_sampler"]["logits"])


def test_tau_norm_cannot_train():
    from lt_det.decouple import check_decoupled_training

    with pytest.raises(LTDetError, match="trains nothing"):
        check_decoupled_training(tiny_cfg("tau_norm"))


def test_tau_sweep_and_norm_plot_tools(tiny_data, tmp_path):
    import importlib.util

    from lt_det.evaluation import plot_classifier_norms

    def tool(name):
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tools", name + ".py")
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    cfg = _trainer_cfg(tiny_data, tmp_path, "none")
    train_name, val_name = cfg.DATASETS.LVIS_FORMAT[0][0], cfg.DATASETS.LVIS_FORMAT[1][0]
    cfg.DATASETS.TEST = (val_name,)
    model = make_model(cfg)
    os.makedirs(str(tmp_path), exist_ok=True)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    weights = str(tmp_path / "model_final.pth")
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(cfg.dump())
    out = tmp_path / "sweep"
    rc = tool("tau_sweep").main(
        ["--config-file", str(cfg_file), "--weights", weights, "--taus", "0", "1"]
        + ["--out", str(out), "--max-images", "4"]
    )
    assert rc == 0
    lines = (out / "tau_sweep.csv").read_text().splitlines()
    assert lines[0] == "tau,AP,APr,APc,APf" and len(lines) == 3
    assert (out / "tau_sweep.png").is_file() and (out / "tau_sweep.md").is_file()
    # --max-images 4 is scored against the ground truth of those 4 images, not the whole set
    per_class = json.loads((out / "tau_0" / "per_class_ap_bbox.json").read_text())
    assert per_class["info"]["num_images"] == 4
    assert "frozen detector" in (out / "log.txt").read_text()
    # a second sweep into the same folder is refused and leaves the first one as it was;
    # missing weights are refused before --out is made
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    argv = ["--config-file", str(cfg_file), "--taus", "0.5", "--max-images", "4"]
    assert tool("tau_sweep").main(argv + ["--weights", weights, "--out", str(out)]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    missing = tmp_path / "no_such.pth"
    new = tmp_path / "new"
    assert tool("tau_sweep").main(argv + ["--weights", str(missing), "--out", str(new)]) == 2
    assert not new.exists()
    # the calibration sweep shares the refusal of a folder that holds its sweep
    (new / "calibration_sweep.md").parent.mkdir()
    (new / "calibration_sweep.md").write_text("earlier sweep")
    argv = ["--config-file", str(cfg_file), "--weights", weights, "--out", str(new)]
    assert tool("calibration_sweep").main(argv) == 2
    assert os.listdir(new) == ["calibration_sweep.md"]
    assert (new / "calibration_sweep.md").read_text() == "earlier sweep"

    png = tmp_path / "norms.png"
    means = plot_classifier_norms(
        {"joint": weights, "tau1": weights + "@tau=1"},
        os.path.join(tiny_data, "lvis_v1_train.json"),
        str(png),
    )
    assert png.is_file()
    assert all(abs(v - 1.0) < 1e-5 for v in means["tau1"].values() if v == v)



def test_sweep_table_marks_the_first_best_row_per_group(tmp_path):
    from lt_det.decouple import write_sweep_table

    def row(method, value, ap):
        return {"method": method, "value": value, "AP": ap, "APr": 1.0, "APc": 2.0, "APf": 3.0}

    rows = [row("a", 0.0, 5.0), row("a", 0.5, 7.0), row("a", 1.0, 7.0), row("b", 0.0, math.nan)]
    markdown, best = write_sweep_table(
        rows, str(tmp_path), "s", ["method", "value"], best_per="method"
    )
    assert best == [rows[1], rows[3]]  # ties: the earlier row; a NaN-only group keeps its row
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in markdown.splitlines()]
    assert cells[0] == ["method", "value", "AP", "APr", "APc", "APf"]
    assert [c[:3] for c in cells[2:]] == [
        ["a", "0", "5.00"], ["a", "0.5 **best**", "7.00"], ["a", "1", "7.00"],
        ["b", "0 **best**", "nan"],
    ]
    assert (tmp_path / "s.md").read_text() == markdown + "\n"
    csv_lines = (tmp_path / "s.csv").read_text().splitlines()
    assert csv_lines[0] == "method,value,AP,APr,APc,APf"
    assert csv_lines[2] == "a,0.5,7.0,1.0,2.0,3.0"
    taus = [{"tau": r["value"], **{m: r[m] for m in ("AP", "APr", "APc", "APf")}} for r in rows]
    _, (single,) = write_sweep_table(taus[:3], str(tmp_path), "t", ["tau"])
    assert single is taus[1]


def test_cascade_stage2_step_updates_only_named_classifiers():
    names = [f"roi_heads.box_predictor.{i}.cls_score" for i in range(3)]
    cfg = tiny_cfg("crt", **{"MODEL.DECOUPLE.TRAINABLE": names, "MODEL.DECOUPLE.REINIT": names})
    cfg.MODEL.ROI_HEADS.NAME = "LTCascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    model = make_model(cfg)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DecoupledTrainer(model, [batch(2)], build_optimizer(cfg, model))
    with EventStorage(0):
        trainer.run_step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    assert changed == {f"{n}.{w}" for n in names for w in ("weight", "bias")}
