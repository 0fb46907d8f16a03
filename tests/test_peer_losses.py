"""Closed-form tests of EQL, EQLv2, Seesaw, federated and BAGS (lt_det.modeling.losses) and of
post-hoc calibration (lt_det.modeling.calibration).

Notation: logits z (R, K + 1), column K = background, labels y in [0, K]. Expected values are
computed here from the papers' definitions, written independently of the library's rewrites:
  sigmoid CE   l = sum_{j<K} BCE(sigmoid(z_j), [y == j])
  EQL          weights w_j = 1 - [y < K] [f_j < lambda] (1 - [y == j])
  EQLv2        w_pos = 1 + alpha (1 - f(g)), w_neg = f(g), f(x) = sigmoid(gamma (x - mu)),
               g = P / N accumulated weighted gradient magnitudes
  Seesaw       -log(e^{z_y} / (sum_{j != y} S_yj e^{z_j} + e^{z_y})), S = M * C (probabilities)
  NorCal       p_j / n_j^gamma renormalised with the background kept
"""
import math

import pytest
import torch
from torch.nn import functional as F

from lt_det.modeling.calibration import PosthocCalibration, calibrate_logits
from lt_det.modeling.losses import (
    bags_groups,
    bags_loss,
    bags_per_roi,
    bags_probs,
    build_cls_loss,
    eql_loss,
    eqlv2_loss,
    federated_class_mask,
    federated_loss,
    seesaw_loss,
    sigmoid_ce_loss,
    softmax_ce_loss,
)
from lt_det.modeling.losses._weighted_sigmoid import WeightedSigmoidCE
from lt_det.modeling.normed_linear import NormedLinear

K = 5
NEW_LOSSES = ("eql", "eqlv2", "seesaw", "federated", "bags")


def _inputs(r=9, k=K, dtype=torch.float64, seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1 + extra, generator=g, dtype=dtype) * 2
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[0], y[1], y[2] = k, 0, 3
    prior = torch.rand(k, generator=g, dtype=torch.float32) * 0.5 + 0.01
    return z, y, prior


def _bce(x, t):
    p = 1 / (1 + math.exp(-x))
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def _build(name, prior, **kw):
    if name == "bags":
        kw.setdefault("instance_counts", [3, 40, 7, 500, 2000])
    if name in ("eql", "federated", "balanced_softmax", "balanced_sigmoid"):
        kw.setdefault("class_prior", prior)
    if name == "federated":
        kw.setdefault("num_classes_sampled", 3)
    return build_cls_loss(name, num_classes=K, **kw)


def _logits_for(loss, z):
    extra = getattr(loss, "num_extra_logits", 0)
    if extra == 0:
        return z
    g = torch.Generator().manual_seed(5)
    return torch.randn(z.shape[0], z.shape[1] + extra, generator=g, dtype=z.dtype)


# ---------------------------------------------------------------- identities from the issue
def test_eql_lambda_zero_is_sigmoid_ce():
    z, y, prior = _inputs()
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    la, lb = eql_loss(a, y, prior, lambda_=0.0), sigmoid_ce_loss(b, y)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-12)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_eql_drops_tail_negatives_on_foreground_rois_only():
    z, y, prior = _inputs()
    lam = float(prior.median())
    tail = [j for j in range(K) if float(prior[j]) < lam]
    assert tail and len(tail) < K
    expected = []
    for row, t in zip(z.tolist(), y.tolist()):
        total = 0.0
        for j in range(K):
            w = 1.0 - (t < K) * (j in tail) * (j != t)
            total += w * _bce(row[j], float(j == t))
        expected.append(total)
    got = eql_loss(z, y, prior, lambda_=lam, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=z.dtype), rtol=1e-10, atol=1e-10)


def test_eqlv2_unit_weights_are_sigmoid_ce_over_k_plus_one_columns():
    # unit weights: sigmoid CE on the K classes plus the objectness (background) sigmoid
    z, y, _ = _inputs()
    ones = torch.ones(K)
    background = F.binary_cross_entropy_with_logits(
        z[:, K], (y == K).to(z.dtype), reduction="none"
    )
    expected = sigmoid_ce_loss(z, y, reduction="none") + background
    torch.testing.assert_close(eqlv2_loss(z, y, ones, ones, reduction="none"), expected,
                               rtol=0, atol=1e-12)


