"""Closed-form and hand-computed tests of the ECM and ACSL losses (lt_det.modeling.losses), and
their 1203-class (LVIS-scale) build from the configs.

Notation: logits z (R, K + 1), column K = background, labels y in [0, K], t = onehot(y, K + 1).
Expected values are computed here from the papers' definitions:
  ECM   l = sum_{c <= K} w_c BCE(sigmoid(2 z_c + s_c), t_c), with counts n_c (background
        n_K = r * sum_j n_j), N_c = sum n - n_c, s_c = log(n_c / N_c) / 4,
        a_c = N_c / n_c, w_c = a_c log((1 + a_c) / a_c); scores sigmoid(z_j) (1 - sigmoid(z_K))
  ACSL  l = sum_{c <= K} w_c BCE(sigmoid(z_c), t_c), w_c = 1 at the label, on a foreground ROI
        [sigmoid(z_c) >= xi] elsewhere, on a background ROI 1 for the groups drawn for it
"""
import math
import os

import pytest
import torch
from torch.nn import functional as F

from lt_det.errors import LTDetError
from lt_det.modeling.losses import (
    acsl_background_draw,
    acsl_class_groups,
    acsl_loss,
    acsl_per_roi,
    build_cls_loss,
    ecm_loss,
    ecm_margins,
    ecm_per_roi,
)

K = 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREQUENCY = ["f", "c", "r", "f", "r"]


def _inputs(r=12, k=K, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g, dtype=dtype) * 2
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[0], y[1], y[2], y[3] = k, 0, 3, k
    return z, y


def _bce(x, t):
    return math.log1p(math.exp(-x)) if t else math.log1p(math.exp(x))


def _build(name, **kw):
    if name == "ecm":
        kw.setdefault("class_counts", [400.0, 90.0, 12.0, 3.0, 1.0])
    else:
        kw.setdefault("class_frequency", FREQUENCY)
        kw.setdefault("bg_fractions", [0.5, 0.5, 1.0])
    return build_cls_loss(name, num_classes=K, **kw)


# ---------------------------------------------------------------- ECM
def test_ecm_one_class_with_equal_background_is_scaled_bce_of_twice_the_logits():
    # K = 1 and fg_bg_ratio 1: both columns have n = N, so s = 0 and w = 1 * log 2
    z, _ = _inputs(k=1)
    y = torch.tensor([0, 1] * 6)
    expected = math.log(2) * F.binary_cross_entropy_with_logits(
        2 * z, F.one_hot(y, 2).to(z.dtype), reduction="none"
    ).sum(dim=1)
    got = ecm_loss(z, y, torch.tensor([7.0], dtype=z.dtype), fg_bg_ratio=1.0, reduction="none")
    torch.testing.assert_close(got, expected)


def test_ecm_margins_and_weights_by_hand():
    # counts [3, 1], ratio 2: n = [3, 1, 8], N = 12, negatives [9, 11, 4]
    shift, weight = ecm_margins(torch.tensor([3.0, 1.0], dtype=torch.float64), 2.0)
    torch.testing.assert_close(
        shift, torch.tensor([math.log(3 / 9), math.log(1 / 11), math.log(8 / 4)],
                            dtype=torch.float64) / 4,
    )
    torch.testing.assert_close(
        weight, torch.tensor([3 * math.log(4 / 3), 11 * math.log(12 / 11), 0.5 * math.log(3)],
                             dtype=torch.float64),
    )
    # the reference's two margins: m+ - m- is the shift
    n_pos, n_neg = torch.tensor([3.0, 1.0, 8.0]), torch.tensor([9.0, 11.0, 4.0])
    m_pos = torch.log(1 + (n_pos / n_neg) ** 0.25)
    m_neg = torch.log(1 + (n_neg / n_pos) ** 0.25)
    torch.testing.assert_close(shift.float(), m_pos - m_neg)


def test_ecm_loss_by_hand():
    counts = torch.tensor([3.0, 1.0], dtype=torch.float64)
    shift, weight = ecm_margins(counts, 2.0)
    s, w = shift.tolist(), weight.tolist()
    z = torch.tensor([[0.5, -1.0, 0.2], [-0.3, 0.8, 1.5], [2.0, 0.0, -2.0]], dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    expected = []
    for i in range(3):
        row = sum(w[c] * _bce(2 * float(z[i, c]) + s[c], int(y[i]) == c) for c in range(3))
        expected.append(row)
    expected = torch.tensor(expected, dtype=torch.float64)
    got = ecm_loss(z, y, counts, fg_bg_ratio=2.0, reduction="none")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ecm_loss(z, y, counts, fg_bg_ratio=2.0), expected.mean())
    torch.testing.assert_close(ecm_loss(z, y, counts, fg_bg_ratio=2.0, reduction="sum"),
                               expected.sum())


