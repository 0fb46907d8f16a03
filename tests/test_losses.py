"""Closed-form tests of the box-classification losses (lt_det.modeling.losses).

Notation: logits z (R, K + 1), column K = background, labels y in [0, K], prior n (K,).
Expected values are computed here from the definitions:
  softmax CE        l = logsumexp(z) - z_y
  balanced softmax  l = CE(z + s), s_j = log n_j - log c (j < K), s_K = 0,
                    c = mean(n) ("fg_mass") or max(n) ("unshifted")
  sigmoid CE        l = sum_{j<K} softplus(z_j) - [y < K] z_y
  balanced sigmoid  same with z_j + [y < K] log(n_j / (1 - n_j))
"""
import math

import pytest
import torch
from torch.nn import functional as F

from lt_det.modeling.losses import (
    LT_CLS_LOSS_REGISTRY,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    build_cls_loss,
    sigmoid_ce_loss,
    softmax_ce_loss,
)

K = 5
LOSS_FNS = {
    "softmax_ce": softmax_ce_loss,
    "sigmoid_ce": sigmoid_ce_loss,
    "balanced_softmax": balanced_softmax_loss,
    "balanced_sigmoid": balanced_sigmoid_loss,
}


def _inputs(r=7, k=K, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g, dtype=dtype) * 2
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[0], y[1] = k, 0  # at least one background and one foreground ROI
    prior = torch.rand(k, generator=g, dtype=dtype) * 0.5 + 0.01
    return z, y, prior


def _ref_softmax_ce_rows(z, y):
    rows = zip(z.tolist(), y.tolist())
    return [math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in rows]


def _ref_sigmoid_rows(z, y, prior=None):
    k = z.shape[1] - 1
    out = []
    for row, t in zip(z.tolist(), y.tolist()):
        total = 0.0
        for j in range(k):
            x = row[j]
            if prior is not None and t < k:
                n = float(prior[j])
                x += math.log(n / (1 - n))
            target = 1.0 if j == t else 0.0
            p = 1 / (1 + math.exp(-x))
            total -= target * math.log(p) + (1 - target) * math.log(1 - p)
        out.append(total)
    return out


