"""DisAlign (MODEL.DECOUPLE.METHOD "disalign") and its loss, generalized re-weighting ("grw").

Calibration at the identity init, a hand-computed calibrated logit, GRW against cross-entropy and
hand-computed weights, which parameters train, stage 1 -> stage 2 -> ``--eval-only`` reload, and
a 1203-class build from configs/lvis_stage2_disalign.yaml. The transcription of the reference's
maths is in tests/test_reference_defaults.py.
"""
import math
import os

import pytest
import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from torch import nn
from torch.nn import functional as F

from lt_det.decouple import DecoupledTrainer, DisAlignLinear, disalign_logits
from lt_det.errors import LTDetError
from lt_det.modeling.losses import build_cls_loss, grw_loss, grw_weights
from lt_det.modeling.normed_linear import NormedLinear

from test_decouple import CLS, K, batch, bn_stats, make_model, tiny_cfg

DISALIGN = [CLS + ".logit_scale", CLS + ".logit_bias", CLS + ".confidence_layer"]
DISALIGN_PARAMS = {
    CLS + ".logit_scale", CLS + ".logit_bias",
    CLS + ".confidence_layer.weight", CLS + ".confidence_layer.bias",
}  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ calibration
@pytest.mark.parametrize("layer", ["linear", "normed_linear"])
def test_identity_init_gives_the_stage1_logits_exactly(layer):
    torch.manual_seed(0)
    stage1 = nn.Linear(8, K + 1) if layer == "linear" else NormedLinear(8, K + 1, temperature=20)
    with torch.no_grad():
        stage1.weight.normal_()
        stage1.bias.normal_()
    x = torch.randn(16, 8) * 3
    for std in (0.01, 2.0):  # whatever the gate says, alpha = 1 and beta = 0 change nothing
        cal = DisAlignLinear.from_linear(stage1, num_classes=K, gate_init_std=std)
        assert cal.weight is stage1.weight and cal.bias is stage1.bias
        assert cal.logit_scale.shape == cal.logit_bias.shape == (K,)
        assert torch.equal(cal.logit_scale, torch.ones(K))
        assert torch.equal(cal.logit_bias, torch.zeros(K))
        assert torch.equal(cal.confidence_layer.bias, torch.zeros(1))
        assert torch.equal(cal(x), stage1(x))
    assert cal.confidence_layer.weight.std() > 0.5  # the std was used


def test_hand_computed_calibrated_logit():
    # x = (1, 2); stage-1 rows give z = (2, -1 | bg 0.5); gate g = (ln 3, 0), c = 0 -> sigma = 3/4
    # alpha = (2, 0.5), beta = (1, -1):
    # s_0 = 3/4 (2 * 2 + 1) + 1/4 * 2 = 4.25;  s_1 = 3/4 (0.5 * -1 - 1) + 1/4 * -1 = -1.375;
    # background 0.5 unchanged.
    layer = DisAlignLinear(2, 3, num_classes=2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, 0.0], [1.0, -1.0], [0.5, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, 0.0]))
        layer.logit_scale.copy_(torch.tensor([2.0, 0.5]))
        layer.logit_bias.copy_(torch.tensor([1.0, -1.0]))
        layer.confidence_layer.weight.copy_(torch.tensor([[math.log(3.0), 0.0]]))
        layer.confidence_layer.bias.zero_()
    x = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[4.25, -1.375, 0.5]]))
    # the pure function on the same numbers
    out = disalign_logits(
        torch.tensor([[2.0, -1.0, 0.5]]), torch.tensor([[0.75]]), layer.logit_scale.detach(),
        layer.logit_bias.detach(),
    )
    assert torch.equal(out, torch.tensor([[4.25, -1.375, 0.5]]))
    # sigma = 0: the stage-1 logits whatever alpha and beta
    out = disalign_logits(torch.tensor([[2.0, -1.0, 0.5]]), torch.zeros(1, 1),
                          layer.logit_scale.detach(), layer.logit_bias.detach())
    assert torch.equal(out, torch.tensor([[2.0, -1.0, 0.5]]))


