"""GOL (Gumbel binary cross-entropy, lt_det.modeling.losses.gol) and FRACAL (fractal calibration,
lt_det.modeling.calibration): closed forms, hand-computed cases, stability, statistics, configs,
and both at LVIS scale (1203 classes) built from the configs.

Notation: logits z (R, K + 1), column K = background, labels y in [0, K].
  Gumbel score  p(z) = exp(-exp(-z));  -log p(z) = e^{-z} (the exponential loss);
                -log(1 - p(z)) = -log(1 - exp(-e^{-z}))
  GOL           l_i = sum_{j <= K} BCE(p(clamp(z_ij, -4, 10)), [y_i == j]), mean over ROIs
  FRACAL        z_j - w log(K pi_j) - lambda log D_j (softmax heads), D_j the box-counting
                dimension of class j's box centres
"""
import math
from unittest import mock

import pytest
import torch
from torch.nn import functional as F

from lt_det.errors import LTDetError
from lt_det.modeling.calibration import PosthocCalibration, fractal_dimensions
from lt_det.modeling.losses import build_cls_loss, gol_loss, gol_per_roi

K = 3


def _gumbel_bce(x, t):
    """BCE of the Gumbel score in float64 scalars, from the definition."""
    p = math.exp(-math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


# ---------------------------------------------------------------- GOL
def test_gol_hand_computed_roi():
    # One foreground ROI of class 0 and one background ROI, K = 3: column K is a fourth Gumbel
    # classifier whose target is 1 on background ROIs.
    z = torch.tensor([[0.0, -1.0, 2.0, -3.0], [1.5, -0.5, -4.5, 12.0]], dtype=torch.float64)
    y = torch.tensor([0, K])
    # ROI 0: e^0 + -log(1 - e^{-e}) + -log(1 - e^{-e^{-2}}) + -log(1 - e^{-e^3})
    roi0 = 1.0 + _gumbel_bce(-1.0, 0) + _gumbel_bce(2.0, 0) + _gumbel_bce(-3.0, 0)
    # ROI 1: -4.5 is clamped to -4, 12 to 10 (the target column: e^{-10})
    roi1 = _gumbel_bce(1.5, 0) + _gumbel_bce(-0.5, 0) + _gumbel_bce(-4.0, 0) + math.exp(-10.0)
    got = gol_loss(z, y, reduction="none")
    torch.testing.assert_close(got, torch.tensor([roi0, roi1], dtype=torch.float64))
    torch.testing.assert_close(gol_loss(z, y), got.mean())
    assert roi0 == pytest.approx(1.0 + 0.068266 + 2.066905 + 1.9e-9, abs=1e-6)


def test_gol_target_terms_are_the_exponential_loss_and_gradients_are_closed_form():
    # Within the clamp: target 1 -> e^{-z}, d/dz = -e^{-z}; target 0 -> d/dz = u e^{-u}/(1-e^{-u})
    z = torch.tensor([[-3.5, 0.3, 1.0, 9.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([1])
    gol_loss(z, y, reduction="sum").backward()
    u = torch.exp(-z.detach())
    expected = u * torch.exp(-u) / (1 - torch.exp(-u))
    expected[0, 1] = -u[0, 1]
    torch.testing.assert_close(z.grad, expected)
    # outside (-4, 10): no gradient, the value is the clamped one
    z = torch.tensor([[-6.0, 11.0, 0.0, -4.0]], dtype=torch.float64, requires_grad=True)
    loss = gol_loss(z, torch.tensor([0]), reduction="sum", max_loss=0.0)  # uncapped: 65 > 20
    loss.backward()
    assert z.grad[0, 0] == 0 and z.grad[0, 1] == 0 and z.grad[0, 3] == 0 and z.grad[0, 2] != 0
    expected = math.exp(4.0) + _gumbel_bce(10.0, 0) + _gumbel_bce(0.0, 0) + _gumbel_bce(-4.0, 0)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)


def test_gol_cap_and_clamp_keys():
    z = torch.full((2, K + 1), 9.0, requires_grad=True)  # every negative ~9 per column
    y = torch.tensor([0, K])
    capped = gol_loss(z, y, max_loss=20.0)
    capped.backward()
    assert float(capped.detach()) == 20.0 and float(z.grad.abs().sum()) == 0.0
    assert float(gol_loss(z.detach(), y, max_loss=0.0)) > 20.0
    assert float(gol_loss(z.detach(), y, reduction="none", max_loss=1.0).min()) > 20  # uncapped
    for kwargs, key in (({"clamp_min": -60.0}, "CLAMP_MIN"), ({"clamp_min": 3.0, "clamp_max": 2.0},
                        "CLAMP_MIN"), ({"max_loss": -1.0}, "MAX_LOSS"),
                        ({"bias_init": float("nan")}, "BIAS_INIT")):
        with pytest.raises(LTDetError, match=f"MODEL.ROI_BOX_HEAD.GOL.{key}"):
            build_cls_loss("gol", num_classes=K, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gol_is_finite_for_extreme_logits(dtype):
    big = torch.tensor([-1e4, -100.0, -50.0, -5.0, 0.0, 5.0, 50.0, 100.0, 1e4])
    z = big.repeat(len(big), 1).to(dtype)
    y = torch.arange(len(big))
    y[-1] = len(big) - 1  # background label on the last row
    for lo, hi in ((-4.0, 10.0), (-50.0, float("inf"))):
        x = z.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            rows = gol_loss(x, y, clamp_min=lo, clamp_max=hi, reduction="none")
        assert rows.dtype == torch.float32 and torch.isfinite(rows).all()
        rows.sum().backward()
        assert torch.isfinite(x.grad.float()).all()
        ref = gol_per_roi(z.float(), y, clamp_min=lo, clamp_max=hi)
        torch.testing.assert_close(rows, ref, rtol=1e-6, atol=1e-6)
    scores = build_cls_loss("gol", num_classes=len(big) - 1).predict_probs(z.float())
    assert torch.isfinite(scores).all() and scores.min() >= 0 and scores.max() <= 1


def test_gol_fused_matches_plain_form_at_detector_scale():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(600, 81, generator=g) * 3 - 2
    y = torch.randint(0, 81, (600,), generator=g)
    a, b = z.clone().requires_grad_(), z.clone().double().requires_grad_()
    fused = gol_loss(a, y, max_loss=0.0)
    plain = gol_per_roi(b, y).mean()
    torch.testing.assert_close(fused.double(), plain, rtol=1e-6, atol=0)
    fused.backward()
    plain.backward()
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-9)


def test_gol_bias_init_and_config():
    from detectron2.config import get_cfg

    from lt_det import add_lt_config
    from lt_det.modeling.losses import build_cls_loss_from_cfg

    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "gol"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.GOL.CLAMP_MAX = 7.0
    loss = build_cls_loss_from_cfg(cfg)
    assert (loss.clamp_min, loss.clamp_max, loss.max_loss) == (-4.0, 7.0, 20.0)
    bias = torch.zeros(K + 1)
    loss.init_cls_bias_(bias)
    p = loss.predict_probs(bias[None])
    torch.testing.assert_close(p[0, :K], torch.full((K,), math.exp(-math.exp(2.0))))


# ---------------------------------------------------------------- FRACAL: fractal dimension
def test_fractal_dimension_of_a_line_a_plane_and_hand_computed_sets():
    side = torch.arange(64, dtype=torch.float64).add(0.5).div(64)
    plane = torch.cartesian_prod(side, side)  # 4096 centres filling the square
    fine = torch.arange(4096, dtype=torch.float64).add(0.5).div(4096)
    line = torch.stack([fine, torch.full_like(fine, 0.3)], dim=1)  # on a horizontal line
    diagonal = torch.stack([fine, fine], dim=1)
    corners = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]], dtype=torch.float64)
    cluster = torch.tensor([[0.1, 0.1], [0.2, 0.1], [0.1, 0.2], [0.2, 0.2]], dtype=torch.float64)
    # 9 centres on a 3 x 3 lattice: d = 1, 2, 3 are used (9 >= d^2): N = 1, 4, 9 -> slope 2
    lattice = torch.cartesian_prod(*(torch.tensor([1 / 6, 1 / 2, 5 / 6], dtype=torch.float64),) * 2)
    # 9 centres in one column: N = 1, 2, 3 -> slope 1
    column = torch.stack([torch.full((9,), 0.05, dtype=torch.float64),
                          torch.arange(9, dtype=torch.float64).add(0.5).div(9)], dim=1)
    sets = [plane, line, diagonal, corners, cluster, lattice, column, corners[:3]]
    classes = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)])
    dims = fractal_dimensions(classes, torch.cat(sets), len(sets) + 1)
    expected = [2.0, 1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 1.0, 1.0]  # cluster: slope 0 -> 1; < 4: 1
    torch.testing.assert_close(dims, torch.tensor(expected, dtype=torch.float64))
    # random centres: between a line and the plane, below 2 (finite sample)
    g = torch.Generator().manual_seed(0)
    d = fractal_dimensions(torch.zeros(3000, dtype=torch.long),
                           torch.rand(3000, 2, generator=g, dtype=torch.float64), 1)
    assert 1.8 < float(d) < 2.0