def test_eqlv2_state_matches_hand_computation_over_two_iterations():
    gamma, mu, alpha = 12.0, 0.8, 4.0
    loss = build_cls_loss("eqlv2", num_classes=K, gamma=gamma, mu=mu, alpha=alpha)
    pos_acc, neg_acc = [0.0] * K, [0.0] * K
    ratio = [100.0] * K  # the initial ratio: weights start at (almost exactly) 1
    for it in range(2):
        z, y, _ = _inputs(seed=10 + it)
        f = [1 / (1 + math.exp(-gamma * (g - mu))) for g in ratio]
        w_pos = [1 + alpha * (1 - v) for v in f]
        expected_loss = 0.0
        for row, t in zip(z.tolist(), y.tolist()):
            expected_loss += _bce(row[K], float(t == K))  # objectness column, weight 1
            for j in range(K):
                s = 1 / (1 + math.exp(-row[j]))
                if j == t:
                    expected_loss += w_pos[j] * _bce(row[j], 1.0)
                    pos_acc[j] += w_pos[j] * (1 - s)
                else:
                    expected_loss += f[j] * _bce(row[j], 0.0)
                    neg_acc[j] += f[j] * s
        expected_loss /= len(y)
        got = loss(z.clone().requires_grad_(), y)
        assert float(got.detach()) == pytest.approx(expected_loss, rel=1e-5)
        ratio = [p / (n + 1e-10) for p, n in zip(pos_acc, neg_acc)]
        torch.testing.assert_close(loss.pos_grad, torch.tensor(pos_acc, dtype=torch.float32))
        torch.testing.assert_close(loss.neg_grad, torch.tensor(neg_acc, dtype=torch.float32))
        torch.testing.assert_close(loss.pos_neg, torch.tensor(ratio, dtype=torch.float32))
    # the second iteration used weights that moved away from 1
    assert min(1 / (1 + math.exp(-gamma * (g - mu))) for g in ratio) < 0.5


def test_eqlv2_state_not_updated_without_grad():
    loss = build_cls_loss("eqlv2", num_classes=K)
    z, y, _ = _inputs()
    with torch.no_grad():
        loss(z, y)
    loss.per_roi(z.clone().requires_grad_(), y)
    assert float(loss.pos_grad.abs().sum() + loss.neg_grad.abs().sum()) == 0.0


def _seesaw_reference(z, y, counts, p, q, eps):
    """The paper's multiplicative definition, on probabilities of the K foreground columns."""
    out = []
    for row, t in zip(z.tolist(), y.tolist()):
        if t == K:
            lse = math.log(sum(math.exp(v) for v in row))
            out.append(lse - row[K])
            continue
        fg = row[:K]
        m = max(fg)
        denom = sum(math.exp(v - m) for v in fg)
        sigma = [math.exp(v - m) / denom for v in fg]
        total = math.exp(row[t])
        for j in range(K + 1):
            if j == t:
                continue
            s = 1.0
            if j < K:
                ni, nj = max(counts[t], 1.0), max(counts[j], 1.0)
                if ni > nj:
                    s *= (nj / ni) ** p
                ratio = sigma[j] / max(sigma[t], eps)
                if ratio > 1:
                    s *= ratio**q
            total += s * math.exp(row[j])
        out.append(math.log(total) - row[t])
    return out


def test_seesaw_p_q_zero_is_softmax_ce():
    z, y, _ = _inputs()
    counts = torch.tensor([100.0, 3.0, 0.0, 20.0, 7.0])
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    la, lb = seesaw_loss(a, y, counts, p=0.0, q=0.0), softmax_ce_loss(b, y)
    torch.testing.assert_close(la, lb, rtol=0, atol=1e-12)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0)])
def test_seesaw_matches_the_multiplicative_definition(p, q):
    z, y, _ = _inputs(r=15)
    counts = [100.0, 3.0, 0.0, 20.0, 7.0]
    expected = _seesaw_reference(z, y, counts, p, q, 0.01)
    got = seesaw_loss(z, y, torch.tensor(counts), p=p, q=q, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=z.dtype), rtol=1e-9, atol=1e-9)


def test_seesaw_counts_update_after_the_loss():
    loss = build_cls_loss("seesaw", num_classes=K)
    z, y, _ = _inputs()
    first = loss(z.clone().requires_grad_(), y)
    # first batch: counts were 0, so M = 1; the loss equals q-only Seesaw
    torch.testing.assert_close(first, seesaw_loss(z, y, torch.zeros(K), p=0.0, q=2.0))
    expected = torch.bincount(y[y < K], minlength=K).float()
    torch.testing.assert_close(loss.counts, expected)