@pytest.mark.parametrize("c", [0.01, 0.3, 1.0])
@pytest.mark.parametrize("background", ["fg_mass", "unshifted"])
def test_uniform_prior_balanced_softmax_is_plain_ce(c, background):
    z, y, _ = _inputs()
    prior = torch.full((K,), c, dtype=torch.float64)
    got = balanced_softmax_loss(z, y, prior, background=background)
    torch.testing.assert_close(got, F.cross_entropy(z, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(softmax_ce_loss(z, y), F.cross_entropy(z, y), rtol=0, atol=0)


def test_uniform_half_prior_balanced_sigmoid_is_plain_sigmoid():
    z, y, _ = _inputs()
    prior = torch.full((K,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(
        balanced_sigmoid_loss(z, y, prior), sigmoid_ce_loss(z, y), rtol=0, atol=1e-12
    )


@pytest.mark.parametrize("background", ["fg_mass", "unshifted"])
def test_balanced_softmax_closed_form(background):
    z, y, prior = _inputs()
    ref_c = prior.mean() if background == "fg_mass" else prior.max()
    shifted = z.clone()
    for j in range(K):
        shifted[:, j] += math.log(prior[j]) - math.log(ref_c)
    rows = torch.tensor(_ref_softmax_ce_rows(shifted, y), dtype=torch.float64)
    got = balanced_softmax_loss(z, y, prior, reduction="none", background=background)
    torch.testing.assert_close(got, rows, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        balanced_softmax_loss(z, y, prior, reduction="sum", background=background), rows.sum()
    )
    torch.testing.assert_close(
        balanced_softmax_loss(z, y, prior, background=background), rows.mean()
    )


@pytest.mark.parametrize("background", ["fg_mass", "unshifted"])
def test_balanced_softmax_log_ratio_property(background):
    """The gradient of CE is softmax(z + s) - onehot(y). On a background ROI, for foreground
    classes i, j: g_i / g_j = exp(z_i - z_j) * n_i / n_j, i.e. the logit difference moves by
    exactly log(n_i / n_j). Only ratios matter: scaling the prior changes nothing."""
    z, _, prior = _inputs(r=2)
    z = z[:1].clone().requires_grad_(True)
    y = torch.tensor([K])
    balanced_softmax_loss(z, y, prior, reduction="sum", background=background).backward()
    g = z.grad[0]
    for i in range(K):
        for j in range(K):
            expected = math.exp(float((z[0, i] - z[0, j]).detach())) * float(prior[i] / prior[j])
            assert float(g[i] / g[j]) == pytest.approx(expected, rel=1e-10)
    z2, y2, _ = _inputs()
    torch.testing.assert_close(
        balanced_softmax_loss(z2, y2, prior * 7.0, background=background),
        balanced_softmax_loss(z2, y2, prior, background=background),
    )


def test_fg_mass_keeps_background_odds_for_equal_logits():
    """With equal foreground logits the fg_mass shift leaves P(background) as in plain CE."""
    _, _, prior = _inputs()
    z = torch.zeros(1, K + 1, dtype=torch.float64)
    z[0, K] = 0.7
    y = torch.tensor([K])
    torch.testing.assert_close(
        balanced_softmax_loss(z, y, prior, background="fg_mass"), F.cross_entropy(z, y)
    )


def test_sigmoid_losses_closed_form():
    z, y, prior = _inputs()
    torch.testing.assert_close(
        sigmoid_ce_loss(z, y, reduction="none"),
        torch.tensor(_ref_sigmoid_rows(z, y), dtype=torch.float64),
    )
    rows = torch.tensor(_ref_sigmoid_rows(z, y, prior), dtype=torch.float64)
    torch.testing.assert_close(balanced_sigmoid_loss(z, y, prior, reduction="none"), rows)
    torch.testing.assert_close(balanced_sigmoid_loss(z, y, prior), rows.mean())
    torch.testing.assert_close(balanced_sigmoid_loss(z, y, prior, reduction="sum"), rows.sum())


def test_balanced_sigmoid_leaves_background_rois_untouched():
    z, _, prior = _inputs()
    y = torch.full((z.shape[0],), K)
    torch.testing.assert_close(balanced_sigmoid_loss(z, y, prior), sigmoid_ce_loss(z, y))


def test_balanced_sigmoid_prior_of_one_is_finite():
    z, y, prior = _inputs()
    prior[0] = 1.0
    assert torch.isfinite(balanced_sigmoid_loss(z, y, prior))


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_gradients_match_finite_differences(name):
    z, y, prior = _inputs()
    fn = LOSS_FNS[name]
    for reduction in ("mean", "none"):
        assert torch.autograd.gradcheck(
            lambda t: fn(t, y, prior, reduction=reduction), (z.clone().requires_grad_(True),)
        )


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_empty_batch_is_zero_and_keeps_graph(name):
    fn = LOSS_FNS[name]
    prior = torch.full((K,), 0.1)
    z = torch.zeros(0, K + 1, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    loss = fn(z, y, prior)
    assert loss.shape == () and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z.grad is not None and z.grad.shape == (0, K + 1)
    assert fn(z, y, prior, reduction="none").shape == (0,)


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_logits_not_modified(name):
    z, y, prior = _inputs(dtype=torch.float32)
    z.requires_grad_(True)
    before = z.detach().clone()
    LOSS_FNS[name](z, y, prior).backward()
    assert torch.equal(z.detach(), before)


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_cpu_bf16_autocast_is_finite(name):
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, K + 1)
    x = torch.randn(32, 16)
    y = torch.randint(0, K + 1, (32,))
    loss_module = build_cls_loss(name, num_classes=K, class_prior=torch.linspace(0.001, 0.9, K))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_module(logits, y)
        probs = loss_module.predict_probs(logits)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(probs).all()
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_modules_hold_prior_buffer_and_scores():
    prior = torch.linspace(0.01, 0.5, K)
    z, y, _ = _inputs(dtype=torch.float32)
    for name in ("balanced_softmax", "balanced_sigmoid"):
        m = build_cls_loss(name, num_classes=K, class_prior=prior)
        assert torch.equal(m.state_dict()["class_prior"], prior)
        assert "class_prior" not in dict(m.named_parameters())
        torch.testing.assert_close(m(z, y), LOSS_FNS[name](z, y, prior))
    softmax = build_cls_loss("balanced_softmax", num_classes=K, class_prior=prior)
    torch.testing.assert_close(softmax.predict_probs(z), F.softmax(z, dim=1))
    sigmoid = build_cls_loss("balanced_sigmoid", num_classes=K, class_prior=prior)
    probs = sigmoid.predict_probs(z)
    assert probs.shape == (z.shape[0], K + 1)
    torch.testing.assert_close(probs[:, :K], torch.sigmoid(z[:, :K]))
    assert torch.equal(probs[:, K], torch.zeros(z.shape[0]))


def test_sigmoid_bias_init():
    bias = torch.zeros(K + 1)
    build_cls_loss("sigmoid_ce", num_classes=K, bias_prior_prob=0.01).init_cls_bias_(bias)
    torch.testing.assert_close(torch.sigmoid(bias[:K]), torch.full((K,), 0.01))
    assert bias[K] == 0
    bias = torch.zeros(K + 1)
    build_cls_loss("softmax_ce", num_classes=K).init_cls_bias_(bias)
    assert torch.equal(bias, torch.zeros(K + 1))


def test_registry_and_errors():
    assert {n for n, _ in LT_CLS_LOSS_REGISTRY} >= set(LOSS_FNS)
    with pytest.raises(KeyError, match="balanced_softmax"):
        build_cls_loss("focal", num_classes=K)
    with pytest.raises(ValueError, match="class_prior"):
        build_cls_loss("balanced_softmax", num_classes=K)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        build_cls_loss("balanced_sigmoid", num_classes=K, class_prior=torch.ones(4) * 0.1)
    with pytest.raises(ValueError, match="unshifted"):
        build_cls_loss("balanced_softmax", num_classes=K, class_prior=torch.ones(K), background="x")


@pytest.mark.parametrize("name", sorted(LOSS_FNS))
def test_backward_twice_through_retained_graph(name):
    z, y, prior = _inputs(dtype=torch.float32)
    z.requires_grad_(True)
    loss = LOSS_FNS[name](z, y, prior)
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g1, g2)


# --- fused autograd functions vs the plain autograd reference --------------------------------
# The balanced losses run through lt_det/modeling/losses/_fused.py; the reference is the
# textbook form in plain torch ops: F.cross_entropy(z + s) and BCE with a one-hot target.


def _reference(name, z, y, prior, reduction):
    k = z.shape[1] - 1
    x = z.to(torch.promote_types(z.dtype, torch.float32))
    if name == "balanced_softmax":
        shift = torch.log(prior) - torch.log(prior.mean())
        return F.cross_entropy(x + F.pad(shift, (0, 1)), y, reduction=reduction)
    if name == "balanced_sigmoid":
        is_fg = (y < k).to(x.dtype).view(-1, 1)
        x = x[:, :k] + is_fg * (torch.log(prior) - torch.log1p(-prior))
    else:
        x = x[:, :k]
    target = F.one_hot(y, k + 1)[:, :k].to(x.dtype)
    rows = F.binary_cross_entropy_with_logits(x, target, reduction="none").sum(dim=1)
    return {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]


FUSED = ["balanced_softmax", "balanced_sigmoid", "sigmoid_ce"]


def _lvis_like(r, k, seed=0):
    """float32 logits like a box classifier's (sigmoid forms: negative, as with a 0.01 prior bias),
    25% foreground labels and a long-tailed prior."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g) * 1.5
    y = torch.full((r,), k)
    fg = torch.rand(r, generator=g) < 0.25
    y[fg] = torch.randint(0, k, (int(fg.sum()),), generator=g)
    prior = (0.3 * torch.arange(1, k + 1, dtype=torch.float32) ** -1.3).clamp(min=1e-5)
    return z, y, prior


@pytest.mark.parametrize("size", [(2048, 80), (2048, 1203)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", FUSED)
def test_fused_equals_plain_reference_fp32(name, reduction, size):
    """float32 logits at detector batch sizes (thousands of ROIs, gradients of the mean O(1 / R)):
    the loss is within 1e-6 (relative to max(1, |loss|)) of the plain autograd reference
    evaluated exactly (float64), and the gradient within 5e-10 of it beyond the float32
    reference's own rounding (R times both for "sum", whose gradients are R times larger)."""
    z, y, prior = _lvis_like(*size)
    if name != "balanced_softmax":
        z = z - 4.0  # sigmoid logits of a classifier started at p = 0.01
    grad_out = None
    if reduction == "none":  # per-ROI weights of both signs, as a caller may apply
        grad_out = torch.randn(size[0], generator=torch.Generator().manual_seed(1)) / size[0]
    got_z = z.clone().requires_grad_(True)
    ref_z = z.clone().requires_grad_(True)
    exact_z = z.double().requires_grad_(True)
    got = LOSS_FNS[name](got_z, y, prior, reduction=reduction)
    ref = _reference(name, ref_z, y, prior, reduction)
    exact = _reference(name, exact_z, y, prior.double(), reduction)
    scale = exact.detach().abs().clamp(min=1.0)
    assert got.dtype == torch.float32
    assert ((got.detach().double() - exact.detach()).abs() <= 1e-6 * scale).all()
    got.backward(grad_out)
    ref.backward(grad_out)
    exact.backward(None if grad_out is None else grad_out.double())
    ref_err = (ref_z.grad.double() - exact_z.grad).abs().max()
    got_err = (got_z.grad.double() - exact_z.grad).abs().max()
    assert got_err <= ref_err + 5e-10 * (size[0] if reduction == "sum" else 1)


@pytest.mark.parametrize("name", FUSED)
def test_fused_bf16_logits_match_reference_on_the_same_values(name):
    """bf16 logits are promoted inside the function (no separate cast): the loss equals the
    reference on the float32 values of the same logits; the gradient is bf16, equal up to the
    rounding to bf16."""
    z, y, prior = _lvis_like(256, 80)
    zb = z.bfloat16().requires_grad_(True)
    zf = z.bfloat16().float().requires_grad_(True)
    got = LOSS_FNS[name](zb, y, prior)
    ref = _reference(name, zf, y, prior, "mean")
    assert got.dtype == torch.float32
    assert abs(float(got.detach() - ref.detach())) <= 1e-6 * max(1.0, abs(float(ref.detach())))
    got.backward()
    ref.backward()
    assert zb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(zb.grad, zf.grad.bfloat16())  # bf16 tolerances: one rounding


def test_balanced_softmax_extreme_logit_gap_is_exact():
    """A label whose probability underflows float32 (gap of 200 logits): the loss is the
    log-softmax value (~200), not inf, and the gradient is the reference's."""
    z, y, prior = _lvis_like(8, 80)
    y[0] = 3
    z[0, 3] = -150.0
    z[0, 7] = 50.0
    got_z = z.clone().requires_grad_(True)
    ref_z = z.clone().requires_grad_(True)
    got = balanced_softmax_loss(got_z, y, prior, reduction="none")
    ref = _reference("balanced_softmax", ref_z, y, prior, "none")
    assert torch.isfinite(got).all() and float(got[0].detach()) > 190
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(got_z.grad, ref_z.grad, rtol=1e-6, atol=1e-7)


def test_fused_functions_keep_their_three_argument_form():
    """Other losses call ShiftedSoftmaxCE/ShiftedSigmoidCE.apply(logits, gt, shift) for per-ROI
    losses; that form is unchanged."""
    from lt_det.modeling.losses._fused import ShiftedSigmoidCE, ShiftedSoftmaxCE

    z, y, prior = _lvis_like(32, 10)
    z.requires_grad_(True)
    shift = torch.log(prior)
    rows = ShiftedSoftmaxCE.apply(z, y, F.pad(shift, (0, 1)))
    assert rows.shape == (32,)
    rows.sum().backward()
    rows = ShiftedSigmoidCE.apply(z, y, shift)
    assert rows.shape == (32,)
    rows.sum().backward()


# Every registered loss (also the ones added later) must honour the per-ROI contract.
REGISTERED = sorted(n for n, _ in LT_CLS_LOSS_REGISTRY)


# Constructor arguments beyond num_classes / class_prior (BAGS groups classes by instance count).
EXTRA_KWARGS = {"bags": {"instance_counts": [3, 40, 7, 500, 2000]}}


def _registered(name, prior):
    return build_cls_loss(
        name, num_classes=K, class_prior=prior.float(), **EXTRA_KWARGS.get(name, {})
    )


def _logits_for(loss, z):
    """``z`` widened by the loss's extra logits (BAGS's group logits), if it has any."""
    extra = getattr(loss, "num_extra_logits", 0)
    return torch.cat([z, 0.5 * z[:, :extra]], dim=1) if extra else z


@pytest.mark.parametrize("name", REGISTERED)
def test_per_roi_equals_forward_without_reduction(name):
    z, y, prior = _inputs()
    loss = _registered(name, prior)
    z = _logits_for(loss, z)
    per_roi = loss.per_roi(z, y)
    assert per_roi.shape == (z.shape[0],)
    torch.testing.assert_close(per_roi, loss(z, y, reduction="none"))
    torch.testing.assert_close(per_roi.mean(), loss(z, y))
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.per_roi(z, y)
    assert all(torch.equal(v, loss.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("name", REGISTERED)
def test_per_roi_is_twice_differentiable(name):
    # Hessian-vector product by torch.func (grad of grad) against central differences of the
    # first gradient (float64).
    z, y, prior = _inputs()
    loss = _registered(name, prior)
    z = _logits_for(loss, z)
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=z.dtype)

    def grad_of(t):
        return torch.func.grad(lambda u: loss.per_roi(u, y).sum())(t)

    hvp = torch.func.grad(lambda t: (grad_of(t) * v).sum())(z)
    if getattr(loss, "detached_terms", False):
        # Terms computed from detached logits (Seesaw's compensation factor, as its reference)
        # are constants of the gradient, but a finite difference would move them: compare with
        # autograd's double backward instead.
        t = z.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss.per_roi(t, y).sum(), t, create_graph=True)
        (expected,) = torch.autograd.grad((g * v).sum(), t)
    else:
        eps = 1e-5
        expected = (grad_of(z + eps * v) - grad_of(z - eps * v)) / (2 * eps)
    torch.testing.assert_close(hvp, expected, atol=1e-6, rtol=1e-5)
    assert hvp.abs().sum() > 0


@pytest.mark.parametrize("name", REGISTERED)
def test_plain_per_roi_is_nll_of_inference_scores(name):
    # The Meta Sampler's meta loss: -log of the scores the head predicts, with no prior. A
    # softmax head's K + 1 scores sum to 1 (categorical likelihood); a sigmoid head's K scores
    # are independent Bernoulli likelihoods and its (zero) background column is never read.
    z, y, prior = _inputs()
    loss = _registered(name, prior)
    z = _logits_for(loss, z)
    probs = loss.predict_probs(z)
    # A head that scores the background (softmax heads; BAGS, whose dropped "others" mass makes
    # its scores sum to less than 1) is categorical over its K + 1 scores.
    if bool((probs[:, K] > 0).all()):
        expected = -probs.gather(1, y[:, None]).squeeze(1).log()
    else:
        target = F.one_hot(y, K + 1)[:, :K].to(z.dtype)
        p = probs[:, :K]
        expected = -(target * p.log() + (1 - target) * (1 - p).log()).sum(dim=1)
        z_bg = z.clone()
        z_bg[:, K] += 10.0
        if torch.equal(loss.predict_probs(z_bg), probs):  # scores that ignore column K
            torch.testing.assert_close(loss.plain_per_roi(z_bg, y), loss.plain_per_roi(z, y))
    torch.testing.assert_close(loss.plain_per_roi(z, y), expected)


def test_loss_without_plain_form_names_itself():
    from lt_det.modeling.losses import ClsLoss

    class Unfinished(ClsLoss):
        loss_name = "unfinished"

        def predict_probs(self, logits):
            return torch.sigmoid(logits)

    z, y, _ = _inputs()
    with pytest.raises(NotImplementedError, match="'unfinished'.*per_roi"):
        Unfinished(num_classes=K).per_roi(z, y)
    with pytest.raises(NotImplementedError, match="'unfinished'.*plain_per_roi"):
        Unfinished(num_classes=K).plain_per_roi(z, y)