# ---------------------------------------------------------------- FRACAL: calibration
def _fracal(strength=2.0, freq_weight=1 / math.log(10)):
    counts = torch.tensor([500.0, 20.0, 2.0])
    dims = torch.tensor([1.9, 1.4, 1.0])
    log_ref = torch.stack([torch.log(K * counts / 1000.0), torch.log(dims)])
    cal = PosthocCalibration(method="fracal", log_ref=log_ref, strength=strength,
                             freq_weight=freq_weight)
    return cal, counts / 1000.0, dims


def test_fracal_strength_zero_changes_nothing():
    z = torch.randn(7, K + 1, generator=torch.Generator().manual_seed(0))
    cal, _, _ = _fracal(strength=0.0, freq_weight=0.0)
    for name in ("softmax_ce", "balanced_softmax", "bags"):
        kw = {"class_prior": torch.tensor([0.5, 0.02, 0.002])} if name == "balanced_softmax" else {}
        if name == "bags":
            kw = {"instance_counts": [500, 20, 2]}
        loss = build_cls_loss(name, num_classes=K, **kw)
        x = torch.cat([z, z[:, :getattr(loss, "num_extra_logits", 0)]], dim=1)
        got = cal.predict_probs(x, loss)
        torch.testing.assert_close(got, loss.predict_probs(x), rtol=0, atol=0)
    # per-class heads: the reference's product a(z) * a(z) -- the same ranking of every score
    for name in ("sigmoid_ce", "gol"):
        loss = build_cls_loss(name, num_classes=K)
        plain = loss.predict_probs(z)[:, :K]
        torch.testing.assert_close(cal.predict_probs(z, loss)[:, :K], plain**2)


