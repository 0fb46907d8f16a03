"""End-to-end long-tail training: Channel Whitening, LDAM, logit-adjusted and class-balanced
losses, GRBS/BET and progressively-balanced samplers.

Expected values are derived here from the definitions (docs/e2e.md):
  LDAM             l = CE(s * (z - m_y onehot(y)), y), m_j = M * (n_j / min n) ** (-1/4), m_K = 0
  logit adjusted   l = CE(z + tau * shift), shift = Balanced Softmax's (K + 1,) shift
  class-balanced   w_j = (1 - b) / (1 - b ** n_j), normalised to sum K; w_K = 1
Statistical checks use fixed seeds (deterministic) and bounds of 5 standard deviations.
"""
import math
import re

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from lt_det import add_lt_config
from lt_det.data.samplers import (
    GroupBalancedSampler,
    ProgressiveBalancedSampler,
    build_train_sampler,
    frequency_groups,
)
from lt_det.errors import LTDetError
from lt_det.modeling.losses import (
    balanced_softmax_loss,
    build_cls_loss,
    class_balanced_focal_loss,
    class_balanced_sigmoid_loss,
    class_balanced_softmax_loss,
    effective_number_weights,
    ldam_loss,
    logit_adjusted_loss,
    sigmoid_ce_loss,
)
from lt_det.modeling.whitening import ChannelWhitening

K = 4


def _inputs(r=9, k=K, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g, dtype=dtype) * 2
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[0], y[1], y[2] = k, 0, k - 1  # background, the most and the least frequent class
    prior = torch.tensor([0.4, 0.1, 0.02, 0.005], dtype=dtype)[:k]
    return z, y, prior


def _ce_rows(z, y):
    return [
        math.log(sum(math.exp(v) for v in row)) - row[t] for row, t in zip(z.tolist(), y.tolist())
    ]


# ------------------------------------------------------------------------------ whitening


def _correlated(r, d, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=dtype)
    return torch.randn(r, d, generator=g, dtype=dtype) @ mix + 3.0


@pytest.mark.parametrize("group_size", [0, 4])
def test_whitened_batch_has_identity_covariance(group_size):
    x = _correlated(200, 8)
    w = ChannelWhitening(8, group_size=group_size, eps=1e-9).double().train()
    y = w(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(8, dtype=y.dtype), atol=1e-9, rtol=0)
    d = group_size or 8
    for g in range(8 // d):  # within every group: identity (across groups: not constrained)
        block = (y[:, g * d : (g + 1) * d].T @ y[:, g * d : (g + 1) * d]) / y.shape[0]
        torch.testing.assert_close(block, torch.eye(d, dtype=y.dtype), atol=1e-6, rtol=0)


def test_zca_is_the_symmetric_inverse_square_root():
    x = _correlated(50, 5)
    w = ChannelWhitening(5, eps=1e-9).double()
    _, wm = w.batch_statistics(x)
    xc = x - x.mean(0)
    cov = xc.T @ xc / 50
    torch.testing.assert_close(wm[0], wm[0].T)  # ZCA: symmetric, unlike e.g. Cholesky whitening
    torch.testing.assert_close(wm[0] @ cov @ wm[0], torch.eye(5, dtype=x.dtype), atol=1e-6, rtol=0)


def test_eval_mode_uses_running_statistics_and_is_deterministic():
    x = _correlated(64, 6)
    w = ChannelWhitening(6, momentum=1.0).double()
    y_train = w(x)  # momentum 1: the running statistics are this batch's
    w.eval()
    y_eval = w(x)
    torch.testing.assert_close(y_eval, y_train)
    # Each row is transformed alone: independent of the rest of the batch, same every call.
    torch.testing.assert_close(w(x[:3]), y_eval[:3])
    torch.testing.assert_close(w(x[5:6]), y_eval[5:6])
    assert torch.equal(w(x), y_eval)
    before = [b.clone() for b in w.buffers()]
    w(x * 2)
    assert all(torch.equal(a, b) for a, b in zip(before, w.buffers()))


def test_running_statistics_follow_the_momentum_rule():
    w = ChannelWhitening(3, momentum=0.25)
    x = _correlated(40, 3, dtype=torch.float32)
    mean, wm = w.batch_statistics(x)
    w(x)
    torch.testing.assert_close(w.running_mean, 0.25 * mean.squeeze(1))
    torch.testing.assert_close(w.running_whitening, 0.75 * torch.eye(3) + 0.25 * wm)


@pytest.mark.parametrize("rows", [2, 3, "duplicates", "constant"])
def test_rank_deficient_batch_gives_finite_output_and_gradients(rows):
    d = 16
    if rows == "duplicates":
        x = _correlated(4, d).repeat(8, 1)  # 32 rows, rank 3 after centring
    elif rows == "constant":
        x = torch.ones(8, d, dtype=torch.float64)
    else:
        x = _correlated(rows, d)
    x = x.clone().requires_grad_(True)
    w = ChannelWhitening(d).double().train()
    y = w(x)
    (y.pow(3).sum() + y.sum()).backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(b).all() for b in w.buffers())


