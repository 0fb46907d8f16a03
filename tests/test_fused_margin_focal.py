"""The fused training forms of LDAM and the class-balanced focal / sigmoid losses
(``_fused.MarginSoftmaxCE``, ``_fused.FocalSigmoidCE``) against their plain-ops forms
(``ldam_per_roi``, ``class_balanced_focal_per_roi``): values and gradients in float64, every
reduction, with weights, at extreme logits; finite differences on the fused forms themselves."""
import pytest
import torch

from lt_det.modeling.losses._fused import _softplus
from lt_det.modeling.losses.class_balanced import (
    class_balanced_focal_loss,
    class_balanced_focal_per_roi,
    class_balanced_sigmoid_loss,
)
from lt_det.modeling.losses.ldam import ldam_loss, ldam_per_roi

K = 9


def _inputs(r=23, dtype=torch.float64, seed=0, extreme=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, K + 1, generator=g, dtype=dtype) * 3
    y = torch.randint(0, K + 1, (r,), generator=g)
    y[0], y[1], y[2], y[3] = K, 0, K - 1, 4
    if extreme:  # saturated logits on and off the true class, and a row far above the rest
        z[1, 0], z[2, K - 1], z[3, :] = 60.0, -60.0, 35.0
        z[4, 2] = 80.0
    prior = torch.rand(K, generator=g, dtype=dtype) * 0.3 + 0.002
    return z, y, prior


def _reduce(per_roi, reduction):
    return {"none": per_roi, "mean": per_roi.mean(), "sum": per_roi.sum()}[reduction]


def _compare(fused_fn, plain_fn, z, reduction, seed=1):
    """Values and gradients (under a random upstream gradient) of the two forms."""
    a = z.clone().requires_grad_(True)
    b = z.clone().requires_grad_(True)
    la, lb = fused_fn(a, reduction), _reduce(plain_fn(b), reduction)
    torch.testing.assert_close(la, lb)
    up = torch.randn(la.shape, generator=torch.Generator().manual_seed(seed), dtype=la.dtype)
    la.backward(up)
    lb.backward(up)
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("scale,max_margin,weighted", [(1.0, 0.5, False), (30.0, 0.7, True)])
def test_ldam_fused_equals_plain_form(reduction, scale, max_margin, weighted):
    z, y, prior = _inputs()
    w = torch.rand(K + 1, dtype=z.dtype) + 0.1 if weighted else None
    kw = dict(max_margin=max_margin, scale=scale, roi_weights=w)
    _compare(
        lambda t, red: ldam_loss(t, y, prior, reduction=red, **kw),
        lambda t: ldam_per_roi(t, y, prior, **kw),
        z,
        reduction,
    )


def test_ldam_fused_passes_gradcheck_and_a_second_backward_repeats_the_first():
    z, y, prior = _inputs(r=7, extreme=False)
    w = torch.rand(K + 1, dtype=z.dtype) + 0.1
    for red in ("none", "mean"):
        assert torch.autograd.gradcheck(
            lambda t: ldam_loss(t, y, prior, scale=2.0, roi_weights=w, reduction=red),
            (z.clone().requires_grad_(True),),
        )
    t = z.clone().requires_grad_(True)
    loss = ldam_loss(t, y, prior, scale=2.0)
    (g1,) = torch.autograd.grad(loss, t, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, t)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.0, 0.5])
def test_class_balanced_focal_fused_equals_plain_form(reduction, gamma):
    # gamma < 1: the plain form's pow backward is NaN where 1 - p_t is exactly 0 (a saturated
    # logit), so that case is compared without them (see the next test).
    z, y, prior = _inputs(extreme=gamma >= 1 or gamma == 0)
    counts = prior * 1000
    _compare(
        lambda t, red: class_balanced_focal_loss(t, y, counts, gamma=gamma, reduction=red),
        lambda t: class_balanced_focal_per_roi(t, y, counts, gamma=gamma),
        z,
        reduction,
    )