def test_fracal_softmax_form_divides_by_frequency_and_dimension():
    z = torch.randn(5, K + 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w, lam = 0.7, 1.5
    cal, pi, dims = _fracal(strength=lam, freq_weight=w)
    p = F.softmax(z, dim=1)
    q = torch.cat([p[:, :K] / ((K * pi) ** w * dims**lam), p[:, K:]], dim=1)
    loss = build_cls_loss("softmax_ce", num_classes=K)
    torch.testing.assert_close(cal.predict_probs(z, loss), q / q.sum(dim=1, keepdim=True),
                               rtol=1e-6, atol=1e-7)
    # rare (and spatially concentrated) classes gain against frequent, spread ones
    ratio = cal.predict_probs(z, loss)[:, :K] / p[:, :K]
    assert (ratio[:, 2] > ratio[:, 1]).all() and (ratio[:, 1] > ratio[:, 0]).all()


def _register(name, dicts):
    from detectron2.data import DatasetCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)


def test_box_centres_and_log_ref_from_the_training_statistics():
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    from lt_det import add_lt_config
    from lt_det.data.train_stats import train_box_centres
    from lt_det.modeling.calibration import calibration_from_cfg

    def ann(c, box, mode=BoxMode.XYWH_ABS, crowd=0):
        return {"category_id": c, "bbox": box, "bbox_mode": mode, "iscrowd": crowd}

    # class 0: four centres at the quadrant centres (D = 2); class 1: one image; class 2: none
    a = [{"image_id": 1, "width": 200, "height": 100, "annotations": [
        ann(0, [40, 15, 20, 20]), ann(0, [140, 15, 20, 20]),
        ann(0, [40.0, 65.0, 60.0, 85.0], BoxMode.XYXY_ABS), ann(1, [0, 0, 10, 10]),
        ann(2, [0, 0, 200, 100], crowd=1)]}]
    b = [{"image_id": 2, "width": 200, "height": 100, "annotations": [ann(0, [140, 65, 20, 20])]},
         {"image_id": 3, "width": 50, "height": 50, "annotations": []}]
    _register("fracal_stats_a", a)
    _register("fracal_stats_b", b)
    try:
        classes, centres = train_box_centres(["fracal_stats_a", "fracal_stats_b"], K)
        assert classes.tolist() == [0, 0, 0, 1, 0]  # crowd left out
        torch.testing.assert_close(centres, torch.tensor(
            [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.025, 0.05], [0.75, 0.75]],
            dtype=torch.float64))
        cfg = add_lt_config(get_cfg())
        cfg.DATASETS.TRAIN = ("fracal_stats_a", "fracal_stats_b")
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
        cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD = "fracal"
        cal = calibration_from_cfg(cfg)
        assert cal.strength == 2.0 and cal.freq_weight == pytest.approx(1 / math.log(10))
        # images with the class: 2, 1, 0 (floored at 0.5) of N = 3 images
        n = torch.tensor([2.0, 1.0, 0.5])
        torch.testing.assert_close(cal.log_ref[0], torch.log(K * n / 3))
        torch.testing.assert_close(cal.log_ref[1], torch.log(torch.tensor([2.0, 1.0, 1.0])))
        cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_LAMBDA = -1.0
        with pytest.raises(LTDetError, match="CALIBRATION.FRACAL_LAMBDA"):
            calibration_from_cfg(cfg)
    finally:
        DatasetCatalog.remove("fracal_stats_a")
        DatasetCatalog.remove("fracal_stats_b")