def test_gradient_matches_finite_differences_with_repeated_eigenvalues():
    # 2 rows in 4 channels: the centred covariance has rank 1, three equal (ridge) eigenvalues.
    w = ChannelWhitening(4, eps=1e-2).double()
    x = _correlated(2, 4).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: w(t), (x,))
    x = _correlated(12, 6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ChannelWhitening(6, group_size=3).double()(t), (x,))


def test_whitening_runs_in_float32_under_autocast():
    w = ChannelWhitening(8)
    x = _correlated(32, 8, dtype=torch.float32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = w(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert w.running_whitening.dtype == torch.float32


def test_whitening_rejects_a_group_size_that_does_not_divide():
    with pytest.raises(ValueError, match="GROUP_SIZE"):
        ChannelWhitening(10, group_size=4)


def test_predictor_whitens_the_classifier_input_only():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.box_regression import Box2BoxTransform

    from lt_det.modeling import LTFastRCNNOutputLayers

    w = ChannelWhitening(8)
    p = LTFastRCNNOutputLayers(
        ShapeSpec(channels=8),
        box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        num_classes=K,
        cls_loss="softmax_ce",
        whitening=w,
    ).eval()
    x = torch.randn(5, 8)
    scores, deltas = p(x)
    torch.testing.assert_close(scores, p.cls_score(w(x)))
    torch.testing.assert_close(deltas, p.bbox_pred(x))


def test_whitening_config_builds_the_module():
    from lt_det.modeling.roi_heads import LTStandardROIHeads  # noqa: F401  (registration)
    from detectron2.layers import ShapeSpec
    from lt_det.modeling import LTFastRCNNOutputLayers

    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.WHITENING.ENABLED = True
    cfg.MODEL.ROI_BOX_HEAD.WHITENING.GROUP_SIZE = 4
    p = LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=16))
    assert isinstance(p.whitening, ChannelWhitening) and p.whitening.num_groups == 4
    cfg.MODEL.ROI_BOX_HEAD.WHITENING.ENABLED = False
    assert LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=16)).whitening is None


# ------------------------------------------------------------------------------ LDAM


def test_ldam_equals_hand_derived_values():
    z, y, prior = _inputs()
    max_m, s = 0.5, 2.0
    n = prior.tolist()
    margins = [max_m * nj ** -0.25 / min(n) ** -0.25 for nj in n]
    expected = []
    for row, t in zip(z.tolist(), y.tolist()):
        adj = [s * (v - (margins[j] if j == t and t < K else 0.0)) for j, v in enumerate(row)]
        expected.append(math.log(sum(math.exp(a) for a in adj)) - adj[t])
    got = ldam_loss(z, y, prior, max_margin=max_m, scale=s, reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=z.dtype))
    assert margins[3] == pytest.approx(max_m)  # the rarest class gets the largest margin