def test_bad_shapes_and_layers_are_refused():
    with pytest.raises(ValueError, match="disalign_logits: expected"):
        disalign_logits(torch.zeros(3, 4), torch.zeros(3, 1), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="disalign_logits: expected"):
        disalign_logits(torch.zeros(3, 4), torch.zeros(2, 1), torch.ones(3), torch.zeros(3))
    with pytest.raises(LTDetError, match="GATE_INIT_STD"):
        DisAlignLinear(4, 3, gate_init_std=-1.0)
    from lt_det.decouple import LWSLinear

    with pytest.raises(LTDetError, match="got LWSLinear"):
        DisAlignLinear.from_linear(LWSLinear.from_linear(nn.Linear(4, 3)))


# ------------------------------------------------------------------ GRW
def test_grw_with_rho_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, K + 1, generator=g)
    y = torch.randint(0, K + 1, (20,), generator=g)
    counts = torch.tensor([900.0, 300.0, 30.0, 4.0, 1.0])
    assert torch.equal(grw_weights(counts, 0.0), torch.ones(K + 1, dtype=torch.float64))
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            grw_loss(z, y, counts, rho=0.0, reduction=reduction),
            F.cross_entropy(z, y, reduction=reduction),
        )
    loss = build_cls_loss("grw", num_classes=K, class_prior=counts, rho=0.0)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y))