def test_ecm_rare_classes_get_the_wider_margin_and_background_weighs_about_a_third():
    shift, weight = ecm_margins(torch.tensor([1000.0, 100.0, 10.0, 1.0]))
    assert bool((shift[:4].diff() < 0).all())  # rarer: more negative shift
    assert bool((weight[:4].diff() > 0).all() & (weight[:4] > 0.9).all() & (weight < 1).all())
    assert float(weight[4]) == pytest.approx(math.log1p(6.3313) / 6.3313, rel=1e-6)


def test_ecm_scores_and_zero_bias():
    z, _ = _inputs()
    loss = _build("ecm")
    probs = loss.predict_probs(z)
    torch.testing.assert_close(probs[:, :K], torch.sigmoid(z[:, :K]) * torch.sigmoid(-z[:, K:]))
    bias = torch.zeros(K + 1)
    loss.init_cls_bias_(bias)
    assert float(bias.abs().max()) == 0.0


def test_ecm_saturated_logits_stay_finite():
    z, y = _inputs(r=6, dtype=torch.float32)
    z[0, :] = 80.0
    z[1, :] = -80.0
    x = z.clone().requires_grad_()
    loss = ecm_loss(x, y, torch.tensor([400.0, 90.0, 12.0, 3.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(loss, ecm_per_roi(z, y, torch.tensor([400.0, 90, 12, 3, 1])).mean())


# ---------------------------------------------------------------- ACSL
def test_acsl_with_every_weight_one_is_sigmoid_bce_over_k_plus_one_columns():
    # xi below every score and all background ROIs suppressing every group
    z, y = _inputs()
    keep = torch.ones(len(y), 3, dtype=torch.bool)
    expected = F.binary_cross_entropy_with_logits(
        z, F.one_hot(y, K + 1).to(z.dtype), reduction="none"
    ).sum(dim=1)
    got = acsl_loss(z, y, acsl_class_groups(FREQUENCY), keep, score_thr=1e-9, reduction="none")
    torch.testing.assert_close(got, expected)


def test_acsl_with_nothing_suppressed_trains_only_the_label_columns():
    # xi above every score and no background draws: each ROI's own column (background ROIs:
    # column K) with target 1
    z, y = _inputs()
    keep = torch.zeros(len(y), 3, dtype=torch.bool)
    expected = F.softplus(-z.gather(1, y.view(-1, 1)).squeeze(1))
    got = acsl_loss(z, y, acsl_class_groups(FREQUENCY), keep, score_thr=1 - 1e-9,
                    reduction="none")
    torch.testing.assert_close(got, expected)


def test_acsl_by_hand():
    # K = 3, groups (f, c, r). ROI 0: class 1; ROI 1: background (drawn for rare only);
    # ROI 2: background (drawn for nothing)
    groups = acsl_class_groups(["f", "c", "r"])
    z = torch.tensor([[1.0, 2.0, 0.5, 0.9], [0.3, -0.4, 1.2, -0.1], [3.0, 2.5, 2.0, 0.4]],
                     dtype=torch.float64)
    y = torch.tensor([1, 3, 3])
    # bg_keep columns are the groups r, c, f
    keep = torch.tensor([[False, False, False], [True, False, False], [False, False, False]])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert sig(1.0) >= 0.7 > sig(0.5) and sig(0.9) >= 0.7
    row0 = _bce(2.0, 1) + _bce(1.0, 0) + _bce(0.9, 0)  # class 0 and background above xi
    row1 = _bce(-0.1, 1) + _bce(1.2, 0)  # own column, and the rare class 2
    row2 = _bce(0.4, 1)  # own column only (scores above xi do not count on background ROIs)
    expected = torch.tensor([row0, row1, row2], dtype=torch.float64)
    got = acsl_loss(z, y, groups, keep, score_thr=0.7, reduction="none")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(acsl_per_roi(z, y, groups, keep, score_thr=0.7), expected)
    # gradient: w (sigmoid(z) - t), divided by R for "mean"
    x = z.clone().requires_grad_()
    acsl_loss(x, y, groups, keep).backward()
    grad = torch.zeros(3, 4, dtype=torch.float64)
    grad[0, 1], grad[0, 0], grad[0, 3] = sig(2.0) - 1, sig(1.0), sig(0.9)
    grad[1, 3], grad[1, 2] = sig(-0.1) - 1, sig(1.2)
    grad[2, 3] = sig(0.4) - 1
    torch.testing.assert_close(x.grad, grad / 3)


def test_acsl_background_draw_counts_and_generator():
    y = torch.tensor([K] * 40 + [0, 1, 2] * 5)
    keep = acsl_background_draw(y, K, (0.01, 0.1, 1.0),
                                generator=torch.Generator().manual_seed(0))
    assert keep.shape == (55, 3)
    assert keep.sum(dim=0).tolist() == [0, 4, 40]  # int(40 * 0.01), int(40 * 0.1), 40
    assert not bool(keep[40:].any())  # foreground rows are never drawn
    loss = _build("acsl", bg_fractions=[0.25, 0.5, 1.0], seed=1)
    first = loss._draw(y, loss.generator)
    second = loss._draw(y, loss.generator)
    assert first.sum(dim=0).tolist() == second.sum(dim=0).tolist() == [10, 20, 40]
    assert not torch.equal(first, second)  # the generator advances
    again = _build("acsl", bg_fractions=[0.25, 0.5, 1.0], seed=1)
    assert torch.equal(again._draw(y, again.generator), first)  # seeded


def test_acsl_per_roi_draws_what_the_next_forward_draws():
    z, y = _inputs(r=30)
    y[10:] = K
    loss = _build("acsl", seed=4)
    state = loss.generator.get_state()
    per_roi = loss.per_roi(z, y)
    assert torch.equal(loss.generator.get_state(), state)
    torch.testing.assert_close(per_roi, loss(z, y, reduction="none"))
    assert not torch.equal(loss.generator.get_state(), state)


def test_acsl_without_groups_treats_every_class_as_frequent():
    loss = build_cls_loss("acsl", num_classes=K)
    assert loss.class_group.tolist() == [2] * K


# ---------------------------------------------------------------- both: the loss contract
@pytest.mark.parametrize("name", ["ecm", "acsl"])
def test_forward_equals_per_roi_in_value_and_gradient(name):
    z, y = _inputs(r=20)
    y[12:] = K
    loss = _build(name)
    x = z.clone().requires_grad_()
    state = loss.generator.get_state() if name == "acsl" else None
    per_roi = loss.per_roi(x, y)
    if state is not None:
        loss.generator.set_state(state)
    fwd = loss(x, y)
    torch.testing.assert_close(per_roi.mean(), fwd, rtol=1e-10, atol=1e-12)
    (g_fwd,) = torch.autograd.grad(fwd, x)
    (g_roi,) = torch.autograd.grad(per_roi.mean(), x, create_graph=True)
    torch.testing.assert_close(g_roi, g_fwd, rtol=1e-9, atol=1e-12)
    (h,) = torch.autograd.grad((g_roi * torch.randn_like(g_roi)).sum(), x)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("name", ["ecm", "acsl"])
def test_fused_function_gradcheck_and_second_backward(name):
    z, y = _inputs(r=8)
    if name == "ecm":
        counts = torch.tensor([400.0, 90.0, 12.0, 3.0, 1.0], dtype=torch.float64)
        fn = lambda t, red: ecm_loss(t, y, counts, reduction=red)  # noqa: E731
    else:
        keep = torch.tensor([[True, False, True]] * 8)
        groups = acsl_class_groups(FREQUENCY)
        fn = lambda t, red: acsl_loss(t, y, groups, keep, reduction=red)  # noqa: E731
    x = z.clone().requires_grad_()
    for red in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda t: fn(t, red), (x,))
    out = fn(x, "mean")
    (g1,) = torch.autograd.grad(out, x, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x)  # the buffer was handed over: recomputed
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("name", ["ecm", "acsl"])
def test_empty_batch_no_inplace_edit_and_bf16_autocast(name):
    z, y = _inputs(dtype=torch.float32)
    loss = _build(name)
    before = z.clone()
    loss(z.clone().requires_grad_(), y)
    torch.testing.assert_close(z, before, rtol=0, atol=0)
    empty = z[:0].clone().requires_grad_()
    out = loss(empty, y[:0])
    assert float(out.detach()) == 0.0
    out.backward()
    ref = _build(name).per_roi(z, y).mean()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        x = z.bfloat16().requires_grad_()
        got = _build(name)(x, y)
    assert got.dtype == torch.float32
    got.backward()
    assert x.grad.dtype == torch.bfloat16
    assert float(got.detach()) == pytest.approx(float(ref), rel=0.05)


def test_bad_values_are_refused_naming_the_key():
    with pytest.raises(LTDetError, match=r"MODEL\.ROI_BOX_HEAD\.ECM\.FG_BG_RATIO must be > 0"):
        _build("ecm", fg_bg_ratio=0.0)
    with pytest.raises(LTDetError, match=r"ECM class_counts must be finite and > 0; classes \[2\]"):
        _build("ecm", class_counts=[4.0, 1.0, 0.0, 2.0, 3.0])
    with pytest.raises(LTDetError, match=r"ECMLoss: 3 class counts for num_classes=5"):
        _build("ecm", class_counts=[4.0, 1.0, 2.0])
    for thr in (0.0, 1.0):
        with pytest.raises(LTDetError, match=r"MODEL\.ROI_BOX_HEAD\.ACSL\.SCORE_THR must be in"):
            _build("acsl", score_thr=thr)
    for fractions in ([0.1, 1.0], [0.1, 0.2, 1.5]):
        with pytest.raises(LTDetError, match=r"MODEL\.ROI_BOX_HEAD\.ACSL\.BG_FRACTIONS must be"):
            _build("acsl", bg_fractions=fractions)
    with pytest.raises(LTDetError, match=r"groups must be 'r', 'c' or 'f', got \['x'\]"):
        _build("acsl", class_frequency=["f", "c", "r", "x", "f"])


def test_config_defaults_are_the_references():
    from detectron2.config import get_cfg

    from lt_det import add_lt_config

    cfg = add_lt_config(get_cfg())
    assert cfg.MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO == 6.3313
    assert cfg.MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR == 0.7
    assert list(cfg.MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS) == [0.01, 0.1, 1.0]


# ---------------------------------------------------------------- LVIS scale (1203 classes)
@pytest.fixture(scope="module")
def lvis_1203_dataset(tmp_path_factory):
    from test_lvis_scale import _lvis_1203

    folder = str(tmp_path_factory.mktemp("lvis_1203_losses"))
    json_file, image_root = _lvis_1203(folder)
    return "lt_new_losses_1203", json_file, image_root


@pytest.mark.parametrize("name", ["ecm", "acsl"])
def test_loss_builds_from_the_lvis_config_and_runs_at_1203_classes(name, lvis_1203_dataset):
    from lt_det.data import register_datasets_from_cfg
    from lt_det.engine import load_config
    from lt_det.modeling.losses import ACSLLoss, ECMLoss, build_cls_loss_from_cfg

    ds, json_file, image_root = lvis_1203_dataset
    cfg = load_config(os.path.join(ROOT, "configs", f"lvis_{name}.yaml"), [
        "DATASETS.LVIS_FORMAT", repr([[ds, json_file, image_root]]),
        "DATASETS.TRAIN", f"('{ds}',)", "DATASETS.TEST", f"('{ds}',)",
    ])  # fmt: skip
    register_datasets_from_cfg(cfg)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203
    loss = build_cls_loss_from_cfg(cfg)
    assert isinstance(loss, ECMLoss if name == "ecm" else ACSLLoss)
    if name == "ecm":
        assert cfg.MODEL.ROI_BOX_HEAD.CLS_SCORE == "normed_linear"
        # the registration's instance counts (the json's instance_count: 1 for every class)
        torch.testing.assert_close(loss.class_counts, torch.full((1203,), 1 / 1203))
    else:
        # the json's groups (cycling r, c, f), not the image-count rule (every class r here)
        assert loss.class_group[:6].tolist() == [0, 1, 2, 0, 1, 2]
        assert [int((loss.class_group == g).sum()) for g in range(3)] == [401, 401, 401]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 1204, generator=g)
    y = torch.full((512,), 1203)
    y[:128] = torch.randint(0, 1203, (128,), generator=g)
    x = z.clone().requires_grad_()
    expected = loss.per_roi(z, y).mean()
    out = loss(x, y)
    out.backward()
    assert torch.isfinite(out) and bool(torch.isfinite(x.grad).all())
    torch.testing.assert_close(out, expected)
    assert loss.predict_probs(z).shape == (512, 1204)