def test_ldam_with_zero_margin_and_unit_scale_is_plain_ce():
    z, y, prior = _inputs()
    torch.testing.assert_close(
        ldam_loss(z, y, prior, max_margin=0.0, scale=1.0), F.cross_entropy(z, y)
    )
    # Margins depend only on prior ratios.
    torch.testing.assert_close(ldam_loss(z, y, prior), ldam_loss(z, y, prior * 7.0))


def test_ldam_drw_weights_apply_from_drw_start_while_training():
    z, y, prior = _inputs(dtype=torch.float32)
    m = build_cls_loss(
        "ldam", num_classes=K, class_prior=prior, drw_start=5, drw_beta=0.99, num_images=1000
    ).train()
    plain = ldam_loss(z, y, prior, reduction="none")
    w = effective_number_weights(prior.double() * 1000, 0.99).float()
    with EventStorage(4):
        torch.testing.assert_close(m.per_roi(z, y), plain)
    with EventStorage(5):
        torch.testing.assert_close(m.per_roi(z, y), plain * w[y])
        torch.testing.assert_close(m(z, y), (plain * w[y]).mean())
    m.eval()
    with EventStorage(9):
        torch.testing.assert_close(m(z, y), plain.mean())
    torch.testing.assert_close(m.predict_probs(z), F.softmax(z, dim=1))


# ------------------------------------------------------------------------------ logit adjusted


@pytest.mark.parametrize("background", ["fg_mass", "unshifted"])
def test_logit_adjusted_tau_one_is_balanced_softmax(background):
    z, y, prior = _inputs()
    torch.testing.assert_close(
        logit_adjusted_loss(z, y, prior, tau=1.0, background=background),
        balanced_softmax_loss(z, y, prior, background=background),
    )


def test_logit_adjusted_reduces_to_ce_and_matches_closed_form():
    z, y, prior = _inputs()
    ce = F.cross_entropy(z, y)
    torch.testing.assert_close(logit_adjusted_loss(z, y, prior, tau=0.0), ce)
    torch.testing.assert_close(logit_adjusted_loss(z, y, torch.full_like(prior, 0.3), tau=2.0), ce)
    tau, mean_n = 0.5, sum(prior.tolist()) / K
    shift = [tau * math.log(n / mean_n) for n in prior.tolist()] + [0.0]
    rows = z + torch.tensor(shift, dtype=z.dtype)
    expected = torch.tensor(_ce_rows(rows, y), dtype=z.dtype)
    torch.testing.assert_close(
        logit_adjusted_loss(z, y, prior, tau=tau, reduction="none"), expected
    )


def test_logit_adjusted_posthoc_scores():
    z, y, prior = _inputs(dtype=torch.float32)
    m = build_cls_loss("logit_adjusted", num_classes=K, class_prior=prior)
    torch.testing.assert_close(m.predict_probs(z), F.softmax(z, dim=1))
    m = build_cls_loss("logit_adjusted", num_classes=K, class_prior=prior, posthoc_tau=1.0)
    mean_n = prior.mean()
    shift = torch.cat([torch.log(prior / mean_n), torch.zeros(1)])
    torch.testing.assert_close(m.predict_probs(z), F.softmax(z - shift, dim=1))


# ------------------------------------------------------------------------------ class-balanced