def test_grw_hand_computed_weights_and_weighted_mean():
    # counts (100, 1): rho 1 -> w ∝ (1/100, 1), foreground sum K = 2 -> (2/101, 200/101);
    # rho 0.5 -> w ∝ (1/10, 1) -> (2/11, 20/11); the background weight is 1.
    counts = torch.tensor([100.0, 1.0])
    torch.testing.assert_close(
        grw_weights(counts, 1.0), torch.tensor([2 / 101, 200 / 101, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        grw_weights(counts, 0.5), torch.tensor([2 / 11, 20 / 11, 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(grw_weights(counts * 7, 0.5), grw_weights(counts, 0.5))  # ratios
    # equal logits: CE = log 3 per ROI; labels (0, 1, bg): mean = sum w CE / sum w = log 3
    z = torch.zeros(3, 3)
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(grw_loss(z, y, counts, rho=1.0), torch.tensor(math.log(3.0)))
    # two ROIs with different CE: (w_0 CE_a + w_bg CE_b) / (w_0 + w_bg)
    z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]])
    y = torch.tensor([0, 2])
    ce = F.cross_entropy(z, y, reduction="none")
    w0 = 2 / 11
    expected = (w0 * ce[0] + ce[1]) / (w0 + 1)
    torch.testing.assert_close(grw_loss(z, y, counts, rho=0.5), expected)
    per_roi = grw_loss(z, y, counts, rho=0.5, reduction="none")
    torch.testing.assert_close(per_roi, torch.stack([w0 * ce[0], ce[1]]) / ((w0 + 1) / 2))
    torch.testing.assert_close(per_roi.mean(), expected)
    with pytest.raises(ValueError, match="GRW.RHO"):
        grw_weights(counts, -0.1)
    with pytest.raises(ValueError, match="GRW.RHO"):
        build_cls_loss("grw", num_classes=2, class_prior=counts, rho=-1.0)


def test_grw_empty_batch_and_labels():
    z = torch.zeros(0, K + 1, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    counts = torch.arange(1.0, K + 1)
    assert grw_loss(z, y, counts).item() == 0.0
    assert grw_loss(z, y, counts, reduction="none").shape == (0,)
    with pytest.raises(ValueError, match=r"grw_loss: gt_classes must lie in \[0, 5\]"):
        grw_loss(torch.zeros(2, K + 1), torch.tensor([0, 6]), counts)


# ------------------------------------------------------------------ stage 2
def _disalign_cfg(**overrides):
    return tiny_cfg("disalign", **{"MODEL.DECOUPLE.TRAINABLE": DISALIGN, **overrides})


def test_only_the_disalign_parameters_train():
    cfg = _disalign_cfg()
    model = make_model(cfg)
    # CLS_LOSS "grw" with a prior given here (the tiny model has no training set to count)
    predictor = model.roi_heads.box_predictor
    predictor.cls_loss = build_cls_loss(
        "grw", num_classes=K, class_prior=torch.tensor([50.0, 20.0, 8.0, 3.0, 1.0])
    )
    layer = predictor.cls_score
    assert isinstance(layer, DisAlignLinear) and layer.num_classes == K
    assert {n for n, p in model.named_parameters() if p.requires_grad} == DISALIGN_PARAMS
    optimizer = build_optimizer(cfg, model)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats = bn_stats(model)
    trainer = DecoupledTrainer(model, [batch(2)] * 3, optimizer)
    with EventStorage(0) as storage:
        for it in range(3):
            trainer.iter = it
            trainer.run_step()
            storage.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    assert changed == DISALIGN_PARAMS
    for n, b in bn_stats(model).items():
        assert torch.equal(b, stats[n]), n


def test_training_more_than_the_calibration_is_a_warning(caplog):
    with caplog.at_level("WARNING"):
        model = make_model(tiny_cfg("disalign"))  # the base TRAINABLE: cls_score entirely
    assert "also trains ['roi_heads.box_predictor.cls_score.weight'" in caplog.text
    assert model.roi_heads.box_predictor.cls_score.weight.requires_grad


def test_a_loss_other_than_grw_is_a_warning(caplog):
    from lt_det.decouple.method_disalign import DistributionAlignment

    with caplog.at_level("WARNING"):
        make_model(_disalign_cfg(**{"MODEL.ROI_BOX_HEAD.CLS_LOSS": "softmax_ce"}))
    assert "CLS_LOSS 'softmax_ce': DisAlign trains its calibration with" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the reference's loss (a grw build needs a prior)
        DistributionAlignment(trainable=DISALIGN, cls_loss="grw").apply(
            make_model(tiny_cfg("none"))
        )
    assert "CLS_LOSS" not in caplog.text


def test_stage1_model_and_fresh_disalign_model_detect_the_same():
    stage1 = make_model(tiny_cfg("none")).eval()
    model = make_model(_disalign_cfg())
    result = model.load_state_dict(stage1.state_dict(), strict=False)
    assert sorted(result.missing_keys) == sorted(DISALIGN_PARAMS) and not result.unexpected_keys
    model.eval()
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch(1)]
    with torch.no_grad():
        a, b = stage1(inputs)[0]["instances"], model(inputs)[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from lt_det.data.synthetic import generate_synthetic_lvis

    out = tmp_path_factory.mktemp("disalign_data")
    generate_synthetic_lvis(str(out), seed=0, preset="tiny")
    return str(out)


def test_stage1_then_disalign_stage2_then_eval_only_reload(tiny_data, tmp_path):
    from lt_det.checkpoint import LTCheckpointer
    from lt_det.engine import LTTrainer, eval_only_config

    from test_decouple import _trainer_cfg

    s1 = LTTrainer(_trainer_cfg(tiny_data, tmp_path / "s1", "none"))
    s1.resume_or_load(resume=False)
    s1.train()
    stage1 = {n: p.detach().clone() for n, p in s1.model.named_parameters()}
    over = {
        "MODEL.WEIGHTS": str(tmp_path / "s1" / "model_final.pth"),
        "MODEL.ROI_BOX_HEAD.CLS_LOSS": "grw",
        "MODEL.DECOUPLE.TRAINABLE": DISALIGN,
        "SOLVER.MAX_ITER": 3,
    }
    cfg = _trainer_cfg(tiny_data, tmp_path / "s2", "disalign", **over)
    s2 = LTTrainer(cfg)
    s2.resume_or_load(resume=False)
    assert torch.equal(s2.model.roi_heads.box_predictor.cls_score.logit_scale, torch.ones(6))
    s2.train()
    trained = {n: p.detach().clone() for n, p in s2.model.named_parameters()}
    assert set(trained) == set(stage1) | DISALIGN_PARAMS
    for n, p in stage1.items():
        assert torch.equal(trained[n], p), n  # the stage-1 model, classifier included, is kept
    assert not torch.equal(trained[CLS + ".logit_scale"], torch.ones(6))
    prior = s2.model.roi_heads.box_predictor.cls_loss.class_prior.clone()

    # --eval-only (lt_det.tools.train_net.run): prior from the checkpoint, every key loaded
    eval_cfg = cfg.clone()
    eval_cfg.MODEL.WEIGHTS = str(tmp_path / "s2" / "model_final.pth")
    model = LTTrainer.build_model(eval_only_config(eval_cfg))
    LTCheckpointer(model, save_dir=str(tmp_path / "eval"), must_load="all").resume_or_load(
        eval_cfg.MODEL.WEIGHTS, resume=False
    )
    for n, p in model.named_parameters():
        assert torch.equal(p, trained[n]), n
    assert torch.equal(model.roi_heads.box_predictor.cls_loss.class_prior, prior)
    model.eval()
    s2.model.eval()
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in batch(1)]
    with torch.no_grad():
        a, b = s2.model(inputs)[0]["instances"], model(inputs)[0]["instances"]
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


# ------------------------------------------------------------------ LVIS scale
def test_lvis_config_builds_the_1203_class_calibration(tmp_path):
    from lt_det.data import register_datasets_from_cfg
    from lt_det.engine import LTTrainer, load_config

    from test_lvis_scale import NUM_CLASSES, _lvis_1203

    json_file, image_root = _lvis_1203(str(tmp_path))
    name = "lt_disalign_lvis_scale_1203"
    opts = [
        "DATASETS.LVIS_FORMAT", repr([[name, json_file, image_root]]),
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path),
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "4", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "8", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "4",
    ]  # fmt: skip
    cfg = load_config(os.path.join(ROOT, "configs", "lvis_stage2_disalign.yaml"), opts)
    # the reference's stage 2: GRW rho 0.8, 9k iterations, LR 0.02 dropped at 8k, 1k warmup
    assert cfg.MODEL.ROI_BOX_HEAD.GRW.RHO == pytest.approx(0.8)
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS)) == (9000, (8000,))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS) == (0.02, 1000)
    assert cfg.DATALOADER.SAMPLER_TRAIN == "TrainingSampler"
    register_datasets_from_cfg(cfg)
    torch.manual_seed(0)
    model = LTTrainer.build_model(cfg)
    predictor = model.roi_heads.box_predictor
    layer = predictor.cls_score
    assert isinstance(layer, DisAlignLinear) and layer.out_features == NUM_CLASSES + 1
    assert layer.logit_scale.shape == layer.logit_bias.shape == (NUM_CLASSES,)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == DISALIGN_PARAMS
    weights = grw_weights(predictor.cls_loss.class_prior, predictor.cls_loss.rho)
    assert weights.shape == (NUM_CLASSES + 1,) and weights[-1] == 1.0
    torch.testing.assert_close(weights[:-1].sum(), torch.tensor(float(NUM_CLASSES)).double())
    x = torch.randn(512, 32)
    with torch.no_grad():
        stage1 = F.linear(x, layer.weight, layer.bias)
    logits = layer(x)
    assert torch.equal(logits, stage1)
    y = torch.randint(0, NUM_CLASSES + 1, (512,))
    loss = predictor.cls_loss(logits, y)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert layer.weight.grad is None and layer.logit_scale.grad.abs().sum() > 0