def test_federated_with_all_classes_is_sigmoid_ce():
    # |S| = K + 1: every class, the background label counted among the present ones
    z, y, prior = _inputs()
    loss = build_cls_loss(
        "federated", num_classes=K, class_prior=prior, num_classes_sampled=K + 1
    )
    for groups in (None, [4, 5]):
        a = z.clone().requires_grad_()
        b = z.clone().requires_grad_()
        la, lb = loss(a, y, groups), sigmoid_ce_loss(b, y)
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-12)
        la.backward()
        lb.backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12)


def test_federated_class_sets_per_image():
    # image 0: classes {0, 3} and background, image 1: class {2} and background, image 2:
    # class {1} only. The background label counts toward |S| = 3 (detectron2's convention):
    # images 0 and 1 get 2 foreground classes, image 2 gets 3.
    y = torch.tensor([0, 3, 5, 3, 2, 5, 5, 1])
    prior = torch.tensor([0.5, 0.1, 0.2, 0.05, 0.0])  # class 4 can never be drawn
    g = torch.Generator().manual_seed(0)
    mask = federated_class_mask(y, prior.sqrt(), 3, rois_per_image=[4, 3, 1], generator=g)
    assert mask.shape == (3, K)
    assert mask[0, 0] == 1 and mask[0, 3] == 1 and mask[1, 2] == 1 and mask[2, 1] == 1
    assert mask.sum(dim=1).tolist() == [2.0, 2.0, 3.0]
    mask = mask[:2]
    y = y[:7]
    assert mask[:, 4].sum() == 0
    # outside the image's set, no loss and no gradient
    z = torch.randn(7, K + 1, dtype=torch.float64, requires_grad=True)
    per_roi = federated_loss(z, y, mask, rois_per_image=[4, 3], reduction="none")
    expected = []
    for i, (row, t) in enumerate(zip(z.tolist(), y.tolist())):
        s = mask[0 if i < 4 else 1]
        expected.append(sum(_bce(row[j], float(j == t)) for j in range(K) if s[j] > 0))
    torch.testing.assert_close(per_roi, torch.tensor(expected, dtype=z.dtype))
    per_roi.sum().backward()
    assert float(z.grad[:4, :K][:, mask[0] == 0].abs().sum()) == 0.0
    assert float(z.grad[4:, :K][:, mask[1] == 0].abs().sum()) == 0.0


def test_bags_groups_by_instance_count():
    assert bags_groups([0, 9, 10, 99, 100, 999, 1000, 5]) == [[0, 1, 7], [2, 3], [4, 5], [6]]
    assert bags_groups([50, 60], bins=(10, 100, 1000)) == [[0, 1]]  # empty groups dropped


def test_bags_one_group_is_background_term_plus_softmax_ce():
    z, y, _ = _inputs(extra=2)  # one group: K + 1 + (1 + 1) columns
    groups = [list(range(K))]
    got = bags_loss(z, y, groups, others_ratio=1e9)
    fg = (y < K).long()
    group0 = F.cross_entropy(z[:, [K, K + 1]], fg)
    # the group's softmax over [classes, "others"], "others" in the background's place
    ce = F.cross_entropy(z[:, list(range(K)) + [K + 2]], y)
    torch.testing.assert_close(got, group0 + ce, rtol=0, atol=1e-12)


