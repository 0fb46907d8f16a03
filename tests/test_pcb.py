"""Pairwise Class Balance (lt_det.modeling.losses.pcb): closed-form values, state, schedule.

Notation: logits z (R, K + 1), column K = background, labels y in [0, K]; M (K, K) the confusion
matrix (row = ground-truth class), t_y = column y of M normalised, alpha the regulariser weight.
Expected values are computed here from the definitions (fractions for the matrix, math.log for
the losses), independently of the library's fused rewrite:

    loss of a foreground ROI  (1 - alpha) * CE(z, y) + alpha * sum_c t_y[c] log(t_y[c] / p_c)
    row update                M_i <- m M_i + (1 - m) (mean of softmax(z[:K]) of class-i ROIs)

The reference's maths (megvii-research/PCB) is transcribed in tests/test_reference_defaults.py;
state across checkpoints and ranks in tests/test_peer_state.py.
"""
import math
from fractions import Fraction

import pytest
import torch
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from lt_det.modeling.losses import build_cls_loss, pcb_loss, seesaw_loss, softmax_ce_loss
from lt_det.modeling.losses.pcb import (
    pcb_batch_statistics,
    pcb_per_roi,
    pcb_soft_targets,
    pcb_update_confusion_,
)

from test_lvis_scale import NUM_CLASSES, lvis_scale_cfg  # noqa: F401  (the 1203-class fixture)

K = 5


def _inputs(r=11, k=K, dtype=torch.float64, seed=0, fg_only=False, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g, dtype=dtype) * scale
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[:k] = torch.arange(k)
    if fg_only:
        y = torch.where(y == k, torch.zeros_like(y), y)
    else:
        y[k] = k
    m = torch.rand(k, k, generator=g, dtype=dtype) + 0.05
    counts = torch.tensor([400.0, 90.0, 20.0, 4.0, 1.0, 2.0][:k], dtype=dtype)
    return z, y, m / m.sum(dim=1, keepdim=True), counts


def _primed(base="softmax_ce", k=K, dtype=torch.float64, **kw):
    """A module whose regulariser is on: every class counted, a random row-stochastic matrix."""
    loss = build_cls_loss("pcb", num_classes=k, base=base, **kw).to(dtype)
    _, _, m, counts = _inputs(k=k, dtype=dtype)
    with torch.no_grad():
        loss.confusion.copy_(m)
        loss.counts.copy_(counts)
    assert loss.current_alpha() == loss.alpha
    return loss


# ---------------------------------------------------------------- alpha 0 is the base loss
@pytest.mark.parametrize("fg_only", [False, True])
def test_alpha_zero_is_the_base_loss_exactly(fg_only):
    z, y, m, counts = _inputs(fg_only=fg_only)
    for base, expected in (
        ("softmax_ce", lambda x: softmax_ce_loss(x, y)),
        ("seesaw", lambda x: seesaw_loss(x, y, counts)),
    ):
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        got = pcb_loss(a, y, m, alpha=0.0, base=base, counts=counts)
        ref = expected(b)
        assert torch.equal(got.detach(), ref.detach()), base
        got.backward()
        ref.backward()
        assert torch.equal(a.grad, b.grad), base
        plain = pcb_per_roi(z, y, m, alpha=0.0, base=base, counts=counts)
        torch.testing.assert_close(plain.mean(), ref.detach(), rtol=1e-12, atol=1e-12)
    # the module with ALPHA 0 and a primed state: the base module's loss
    for base, other in (("softmax_ce", "softmax_ce"), ("seesaw", "seesaw")):
        loss = _primed(base, alpha=0.0)
        base_module = build_cls_loss(other, num_classes=K).double()
        if base == "seesaw":
            base_module.counts.copy_(loss.counts)
        assert torch.equal(loss(z, y), base_module(z, y))