def test_focal_gradient_stays_finite_where_the_plain_pow_backward_is_nan():
    z, y, prior = _inputs()
    counts = prior * 1000
    b = z.clone().requires_grad_(True)
    class_balanced_focal_per_roi(b, y, counts, gamma=0.5).sum().backward()
    assert not torch.isfinite(b.grad).all()  # the plain form at a saturated logit
    a = z.clone().requires_grad_(True)
    class_balanced_focal_loss(a, y, counts, gamma=0.5, reduction="sum").backward()
    assert torch.isfinite(a.grad).all()
    ok = torch.isfinite(b.grad)
    torch.testing.assert_close(a.grad[ok], b.grad[ok])
    # d/dx p**0.5 * softplus(x) at x -> -inf is 1.5 * p**0.5 -> 0, and at a saturated true
    # class the derivative is -(1 - p)**0.5 * (...) -> 0: the fused form gives these limits.
    assert a.grad[1, 0].abs() < 1e-12


def test_focal_fused_passes_gradcheck_weights_the_rows_and_ignores_the_background_column():
    z, y, prior = _inputs(r=7, extreme=False)
    counts = prior * 1000
    for gamma in (0.0, 2.0, 1.5):
        assert torch.autograd.gradcheck(
            lambda t: class_balanced_focal_loss(t, y, counts, gamma=gamma, reduction="none"),
            (z.clone().requires_grad_(True),),
        )
    t = z.clone().requires_grad_(True)
    class_balanced_sigmoid_loss(t, y, counts).backward()
    assert (t.grad[:, K] == 0).all()
    # beta = 0: every weight is 1, so the loss is the sum of the unweighted per-ROI losses / R.
    plain = class_balanced_focal_per_roi(z, y, counts, beta=0.0).mean()
    torch.testing.assert_close(class_balanced_focal_loss(z, y, counts, beta=0.0), plain)


def test_fused_forms_take_bf16_logits_under_autocast_and_non_contiguous_logits():
    z, y, prior = _inputs(dtype=torch.float32)
    counts = prior * 1000
    zb = z.bfloat16()
    for fused, plain in (
        (lambda t: ldam_loss(t, y, prior), lambda t: ldam_per_roi(t, y, prior).mean()),
        (
            lambda t: class_balanced_focal_loss(t, y, counts),
            lambda t: class_balanced_focal_per_roi(t, y, counts).mean(),
        ),
    ):
        a = zb.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            la = fused(a)
        la.backward()
        assert la.dtype == torch.float32 and a.grad.dtype == torch.bfloat16
        b = zb.float().requires_grad_(True)  # the same (bf16-rounded) values in float32
        lb = plain(b)
        lb.backward()
        torch.testing.assert_close(la, lb)
        torch.testing.assert_close(a.grad, b.grad.bfloat16())
        wide = torch.cat([z, z], dim=1)[:, : K + 1]  # a strided view
        torch.testing.assert_close(fused(wide), fused(wide.contiguous()))


def test_softplus_is_accurate_to_rounding_where_log1p_matters():
    x = torch.tensor([-100.0, -30.0, -17.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 17.0, 40.0, 100.0])
    want = torch.nn.functional.softplus(x.double(), threshold=1000.0)
    # float32: relative to rounding down to the smallest normal number (e^-100 is subnormal)
    tiny = torch.finfo(torch.float32).tiny
    torch.testing.assert_close(_softplus(x).double(), want, rtol=3e-7, atol=tiny)
    torch.testing.assert_close(_softplus(x.double()), want, rtol=1e-15, atol=0)


def test_focal_chunks_give_the_one_chunk_result(monkeypatch):
    from lt_det.modeling.losses import _fused

    z, y, prior = _inputs(r=41)
    counts = prior * 1000
    want = class_balanced_focal_per_roi(z, y, counts)
    monkeypatch.setattr(_fused, "_CHUNK_ELEMS", 3 * (K + 1))  # 3 rows per chunk, 14 chunks
    _compare(
        lambda t, red: class_balanced_focal_loss(t, y, counts, reduction=red),
        lambda t: class_balanced_focal_per_roi(t, y, counts),
        z,
        "none",
    )
    torch.testing.assert_close(class_balanced_focal_loss(z, y, counts, reduction="none"), want)