def test_bags_others_weights_and_scores():
    groups = [[0, 2], [1, 3, 4]]
    z, _, _ = _inputs(r=6, extra=3)
    y = torch.tensor([0, 5, 5, 5, 1, 3])  # group A: 1 ROI, group B: 2 ROIs, 3 background
    got = bags_loss(z, y, groups, others_ratio=2.0)
    expected = F.cross_entropy(z[:, [K, K + 1]], (y < K).long())
    for gi, cls in enumerate(groups):
        cols = [K + 2 + gi] + cls
        t = torch.tensor([cls.index(v) + 1 if v in cls else 0 for v in y.tolist()])
        n_own = int((t > 0).sum())
        w_oth = min(1.0, 2.0 * n_own / (6 - n_own))
        w = torch.tensor([1.0 if v > 0 else w_oth for v in t.tolist()], dtype=z.dtype)
        ce = F.cross_entropy(z[:, cols], t, reduction="none")
        expected = expected + (ce * w).sum() / (n_own + w_oth * (6 - n_own))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    probs = bags_probs(z, groups)
    p_fg = F.softmax(z[:, [K, K + 1]], dim=1)[:, 1]
    sm_a = F.softmax(z[:, [K + 2, 0, 2]], dim=1)
    torch.testing.assert_close(probs[:, 2], p_fg * sm_a[:, 2])
    torch.testing.assert_close(probs[:, K], 1 - p_fg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bags_fused_path_matches_plain_ops_when_exp_would_underflow_or_overflow(dtype):
    # Rows 0-1: group B's logits sit 200 below the others, so exp(z) underflows; row 2: one
    # logit of 150 overflows float32's exp. There the fused loss must fall back to each group's
    # own maximum; rows 3-5 take the shared path.
    groups = [[0, 2], [1, 3, 4]]
    z, _, _ = _inputs(r=6, extra=3, dtype=dtype)
    z[:2, [1, 3, 4, K + 3]] -= 200.0
    z[2, 0] = 150.0
    y = torch.tensor([1, 5, 0, 3, 5, 2])
    a = z.clone().requires_grad_()
    b = z.clone().requires_grad_()
    fused = bags_loss(a, y, groups, others_ratio=2.0)
    plain = bags_per_roi(b, y, groups, others_ratio=2.0).mean()
    assert torch.isfinite(fused)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=0, atol=1e-12)
    torch.testing.assert_close(fused, plain, **tol)
    fused.backward()
    plain.backward()
    torch.testing.assert_close(a.grad, b.grad, **tol)


# ---------------------------------------------------------------- the loss contract
@pytest.mark.parametrize("name", NEW_LOSSES)
def test_per_roi_equals_forward_and_is_twice_differentiable(name):
    z, y, prior = _inputs(r=11)
    loss = _build(name, prior)
    x = _logits_for(loss, z).requires_grad_()
    per_roi = loss.per_roi(x, y)
    assert per_roi.shape == (11,)
    forward = loss(x, y)
    torch.testing.assert_close(per_roi.mean(), forward, rtol=1e-10, atol=1e-12)
    (g_fwd,) = torch.autograd.grad(forward, x)
    (g_roi,) = torch.autograd.grad(per_roi.mean(), x, create_graph=True)
    torch.testing.assert_close(g_roi, g_fwd, rtol=1e-9, atol=1e-12)
    # a second derivative exists (what the Meta Sampler's inner step needs)
    (h,) = torch.autograd.grad((g_roi * torch.randn_like(g_roi)).sum(), x, allow_unused=True)
    assert h is not None and torch.isfinite(h).all()


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_empty_batch_and_no_inplace_edit(name):
    z, y, prior = _inputs()
    loss = _build(name, prior)
    x = _logits_for(loss, z)
    before = x.clone()
    loss(x.clone().requires_grad_(), y)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    empty = x[:0].clone().requires_grad_()
    out = loss(empty, y[:0])
    assert float(out.detach()) == 0.0
    out.backward()


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_bf16_autocast_computes_in_float32(name):
    z, y, prior = _inputs(dtype=torch.float32)
    loss = _build(name, prior)
    x = _logits_for(loss, z).float()
    ref = loss.per_roi(x, y).mean()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = _build(name, prior)(x.bfloat16().requires_grad_(), y)
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(float(ref), rel=0.05)


def test_weighted_sigmoid_function_gradcheck():
    z, y, _ = _inputs(r=6)
    neg = torch.rand(3, K, dtype=torch.float64) + 0.1
    pos = torch.rand(K, dtype=torch.float64) + 0.5
    group = torch.tensor([0, 1, 2, 1, 0, 2])
    x = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: WeightedSigmoidCE.apply(t, y, neg, pos, group), (x,)
    )
    assert torch.autograd.gradcheck(
        lambda t: WeightedSigmoidCE.apply(t, y, neg[:1], pos, None), (x,)
    )


# ---------------------------------------------------------------- calibration
def test_norcal_gamma_zero_and_tau_zero_change_nothing():
    z, _, _ = _inputs()
    log_n = torch.log(torch.tensor([1.0, 10.0, 100.0, 3.0, 7.0]))
    for method in ("norcal", "logit_adjustment"):
        cal = PosthocCalibration(method=method, log_ref=log_n, strength=0.0)
        torch.testing.assert_close(cal(z), z, rtol=0, atol=0)