# ---------------------------------------------------------------- LVIS scale
def test_gol_and_fracal_build_from_configs_train_and_infer_at_1203_classes(tmp_path):
    import os

    from test_lvis_scale import H, NUM_CLASSES, ROOT, W, _lvis_1203

    from lt_det.data import register_datasets_from_cfg
    from lt_det.engine import LTTrainer, load_config

    json_file, image_root = _lvis_1203(str(tmp_path))
    name = "lt_gol_fracal_1203"
    opts = [
        "DATASETS.LVIS_FORMAT", repr([[name, json_file, image_root]]),
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path),
        "MODEL.MASK_ON", "False",
        "INPUT.MIN_SIZE_TRAIN", f"({H},)", "INPUT.MAX_SIZE_TRAIN", str(W),
        "INPUT.MIN_SIZE_TEST", str(H), "INPUT.MAX_SIZE_TEST", str(W),
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "4",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD", "fracal",
    ]  # fmt: skip
    cfg = load_config(os.path.join(ROOT, "configs", "lvis_gol.yaml"), opts)
    register_datasets_from_cfg(cfg)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == NUM_CLASSES
    torch.manual_seed(0)
    trainer = LTTrainer(cfg)  # one GOL training step at 1203 classes
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        trainer.storage, trainer.iter = storage, 0
        trainer.run_step()
        loss_cls = storage.histories()["loss_cls"].latest()
    assert math.isfinite(loss_cls) and 0 < loss_cls <= 20
    predictor = trainer.model.roi_heads.box_predictor
    assert predictor.cls_loss.loss_name == "gol" and predictor.calibration.method == "fracal"
    torch.testing.assert_close(predictor.calibration.log_ref[1],
                               torch.zeros(NUM_CLASSES))  # one box per class: D = 1
    model = trainer.model.eval()
    real_probs, scored = predictor.predict_probs, []

    def record(predictions, proposals):
        probs = real_probs(predictions, proposals)
        scored.extend(probs)
        return probs

    seen = 0
    with torch.no_grad(), mock.patch.object(predictor, "predict_probs", side_effect=record):
        for inputs in LTTrainer.build_test_loader(cfg, name):
            for out in model(inputs):
                inst = out["instances"]
                seen += 1
                assert torch.isfinite(inst.scores).all()
                assert bool(((inst.scores > 0) & (inst.scores <= 1)).all())
    assert seen == 3 and len(scored) == 3
    for probs in scored:  # Gumbel x adjusted Gumbel, finite, column K unused
        assert probs.shape[1] == NUM_CLASSES + 1 and torch.isfinite(probs).all()
        assert float(probs.min()) >= 0 and float(probs.max()) <= 1