# ---------------------------------------------------------------- a hand-computed case
def test_hand_computed_update_targets_and_loss_on_three_classes():
    k, m, alpha = 3, 0.5, 0.4
    loss = build_cls_loss("pcb", num_classes=k, alpha=alpha, momentum=m).double()
    ln = math.log
    # batch 1: two class-0 ROIs, one each of classes 1 and 2, one background ROI; foreground
    # softmaxes [1/2, 1/4, 1/4], [1/3, 1/3, 1/3], [1/5, 3/5, 1/5], [1/6, 1/6, 2/3]
    z1 = torch.tensor([[ln(2), 0, 0, 5.0], [0, 0, 0, -1.0], [0, ln(3), 0, 2.0],
                       [0, 0, ln(4), 0.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    y1 = torch.tensor([0, 0, 1, 2, 3])
    first = loss(z1.clone().requires_grad_(), y1)
    # no class counted before: the regulariser is off, plain CE
    torch.testing.assert_close(first.detach(), F.cross_entropy(z1, y1))
    f = Fraction
    m1 = [[(f(1, 2) + f(1, 3)) / 2, (f(1, 4) + f(1, 3)) / 2, (f(1, 4) + f(1, 3)) / 2],
          [f(1, 5), f(3, 5), f(1, 5)], [f(1, 6), f(1, 6), f(2, 3)]]  # first update sets rows
    torch.testing.assert_close(loss.confusion, torch.tensor([[float(v) for v in r] for r in m1],
                                                            dtype=torch.float64))
    assert loss.counts.tolist() == [2.0, 1.0, 1.0]

    # batch 2: one class-0 ROI with foreground softmax [1/4, 1/2, 1/4] and a background ROI
    z2 = torch.tensor([[0, ln(2), 0, 1.0], [0.5, 0, -0.5, 1.0]], dtype=torch.float64)
    y2 = torch.tensor([0, 3])
    x2 = z2.clone().requires_grad_()
    second = loss(x2, y2)
    # its loss uses M after batch 1: t_0 = column 0 of m1 normalised = [25, 12, 10] / 47
    col0 = [m1[c][0] for c in range(k)]
    t0 = [float(v / sum(col0)) for v in col0]
    assert t0 == pytest.approx([25 / 47, 12 / 47, 10 / 47])
    p = torch.softmax(z2, dim=1).tolist()
    ce_fg = -ln(p[0][0])
    kl = sum(t * ln(t / p[0][c]) for c, t in enumerate(t0))
    expected = ((1 - alpha) * ce_fg + alpha * kl + -ln(p[1][3])) / 2
    assert second.item() == pytest.approx(expected, rel=1e-12)
    second.backward()
    # gradient of a foreground row: (softmax - (1 - alpha) e_y - alpha t_y) / R
    grad0 = [(p[0][c] - (1 - alpha) * (c == 0) - alpha * (t0[c] if c < k else 0)) / 2
             for c in range(k + 1)]
    assert x2.grad[0].tolist() == pytest.approx(grad0, rel=1e-10, abs=1e-14)
    assert x2.grad[1].tolist() == pytest.approx(
        [(p[1][c] - (c == 3)) / 2 for c in range(k + 1)], rel=1e-10, abs=1e-14)
    # M after batch 2: row 0 <- 0.5 * row 0 + 0.5 * [1/4, 1/2, 1/4] (sums to 1 already)
    row0 = [f(1, 2) * v + f(1, 2) * b for v, b in zip(m1[0], [f(1, 4), f(1, 2), f(1, 4)])]
    assert row0 == [f(1, 3), f(19, 48), f(13, 48)]
    m2 = [row0, m1[1], m1[2]]
    torch.testing.assert_close(loss.confusion, torch.tensor([[float(v) for v in r] for r in m2],
                                                            dtype=torch.float64))
    assert loss.counts.tolist() == [3.0, 1.0, 1.0]

    # t_y of every class from M after batch 2, and their entropies
    targets, entropy = pcb_soft_targets(loss.confusion)
    for y in range(k):
        col = [m2[c][y] for c in range(k)]
        t = [float(v / sum(col)) for v in col]
        assert targets[y].tolist() == pytest.approx(t, rel=1e-12)
        assert float(entropy[y]) == pytest.approx(-sum(v * ln(v) for v in t), rel=1e-12)
    # zero logits: every probability 1/4, so the loss of a class-y ROI is ln 4 - alpha H(t_y)
    z0 = torch.zeros(k + 1, k + 1, dtype=torch.float64)
    y0 = torch.arange(k + 1)
    per_roi = loss(z0, y0, reduction="none")  # no grad: no update
    assert per_roi.tolist() == pytest.approx(
        [ln(4) - alpha * float(entropy[y]) for y in range(k)] + [ln(4)], rel=1e-12)
    assert loss.counts.tolist() == [3.0, 1.0, 1.0]


def test_update_leaves_absent_classes_and_renormalises_rows():
    m = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    sums = torch.tensor([[1.2, 0.6, 0.2], [0.0] * 3, [0.0] * 3], dtype=torch.float64)
    n = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    out = pcb_update_confusion_(m.clone(), sums, n, momentum=0.9)
    row0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64) * 0.9 + 0.1 * sums[0] / 2
    torch.testing.assert_close(out[0], row0 / row0.sum())
    torch.testing.assert_close(out[1:], m[1:])  # classes 1 and 2: not in the batch
    # the batch statistics: per-class sums of the foreground softmax, background not counted
    z, y, _, _ = _inputs()
    s, cnt = pcb_batch_statistics(z, y)
    for c in range(K):
        rows = y == c
        torch.testing.assert_close(s[c], torch.softmax(z[rows, :K], dim=1).sum(dim=0))
        assert float(cnt[c]) == float(rows.sum())


def test_a_column_without_mass_gives_the_one_hot_target():
    m = torch.tensor([[0.7, 0.0, 0.3], [0.2, 0.0, 0.8], [0.5, 0.0, 0.5]], dtype=torch.float64)
    targets, entropy = pcb_soft_targets(m)
    assert targets[1].tolist() == [0.0, 1.0, 0.0] and float(entropy[1]) == 0.0
    torch.testing.assert_close(targets[0], m[:, 0] / m[:, 0].sum())
    sub, ent = pcb_soft_targets(m, torch.tensor([2, 1]))
    torch.testing.assert_close(sub, targets[[2, 1]])
    torch.testing.assert_close(ent, entropy[[2, 1]])


# ---------------------------------------------------------------- the fused form
@pytest.mark.parametrize("base", ["softmax_ce", "seesaw"])
@pytest.mark.parametrize("fg_only", [False, True])
def test_forward_equals_plain_ops_and_is_twice_differentiable(base, fg_only):
    loss = _primed(base)
    z, y, _, _ = _inputs(r=13, fg_only=fg_only, seed=1)
    x = z.clone().requires_grad_()
    per_roi = loss.per_roi(x, y)  # before forward: forward updates the state after its loss
    torch.testing.assert_close(loss(x, y, reduction="none"), per_roi, rtol=1e-10, atol=1e-12)
    w = torch.rand(13, dtype=torch.float64)
    (g_fwd,) = torch.autograd.grad((_primed(base)(x, y, reduction="none") * w).sum(), x)
    (g_roi,) = torch.autograd.grad((per_roi * w).sum(), x, create_graph=True)
    torch.testing.assert_close(g_roi, g_fwd, rtol=1e-9, atol=1e-12)
    (h,) = torch.autograd.grad((g_roi * torch.randn_like(g_roi)).sum(), x)
    assert torch.isfinite(h).all()
    for reduction, reduce in (("mean", torch.mean), ("sum", torch.sum)):
        got = _primed(base)(z, y, reduction=reduction)
        torch.testing.assert_close(got, reduce(per_roi.detach()), rtol=1e-10, atol=1e-12)


def test_extreme_logits_stay_finite_and_exact():
    # lse is read off the softmax's largest entry: ROIs whose true-class probability underflows
    loss = _primed(dtype=torch.float32)
    z, y, _, _ = _inputs(r=16, dtype=torch.float32, seed=2, scale=60.0)
    expected = pcb_per_roi(z.double(), y, loss.confusion.double(), alpha=0.4)
    x = z.clone().requires_grad_()
    got = loss(x, y, reduction="none")
    assert torch.isfinite(got).all() and got.max().item() > 100
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-3)
    got.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_empty_batch_no_inplace_edit_and_bf16_autocast():
    z, y, _, _ = _inputs(dtype=torch.float32)
    for base in ("softmax_ce", "seesaw"):
        loss = _primed(base, dtype=torch.float32)
        before = z.clone()
        loss(z.clone().requires_grad_(), y)
        torch.testing.assert_close(z, before, rtol=0, atol=0)
        empty = z[:0].clone().requires_grad_()
        out = loss(empty, y[:0])
        assert float(out.detach()) == 0.0
        out.backward()
        loss = _primed(base, dtype=torch.float32)
        ref = loss.per_roi(z, y).mean()
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            got = loss(z.bfloat16().requires_grad_(), y)
        assert got.dtype == torch.float32
        assert float(got.detach()) == pytest.approx(float(ref), rel=0.05)


# ---------------------------------------------------------------- schedule and state
def test_regulariser_waits_for_the_start_iteration_and_every_class():
    z, y, _, counts = _inputs()
    loss = build_cls_loss("pcb", num_classes=K, start_iter=10).double()
    with torch.no_grad():
        loss.confusion.copy_(_inputs()[2])
        loss.counts.copy_(counts)
    base = F.cross_entropy(z, y)
    assert loss.current_alpha() == 0.0  # outside a training loop: iteration 0
    for it, on in ((9, False), (10, True), (11, True)):
        with EventStorage(it):
            assert loss.current_alpha() == (0.4 if on else 0.0)
            value = loss(z, y)
        assert bool(torch.equal(value, base)) is not on, it
    loss.counts[3] = 0  # a class not seen yet: off
    with EventStorage(20):
        assert torch.equal(loss(z, y), base)


def test_the_regulariser_logs_when_it_waits_and_when_it_comes_on(caplog):
    z, y, _, counts = _inputs()
    loss = build_cls_loss("pcb", num_classes=K, start_iter=2).double()
    with torch.no_grad():
        loss.counts.copy_(counts)
        loss.counts[1] = 0
    caplog.set_level("INFO", logger="lt_det.modeling.losses.pcb")
    for it in range(6):
        with EventStorage(it):
            if it == 4:
                loss.counts.fill_(1.0)
            loss(z.clone().requires_grad_(), torch.full_like(y, K))  # background: counts stay
    lines = [r.getMessage() for r in caplog.records if r.name == "lt_det.modeling.losses.pcb"]
    assert lines == [
        f"PCB: iteration 2 reached START, but 1 of {K} classes have had no ROI labelled with them "
        "yet; the regulariser starts once every class has had one.",
        "PCB: the confusion regulariser (alpha=0.4) is on from iteration 4.",
    ]


def test_state_updates_after_the_loss_and_only_when_trained_on():
    z, y, _, _ = _inputs()
    loss = _primed()
    m0, n0 = loss.confusion.clone(), loss.counts.clone()
    with torch.no_grad():
        loss(z.clone().requires_grad_(), y)
    loss(z, y)  # logits without grad
    loss.per_roi(z.clone().requires_grad_(), y)
    assert torch.equal(loss.confusion, m0) and torch.equal(loss.counts, n0)
    first = loss(z.clone().requires_grad_(), y)
    torch.testing.assert_close(first, pcb_loss(z, y, m0, counts=n0))  # the state as it was
    s, n = pcb_batch_statistics(z, y)
    torch.testing.assert_close(loss.counts, n0 + n)
    torch.testing.assert_close(loss.confusion, pcb_update_confusion_(m0.clone(), s, n))
    torch.testing.assert_close(loss.confusion.sum(dim=1), torch.ones(K, dtype=torch.float64))
    assert not torch.equal(loss.confusion, m0)
    state = loss.state_dict()
    assert set(state) == {"confusion", "counts"}
    copy = build_cls_loss("pcb", num_classes=K).double()
    copy.load_state_dict(state)
    torch.testing.assert_close(copy(z, y), loss(z, y))


def test_pure_function_refuses_bad_arguments():
    z, y, m, counts = _inputs()
    with pytest.raises(ValueError, match="pcb_loss: alpha must lie in"):
        pcb_loss(z, y, m, alpha=1.5)
    with pytest.raises(ValueError, match="pcb_loss: base must be one of"):
        pcb_loss(z, y, m, base="focal")
    with pytest.raises(ValueError, match="base 'seesaw' needs counts"):
        pcb_loss(z, y, m, base="seesaw")
    with pytest.raises(ValueError, match=r"pcb_loss: logits have \d+ columns"):
        pcb_loss(z, y, m[:3, :3])


# ---------------------------------------------------------------- config
def test_config_defaults_keys_and_refusals():
    from detectron2.config import get_cfg

    from lt_det import add_lt_config
    from lt_det.engine.defaults import check_config_values
    from lt_det.errors import LTDetError
    from lt_det.modeling.losses import build_cls_loss_from_cfg

    cfg = add_lt_config(get_cfg())
    node = cfg.MODEL.ROI_BOX_HEAD.PCB
    assert (node.BASE, node.ALPHA, node.MOMENTUM) == ("softmax_ce", 0.4, 0.99)
    assert node.START == pytest.approx(17 / 24)
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "pcb"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.SOLVER.MAX_ITER = 240
    loss = build_cls_loss_from_cfg(cfg)
    assert (loss.alpha, loss.momentum, loss.start_iter, loss.base) == (0.4, 0.99, 170, "softmax_ce")
    check_config_values(cfg)
    for key, value, text in (("ALPHA", 1.5, "in [0, 1]"), ("MOMENTUM", 1.0, "in [0, 1)"),
                             ("START", -0.1, "in [0, 1]"), ("BASE", "focal", "valid values")):
        bad = cfg.clone()
        bad.MODEL.ROI_BOX_HEAD.PCB[key] = value
        with pytest.raises(LTDetError) as info:
            check_config_values(bad)
        assert f"MODEL.ROI_BOX_HEAD.PCB.{key}" in str(info.value) and text in str(info.value)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- LVIS scale
def test_lvis_scale_1203_classes_builds_and_trains_a_step(lvis_scale_cfg):  # noqa: F811
    from lt_det.engine import LTTrainer

    cfg = lvis_scale_cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "pcb"
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.SOLVER.MAX_ITER = 10
    cfg.MODEL.ROI_BOX_HEAD.PCB.START = 0.0
    trainer = LTTrainer(cfg)
    loss = trainer.model.roi_heads.box_predictor.cls_loss
    assert loss.confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    with torch.no_grad():  # as after the first epoch: every class counted, uniform rows
        loss.counts.fill_(1.0)
        loss.confusion.fill_(1.0 / NUM_CLASSES)
    assert loss.current_alpha() == 0.4
    with EventStorage(0) as storage:
        trainer.storage, trainer.iter = storage, 0
        trainer.run_step()
        value = storage.history("loss_cls").latest()
    assert math.isfinite(value) and value > 0
    seen = loss.counts > 1
    assert 0 < int(seen.sum()) < NUM_CLASSES  # the classes of the batch's foreground ROIs
    torch.testing.assert_close(loss.confusion.sum(dim=1), torch.ones(NUM_CLASSES))
    assert not torch.allclose(loss.confusion[seen], torch.full_like(loss.confusion[seen],
                                                                    1.0 / NUM_CLASSES))
    assert torch.equal(loss.confusion[~seen],
                       torch.full_like(loss.confusion[~seen], 1.0 / NUM_CLASSES))