@pytest.mark.parametrize("gamma", [0.5, 1.0])
def test_norcal_softmax_and_sigmoid_forms(gamma):
    z, _, _ = _inputs()
    n = torch.tensor([1.0, 10.0, 100.0, 3.0, 7.0], dtype=torch.float64)
    adjusted = calibrate_logits(z, torch.log(n), gamma)
    # softmax head: p_j / n_j^gamma for j < K, background kept, renormalised
    p = F.softmax(z, dim=1)
    q = torch.cat([p[:, :K] / n**gamma, p[:, K:]], dim=1)
    torch.testing.assert_close(F.softmax(adjusted, dim=1), q / q.sum(dim=1, keepdim=True))
    # sigmoid head: each class against its complement
    s = torch.sigmoid(z[:, :K])
    expected = (s / n**gamma) / (s / n**gamma + 1 - s)
    torch.testing.assert_close(torch.sigmoid(adjusted[:, :K]), expected)


def test_normed_linear_is_scaled_cosine():
    layer = NormedLinear(4, 3, temperature=10.0, eps=0.0)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    x = torch.randn(6, 4)
    cos = F.normalize(x, dim=1) @ F.normalize(layer.weight, dim=1).t()
    torch.testing.assert_close(layer(x), 10.0 * cos + layer.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name", ["softmax_ce", "sigmoid_ce", "balanced_softmax", "balanced_sigmoid", *NEW_LOSSES]
)
def test_calibration_composes_with_every_head(name):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform
    from detectron2.structures import Boxes, Instances

    from lt_det.modeling import LTFastRCNNOutputLayers

    _, _, prior = _inputs()
    torch.manual_seed(0)
    predictor = LTFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        cls_loss=_build(name, prior),
    )
    x = torch.randn(6, 8)
    proposals = [Instances((32, 32), proposal_boxes=Boxes(torch.rand(6, 4) * 16))]
    predictions = predictor(x)
    plain = predictor.predict_probs(predictions, proposals)[0]
    assert plain.shape == (6, K + 1)
    n = torch.tensor([1.0, 10.0, 100.0, 3.0, 7.0])
    predictor.calibration = PosthocCalibration(method="norcal", log_ref=n.log(), strength=0.0)
    torch.testing.assert_close(predictor.predict_probs(predictions, proposals)[0], plain)
    predictor.calibration.strength = 1.0
    calibrated = predictor.predict_probs(predictions, proposals)[0]
    if name in ("softmax_ce", "balanced_softmax", "seesaw"):  # NorCal's softmax form
        q = torch.cat([plain[:, :K] / n, plain[:, K:]], dim=1)
        torch.testing.assert_close(calibrated, q / q.sum(dim=1, keepdim=True))
    elif name == "eqlv2":  # each class against its complement, times the objectness
        obj = torch.sigmoid(-predictions[0][:, K : K + 1])
        p = plain[:, :K] / obj
        torch.testing.assert_close(calibrated[:, :K], (p / n) / (p / n + 1 - p) * obj)
    elif name != "bags":  # sigmoid heads: each class against its complement
        p = plain[:, :K]
        torch.testing.assert_close(calibrated[:, :K], (p / n) / (p / n + 1 - p))
    else:  # BAGS: the adjusted class logits change the within-group softmaxes
        assert not torch.allclose(calibrated, plain)


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_forward_reduction_none_is_per_roi(name):
    z, y, prior = _inputs(r=11)
    loss = _build(name, prior)
    x = _logits_for(loss, z).requires_grad_()
    per_roi = loss.per_roi(x, y)  # before forward: a stateful loss updates after its loss
    torch.testing.assert_close(loss(x, y, reduction="none"), per_roi, rtol=1e-10, atol=1e-12)


def test_bags_plain_per_roi_is_nll_of_its_scores():
    z, y, _ = _inputs(r=11)
    loss = _build("bags", None)
    x = _logits_for(loss, z)
    probs = loss.predict_probs(x).double()
    expected = -torch.log(probs.gather(1, y.view(-1, 1)).squeeze(1))
    torch.testing.assert_close(loss.plain_per_roi(x, y), expected, rtol=1e-6, atol=1e-6)