def test_effective_number_weights_closed_form():
    counts = torch.tensor([1000.0, 50.0, 3.0, 0.5])
    for beta in (0.9, 0.999, 0.9999):
        raw = [(1 - beta) / (1 - beta ** n) for n in counts.tolist()]
        expected = [r * K / sum(raw) for r in raw] + [1.0]
        torch.testing.assert_close(
            effective_number_weights(counts, beta), torch.tensor(expected, dtype=torch.float64)
        )
    torch.testing.assert_close(
        effective_number_weights(counts, 0.0), torch.ones(K + 1, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="beta"):
        effective_number_weights(counts, 1.0)


def test_class_balanced_losses_match_closed_forms():
    z, y, prior = _inputs()
    counts = prior * 2000
    beta, gamma = 0.999, 2.0
    w = effective_number_weights(counts, beta)[y]
    torch.testing.assert_close(
        class_balanced_softmax_loss(z, y, counts, beta=beta, reduction="none"),
        w * torch.tensor(_ce_rows(z, y), dtype=z.dtype),
    )
    focal = []
    for row, t in zip(z.tolist(), y.tolist()):
        total = 0.0
        for j in range(K):
            p = 1 / (1 + math.exp(-row[j]))
            pt = p if j == t else 1 - p
            total += -((1 - pt) ** gamma) * math.log(pt)
        focal.append(total)
    torch.testing.assert_close(
        class_balanced_focal_loss(z, y, counts, beta=beta, gamma=gamma, reduction="none"),
        w * torch.tensor(focal, dtype=z.dtype),
    )
    # beta 0: no weighting; the sigmoid form is plain sigmoid CE.
    torch.testing.assert_close(
        class_balanced_sigmoid_loss(z, y, counts, beta=0.0), sigmoid_ce_loss(z, y)
    )
    torch.testing.assert_close(
        class_balanced_softmax_loss(z, y, counts, beta=0.0), F.cross_entropy(z, y)
    )


# ------------------------------------------------------------------------------ loss contract

NEW_LOSSES = {
    "ldam": {"drw_start": 0, "num_images": 500},
    "logit_adjusted": {"tau": 0.7},
    "class_balanced_softmax": {"num_images": 500},
    "class_balanced_sigmoid": {"num_images": 500},
    "class_balanced_focal": {"num_images": 500},
}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_per_roi_equals_forward_and_is_twice_differentiable(name):
    z, y, prior = _inputs(dtype=torch.float64)
    m = build_cls_loss(name, num_classes=K, class_prior=prior, **NEW_LOSSES[name]).double()
    z.requires_grad_(True)
    with EventStorage(3):
        per_roi = m.per_roi(z, y)
        assert per_roi.shape == (z.shape[0],)
        torch.testing.assert_close(m(z, y), per_roi.mean())
        (g,) = torch.autograd.grad(per_roi.sum(), z, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), z)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    assert "class_prior" in m.state_dict()


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_empty_batch_is_zero_and_keeps_graph(name):
    _, _, prior = _inputs(dtype=torch.float32)
    m = build_cls_loss(name, num_classes=K, class_prior=prior, **NEW_LOSSES[name])
    z = torch.zeros(0, K + 1, requires_grad=True)
    loss = m(z, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0 and loss.requires_grad


def test_class_balanced_loss_refuses_instance_count_prior():
    from lt_det.modeling.losses.class_balanced import num_train_images_for_counts

    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "class_balanced_softmax"
    cfg.MODEL.ROI_BOX_HEAD.PRIOR.SOURCE = "instance_count"
    with pytest.raises(LTDetError, match="image counts"):
        num_train_images_for_counts(cfg)


# ------------------------------------------------------------------------------ GRBS + BET


def _one_class_per_image_lists():
    """Classes with 40, 20, 10, 5, 2, 1 images; every image holds exactly one class."""
    sizes = [40, 20, 10, 5, 2, 1]
    lists, start = [], 0
    for s in sizes:
        lists.append(list(range(start, start + s)))
        start += s
    image_class = {i: c for c, imgs in enumerate(lists) for i in imgs}
    return lists, image_class, sizes


def _batches(sampler, num_batches):
    it = iter(sampler)
    b = sampler.batch_size
    return [[next(it) for _ in range(b)] for _ in range(num_batches)]


def test_frequency_groups_split_sorted_classes():
    counts = torch.tensor([40, 0, 1, 10, 5, 2, 20])
    assert frequency_groups(counts, 3) == [[2, 5], [4, 3], [6, 0]]
    assert frequency_groups(counts, 10) == [[2], [5], [4], [3], [6], [0]]


@pytest.mark.parametrize("balance", [0.0, 0.5, 1.0])
def test_grbs_batches_are_composed_group_by_group(balance):
    lists, image_class, sizes = _one_class_per_image_lists()
    b, n_batches = 10, 600
    s = GroupBalancedSampler(
        lists, batch_size=b, num_groups=3, balance=balance, bet_fraction=1.0, seed=0
    )
    groups = s.groups  # [[5, 4], [3, 2], [1, 0]] (rarest first)
    assert groups == [[5, 4], [3, 2], [1, 0]]
    mass = [sum(sizes[c] for c in g) for g in groups]
    q = [m ** (1 - balance) for m in mass]
    q = [v / sum(q) for v in q]
    torch.testing.assert_close(s.group_probs, torch.tensor(q, dtype=torch.float64))
    group_of = {c: gi for gi, g in enumerate(groups) for c in g}
    totals = [0] * 3
    class_hits = [0] * len(sizes)
    for batch in _batches(s, n_batches):
        per_group = [0] * 3
        for i in batch:
            per_group[group_of[image_class[i]]] += 1
            class_hits[image_class[i]] += 1
        for gi in range(3):  # systematic sampling: floor or ceil of B q_g in every batch
            assert math.floor(b * q[gi] - 1e-9) <= per_group[gi] <= math.ceil(b * q[gi] + 1e-9)
            totals[gi] += per_group[gi]
    for gi in range(3):  # and B q_g on average (per batch: floor + Bernoulli(fractional part))
        frac = b * q[gi] - math.floor(b * q[gi])
        sd = math.sqrt(frac * (1 - frac) / n_batches)
        assert abs(totals[gi] / n_batches - b * q[gi]) <= 5 * sd + 1e-9
    # Inside a group a class is drawn in proportion to its image count.
    for g, gi in zip(groups, range(3)):
        hits = sum(class_hits[c] for c in g)
        for c in g:
            p = sizes[c] / mass[gi]
            assert abs(class_hits[c] - hits * p) <= 5 * math.sqrt(hits * p * (1 - p))


def test_bet_embeds_balanced_slots_in_uniform_batches():
    lists, image_class, sizes = _one_class_per_image_lists()
    num_images = sum(sizes)
    b, f, n_batches = 8, 0.25, 1500
    s = GroupBalancedSampler(lists, batch_size=b, num_groups=6, balance=1.0, bet_fraction=f, seed=1)
    counts = [0] * len(sizes)
    for batch in _batches(s, n_batches):
        for i in batch:
            counts[image_class[i]] += 1
    total = b * n_batches
    for c, size in enumerate(sizes):  # f of the slots: 1 / 6 per class; the rest uniform
        p = f / 6 + (1 - f) * size / num_images
        assert abs(counts[c] - total * p) <= 5 * math.sqrt(total * p * (1 - p)), (c, counts)
    # f = 0: plain uniform image sampling.
    u = GroupBalancedSampler(lists, batch_size=b, num_groups=6, bet_fraction=0.0, seed=1)
    hits = [0] * num_images
    for batch in _batches(u, 500):
        for i in batch:
            hits[i] += 1
    p = 1 / num_images
    assert all(abs(h - 4000 * p) <= 5 * math.sqrt(4000 * p * (1 - p)) for h in hits)


@pytest.mark.parametrize("kind", ["grbs", "progressive"])
def test_batch_samplers_are_seeded_and_rank_sharded(kind):
    lists, _, _ = _one_class_per_image_lists()

    def make(seed, rank=0, world=1):
        if kind == "grbs":
            return GroupBalancedSampler(
                lists, batch_size=6, seed=seed, rank=rank, world_size=world, batches_per_chunk=3
            )
        return ProgressiveBalancedSampler(
            lists,
            batch_size=6,
            max_iter=10,
            seed=seed,
            rank=rank,
            world_size=world,
            batches_per_chunk=3,
        )

    def take(s, n):
        it = iter(s)
        return [next(it) for _ in range(n)]

    single = take(make(3), 60)
    assert single == take(make(3), 60) and single != take(make(4), 60)
    shards = [take(make(3, r, 3), 20) for r in range(3)]
    interleaved = [shards[p % 3][p // 3] for p in range(60)]
    assert interleaved == single


# ------------------------------------------------------------------------------ progressive


def test_progressive_sampling_goes_from_instance_to_class_balanced():
    lists = [list(range(9)), [9]]  # class 0 on 9 images, class 1 on one
    b = 4000
    s = ProgressiveBalancedSampler(lists, batch_size=b, max_iter=3, seed=0)
    assert [s.alpha(t) for t in (0, 1, 2, 5)] == [0.0, 0.5, 1.0, 1.0]
    first, middle, last = _batches(s, 3)
    for batch, p_rare in ((first, 0.1), (middle, 0.5 * 0.1 + 0.5 * 0.5), (last, 0.5)):
        hits = sum(1 for i in batch if i == 9)
        assert abs(hits - b * p_rare) <= 5 * math.sqrt(b * p_rare * (1 - p_rare)), hits
    # Iteration 0 is uniform over the 10 images.
    for i in range(10):
        h = first.count(i)
        assert abs(h - b / 10) <= 5 * math.sqrt(b * 0.1 * 0.9)


# ------------------------------------------------------------------------------ registry / config


def _toy_dicts():
    ann = lambda c: {"category_id": c, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "iscrowd": 0}
    return [
        {"file_name": f"{i}.jpg", "image_id": i, "height": 8, "width": 8, "annotations": a}
        for i, a in enumerate([[ann(0)], [ann(0), ann(1)], [ann(1)], []])
    ]


@pytest.mark.parametrize("name", ["GroupBalancedSampler", "ProgressiveBalancedSampler"])
def test_samplers_build_from_config(name):
    cfg = add_lt_config(get_cfg())
    cfg.DATALOADER.SAMPLER_TRAIN = name
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.SOLVER.IMS_PER_BATCH = 4
    it = iter(build_train_sampler(cfg, _toy_dicts()))
    assert all(0 <= next(it) < 4 for _ in range(40))


def test_grbs_rejects_bad_values():
    lists, _, _ = _one_class_per_image_lists()
    with pytest.raises(LTDetError, match="BALANCE"):
        GroupBalancedSampler(lists, batch_size=4, balance=1.5)
    with pytest.raises(LTDetError, match="BET_FRACTION"):
        GroupBalancedSampler(lists, batch_size=4, bet_fraction=-0.1)
    with pytest.raises(LTDetError, match="NUM_GROUPS"):
        GroupBalancedSampler(lists, batch_size=4, num_groups=0)


def test_whitening_is_refused_with_the_meta_sampler():
    from detectron2.layers import ShapeSpec

    from lt_det.modeling import LTFastRCNNOutputLayers

    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.MODEL.ROI_BOX_HEAD.WHITENING.ENABLED = True
    cfg.DATALOADER.SAMPLER_TRAIN = "MetaSampler"
    with pytest.raises(LTDetError, match="MetaSampler"):
        LTFastRCNNOutputLayers(cfg, ShapeSpec(channels=16))


@pytest.mark.parametrize(
    "key, value",
    [
        ("DATALOADER.GRBS.BALANCE", 1.5),
        ("DATALOADER.GRBS.BET_FRACTION", -0.1),
        ("MODEL.ROI_BOX_HEAD.WHITENING.EPS", 0.0),
        ("MODEL.ROI_BOX_HEAD.LDAM.SCALE", 0.0),
        ("MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA", 1.0),
    ],
)
def test_out_of_range_values_are_refused_before_anything_is_built(key, value):
    from lt_det.engine.defaults import check_config_values

    cfg = add_lt_config(get_cfg())
    cfg.merge_from_list([key, str(value)])
    with pytest.raises(LTDetError, match=key.replace(".", r"\.")):
        check_config_values(cfg)


# key, a value just outside its range, the range as the message states it, a value at the edge
# inside it (the range table of lt_det.engine.defaults.check_key_ranges, written out)
KEY_RANGE_CASES = [
    ("MODEL.ROI_BOX_HEAD.LDAM.MAX_MARGIN", -0.5, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.LDAM.SCALE", 0.0, "> 0", 0.5),
    ("MODEL.ROI_BOX_HEAD.LDAM.DRW_BETA", 1.0, "in [0, 1)", 0.0),
    ("MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.TAU", -1.0, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.LOGIT_ADJUSTED.POSTHOC_TAU", -1.0, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.CLASS_BALANCED.BETA", 1.0, "in [0, 1)", 0.0),
    ("MODEL.ROI_BOX_HEAD.CLASS_BALANCED.FOCAL_GAMMA", -0.5, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.WHITENING.GROUP_SIZE", -1, ">= 0", 0),
    ("MODEL.ROI_BOX_HEAD.WHITENING.EPS", 0.0, "> 0", 1e-5),
    ("MODEL.ROI_BOX_HEAD.WHITENING.MOMENTUM", 0.0, "in (0, 1]", 1.0),
    ("DATALOADER.GRBS.NUM_GROUPS", 0, ">= 1", 1),
    ("DATALOADER.GRBS.BALANCE", 1.5, "in [0, 1]", 1.0),
    ("DATALOADER.GRBS.BET_FRACTION", -0.1, "in [0, 1]", 0.0),
    ("MODEL.ROI_BOX_HEAD.GRW.RHO", -0.5, ">= 0", 0.0),
    ("MODEL.DECOUPLE.DISALIGN.GATE_INIT_STD", -0.01, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.PCB.ALPHA", 1.5, "in [0, 1]", 1.0),
    ("MODEL.ROI_BOX_HEAD.PCB.MOMENTUM", 1.0, "in [0, 1)", 0.0),
    ("MODEL.ROI_BOX_HEAD.PCB.START", -0.1, "in [0, 1]", 0.0),
    ("MODEL.DECOUPLE.CBD.ALPHA", 1.0, "in [0, 1)", 0.0),
    ("MODEL.DECOUPLE.CBD.BETA", -1.0, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.ECM.FG_BG_RATIO", 0.0, "> 0", 0.5),
    ("MODEL.ROI_BOX_HEAD.ACSL.SCORE_THR", 1.0, "in (0, 1)", 0.5),
    ("MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN", -51.0, ">= -50", -50.0),
    ("MODEL.ROI_BOX_HEAD.GOL.MAX_LOSS", -1.0, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_LAMBDA", -1.0, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_FREQ_WEIGHT", -0.5, ">= 0", 0.0),
    ("MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL_MAX_GRID", 0, ">= 1", 1),
]


@pytest.mark.parametrize("key, value, message", [
    ("MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS", [0.01, 0.1], "must be three values in [0, 1]"),
    ("MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS", [0.01, 0.1, 1.5], "must be three values in [0, 1]"),
    ("MODEL.ROI_BOX_HEAD.GOL.CLAMP_MIN", 11.0, "must be below MODEL.ROI_BOX_HEAD.GOL.CLAMP_MAX"),
    ("MODEL.ROI_BOX_HEAD.GOL.BIAS_INIT", float("nan"), "it must be finite"),
])
def test_key_relation_messages(key, value, message):
    from lt_det.engine.defaults import check_config_values

    cfg = add_lt_config(get_cfg())
    check_config_values(cfg)  # the defaults pass
    node = cfg
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    with pytest.raises(LTDetError, match=re.escape(message)) as e:
        check_config_values(cfg)
    assert key in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key, bad, valid, edge", KEY_RANGE_CASES)
def test_key_range_messages(key, bad, valid, edge):
    from lt_det.engine.defaults import KEY_RANGES, check_key_ranges

    assert len(KEY_RANGES) == len(KEY_RANGE_CASES)
    cfg = add_lt_config(get_cfg())
    cfg.merge_from_list([key, str(edge)])
    check_key_ranges(cfg)
    cfg.merge_from_list([key, str(bad)])
    with pytest.raises(LTDetError) as e:
        check_key_ranges(cfg)
    assert str(e.value) == f"{key} is {bad!r}; it must be {valid}."
