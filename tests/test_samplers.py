"""Training samplers: registry, detectron2's repeat factors, class-power draws, rank sharding,
determinism, and the Meta Sampler (meta-gradient direction, checkpoint state, worker visibility).
"""
import io
import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.common import ToIterableDataset
from detectron2.data.samplers import RepeatFactorTrainingSampler

from lt_det import add_lt_config
from lt_det.data.samplers import (
    ClassImageIndex,
    ClassPowerSampler,
    MetaSampler,
    build_train_sampler,
    registered_sampler_names,
    repeat_factors,
    repeat_factors_from_cfg,
)
from lt_det.decouple.balms import MetaSamplerLearner
from lt_det.decouple.feature_bank import ClassBalancedFeatureBank
from lt_det.errors import LTDetError

OURS = ["ClassBalancedSampler", "ClassPowerSampler", "MetaSampler"]


def _toy_dicts():
    """3 images: {class 0}, {class 0, class 1 (twice)}, and one without annotations."""
    ann = lambda c: {"category_id": c, "bbox": [0, 0, 4, 4], "bbox_mode": 1, "iscrowd": 0}
    return [
        {"file_name": "a.jpg", "image_id": 0, "height": 8, "width": 8, "annotations": [ann(0)]},
        {
            "file_name": "b.jpg",
            "image_id": 1,
            "height": 8,
            "width": 8,
            "annotations": [ann(0), ann(1), ann(1)],
        },
        {"file_name": "c.jpg", "image_id": 2, "height": 8, "width": 8, "annotations": []},
    ]


def _cfg(sampler: str, num_classes: int = 2):
    cfg = add_lt_config(get_cfg())
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def _chi2_df4_sf(x: float) -> float:
    """Survival function of chi-square with 4 degrees of freedom: exp(-x/2) (1 + x/2)."""
    return math.exp(-x / 2) * (1 + x / 2)


def _chi2_df4_threshold(alpha: float) -> float:
    lo, hi = 0.0, 200.0  # sf is decreasing: bisect sf(x) = alpha
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _chi2_df4_sf(mid) > alpha else (lo, mid)
    return hi


def _chi2(observed, expected_probs):
    n = sum(observed)
    return sum((o - n * p) ** 2 / (n * p) for o, p in zip(observed, expected_probs))


# ------------------------------------------------------------------------------------ registry


def test_registry_lists_every_sampler_and_rejects_unknown_names():
    assert set(registered_sampler_names()) >= {"TrainingSampler", "RepeatFactorTrainingSampler"}
    assert set(OURS) <= set(registered_sampler_names())
    with pytest.raises(LTDetError, match="ClassBalancedSampler.*MetaSampler"):
        build_train_sampler(_cfg("SquareRootSampler"), _toy_dicts())


@pytest.mark.parametrize("name", ["TrainingSampler", "RepeatFactorTrainingSampler"] + OURS)
def test_every_registered_sampler_builds_and_yields_indices(name):
    indices = _take(build_train_sampler(_cfg(name), _toy_dicts()), 50)
    assert all(0 <= i < 3 for i in indices)


def test_repeat_factors_equal_detectron2_including_an_image_without_annotations():
    dicts = _toy_dicts()
    cfg = _cfg("RepeatFactorTrainingSampler")
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    # f(0) = 2/3, f(1) = 1/3; r(c) = max(1, sqrt(0.5 / f(c))) -> r(0) = 1, r(1) = sqrt(1.5);
    # image factor = max over its classes, 1 for the image without annotations.
    expected = torch.tensor([1.0, math.sqrt(1.5), 1.0])
    d2 = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5)
    ours = repeat_factors_from_cfg(cfg, dicts)
    assert torch.equal(ours, d2)
    assert torch.allclose(ours, expected)
    sampler = build_train_sampler(cfg, dicts)
    assert type(sampler) is RepeatFactorTrainingSampler
    assert torch.allclose(sampler._int_part + sampler._frac_part, expected)


def test_repeat_factors_exclude_crowd_regions_as_the_class_statistics_do():
    # 10 images, class 0 (non-crowd) in each; class 1 non-crowd in image 0 only and as crowd
    # regions in images 1 and 2. lt_det's class statistics exclude crowd regions, so
    # f(1) = 1/10 and, at t = 0.3, r(1) = max(1, sqrt(0.3 / 0.1)) = sqrt(3) = 1.732;
    # counting the crowd regions (detectron2's own function) would give f(1) = 3/10, r(1) = 1.
    def ann(c, crowd=0):
        return {"category_id": c, "iscrowd": crowd, "bbox": [0, 0, 4, 4], "bbox_mode": 1}

    dicts = [{"image_id": i, "annotations": [ann(0)]} for i in range(10)]
    dicts[0]["annotations"].append(ann(1))
    dicts[1]["annotations"].append(ann(1, crowd=1))
    dicts[2]["annotations"].append(ann(1, crowd=1))
    cfg = _cfg("RepeatFactorTrainingSampler")
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.3
    f1 = 1 / 10
    r1 = max(1.0, math.sqrt(0.3 / f1))
    expected = torch.tensor([r1] + [1.0] * 9)
    ours = repeat_factors_from_cfg(cfg, dicts)
    torch.testing.assert_close(ours, expected)
    assert round(float(ours[0]), 3) == 1.732
    from lt_det.class_stats import class_stats_from_dicts

    stats = class_stats_from_dicts(dicts, 2)
    assert stats.image_counts == (10, 1)  # the same numbers the priors and samplers read
    d2 = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.3)
    assert float(d2[0]) == 1.0  # what counting crowd regions gives
    # without the square root (newer detectron2's REPEAT_SQRT False): max(1, t / f)
    no_sqrt = repeat_factors(dicts, 2, 0.3, sqrt=False)
    torch.testing.assert_close(no_sqrt, torch.tensor([0.3 / f1] + [1.0] * 9))


@pytest.mark.parametrize("name", OURS)
def test_class_samplers_never_draw_the_image_without_annotations(name):
    indices = _take(build_train_sampler(_cfg(name), _toy_dicts()), 2000)
    assert set(indices) == {0, 1}


def test_class_image_index_is_deduplicated_and_checks_class_ids():
    index = ClassImageIndex.from_dataset_dicts(_toy_dicts())
    assert index.num_images == 3 and index.num_classes == 2
    assert index.images_of(0).tolist() == [0, 1] and index.images_of(1).tolist() == [1]
    assert index.image_counts.tolist() == [2, 1]
    with pytest.raises(LTDetError, match="NUM_CLASSES"):
        ClassImageIndex.from_dataset_dicts(_toy_dicts(), num_classes=1)
    with pytest.raises(LTDetError, match="none of the 1 training images"):
        ClassImageIndex.from_dataset_dicts([{"annotations": []}])


# ------------------------------------------------------------------------- class-power draws

# One class per image, so the class of a drawn image is known. n_c images of class c.
COUNTS = [1, 3, 10, 40, 200]


def _single_class_lists():
    lists, start = [], 0
    for n in COUNTS:
        lists.append(list(range(start, start + n)))
        start += n
    return lists


def _class_of_image():
    return [c for c, n in enumerate(COUNTS) for _ in range(n)]


@pytest.mark.parametrize("power", [0.0, 0.5])
def test_class_draws_follow_n_c_to_the_power_within_sampling_error(power):
    sampler = ClassPowerSampler(_single_class_lists(), power=power, seed=7, rank=0, world_size=1)
    class_of = _class_of_image()
    observed = [0] * len(COUNTS)
    for i in _take(sampler, 20000):
        observed[class_of[i]] += 1
    weights = [n ** power for n in COUNTS]
    expected = [w / sum(weights) for w in weights]
    threshold = _chi2_df4_threshold(1e-3)  # 18.47 (df = 5 classes - 1)
    assert abs(threshold - 18.4668) < 1e-3
    assert _chi2(observed, expected) < threshold
    if power == 0.0:
        # The test can fail: image-proportional draws are far from uniform over classes.
        prop = ClassPowerSampler(_single_class_lists(), power=1.0, seed=7, rank=0, world_size=1)
        obs_prop = [0] * len(COUNTS)
        for i in _take(prop, 20000):
            obs_prop[class_of[i]] += 1
        assert _chi2(obs_prop, expected) > 100 * threshold


def test_images_within_a_class_are_uniform():
    # Class 0 is on images 0..3, class 1 only on image 4; class-balanced -> 1/8 each for 0..3.
    sampler = ClassPowerSampler([[0, 1, 2, 3], [4]], power=0.0, seed=1, rank=0, world_size=1)
    observed = [0] * 5
    for i in _take(sampler, 16000):
        observed[i] += 1
    assert _chi2(observed, [1 / 8] * 4 + [1 / 2]) < _chi2_df4_threshold(1e-3)


# ---------------------------------------------------------------- determinism and sharding


def _make(kind, **kw):
    if kind == "power":
        return ClassPowerSampler(_single_class_lists(), power=0.5, chunk_size=7, **kw)
    return MetaSampler(_single_class_lists(), init="sqrt", chunk_size=7, **kw)


@pytest.mark.parametrize("kind", ["power", "meta"])
def test_same_seed_same_stream_other_seed_other_stream(kind):
    a = _take(_make(kind, seed=3, rank=0, world_size=1), 300)
    assert a == _take(_make(kind, seed=3, rank=0, world_size=1), 300)
    assert a != _take(_make(kind, seed=4, rank=0, world_size=1), 300)


@pytest.mark.parametrize("kind", ["power", "meta"])
def test_ranks_take_disjoint_positions_of_one_stream(kind):
    single = _take(_make(kind, seed=3, rank=0, world_size=1), 600)
    r0 = _take(_make(kind, seed=3, rank=0, world_size=2), 300)
    r1 = _take(_make(kind, seed=3, rank=1, world_size=2), 300)
    assert r0 == single[0::2] and r1 == single[1::2]
    assert r0 != r1
    # Three ranks with a chunk size (7) that is not a multiple of the world size.
    shards = [_take(_make(kind, seed=3, rank=r, world_size=3), 200) for r in range(3)]
    assert [shards[p % 3][p // 3] for p in range(600)] == single


# ------------------------------------------------------------------------------ Meta Sampler

K, D = 3, 4


def _features(c, n, gen):
    x = 0.3 * torch.randn(n, D, generator=gen)
    x[:, c] += 3.0
    return x


def _crafted_problem():
    """Classifier that ignores class 2 (its weight row is zero); class 2 is rare in the batch.

    Classes 0 and 1 (and background, label 3) are classified well, class 2 gets uniform scores,
    so its meta loss is high; its 3 training ROIs are the ones whose up-weighting lowers it.
    """
    gen = torch.Generator().manual_seed(0)
    classifier = torch.nn.Linear(D, K + 1)
    with torch.no_grad():
        classifier.weight.copy_(2 * torch.eye(K + 1, D))
        classifier.weight[2].zero_()
        classifier.bias.zero_()
    y = torch.tensor([0] * 30 + [1] * 30 + [2] * 3 + [3] * 30)
    x = torch.cat([_features(c, n, gen) for c, n in [(0, 30), (1, 30), (2, 3), (3, 30)]])
    meta_y = torch.arange(K).repeat_interleave(4)
    meta_x = torch.cat([_features(c, 4, gen) for c in range(K)])
    return classifier, x, y, meta_x, meta_y


def _learner(sampler, **kw):
    args = dict(lr=0.05, inner_lr=1.0, meta_per_class=4, meta_batch_size=0, seed=0)
    args.update(kw)
    return MetaSamplerLearner(sampler.rates, **args)


def _meta_sampler():
    return MetaSampler(
        [[0, 1], [2, 3], [4, 5]], init="class_balanced", seed=0, rank=0, world_size=1
    )


def test_meta_sampler_raises_the_rate_of_the_class_with_high_meta_loss():
    classifier, x, y, meta_x, meta_y = _crafted_problem()
    before = [p.clone() for p in classifier.parameters()]
    sampler = _meta_sampler()
    learner = _learner(sampler)
    assert torch.allclose(sampler.rates, torch.full((K,), 1 / K))
    learner.bank.push(meta_x, meta_y)
    losses = [learner.step(classifier, x, y)["meta_sampler/meta_loss"] for _ in range(10)]
    rates = sampler.rates  # the learner wrote into the sampler's tensor
    assert rates[2] > 0.5 and rates[2] > rates[0] and rates[2] > rates[1]
    assert abs(float(rates.sum()) - 1) < 1e-5
    assert torch.equal(sampler.class_probabilities(), rates)
    assert all(torch.equal(a, b) for a, b in zip(before, classifier.parameters()))
    assert all(math.isfinite(v) for v in losses)
    stats = learner.log_stats(["r", "c", "f"])
    assert stats["meta_sampler/rate_max"] == pytest.approx(float(rates[2]) * K, rel=1e-5)
    assert stats["meta_sampler/draw_share_f"] == pytest.approx(float(rates[2]), rel=1e-5)


def test_meta_update_with_the_trainers_gradients_equals_the_full_update():
    classifier, x, y, meta_x, meta_y = _crafted_problem()
    loss = torch.nn.functional.cross_entropy(classifier(x), y)
    loss.backward()  # mean CE over all ROIs, as detectron2's box loss
    grads = {n: p.grad.clone() for n, p in classifier.named_parameters()}
    results = []
    for train_grads in (None, grads):
        learner = _learner(_meta_sampler())
        learner.bank.push(meta_x, meta_y)
        learner.step(classifier, x, y, train_grads=train_grads)
        results.append(learner.rates.clone())
    assert torch.allclose(results[0], results[1], atol=1e-6)
    assert not torch.allclose(results[0], torch.full((K,), 1 / K))


def test_meta_sampler_state_survives_save_and_load():
    classifier, x, y, meta_x, meta_y = _crafted_problem()
    a = _learner(_meta_sampler())
    a.bank.push(meta_x, meta_y)
    for _ in range(3):
        a.step(classifier, x, y)
    buffer = io.BytesIO()
    torch.save({"meta_sampler": a.state_dict()}, buffer)
    buffer.seek(0)
    sampler_b = _meta_sampler()
    b = _learner(sampler_b, seed=123)
    b.load_state_dict(torch.load(buffer, weights_only=False)["meta_sampler"])
    assert torch.equal(b.logits, a.logits) and torch.equal(sampler_b.rates, a.rates)
    a.step(classifier, x, y)
    b.step(classifier, x, y)  # same Adam moments, meta set and generator -> same update
    assert torch.allclose(b.rates, a.rates, atol=1e-7)


def test_rates_written_in_the_main_process_reach_a_forked_worker():
    sampler = MetaSampler(
        [[0], [1]], init="class_balanced", seed=0, rank=0, world_size=1, chunk_size=4
    )
    learner = MetaSamplerLearner(
        sampler.rates,
        class_mask=sampler.image_counts > 0,
        lr=0.1,
        inner_lr=0.1,
        meta_per_class=1,
        meta_batch_size=0,
    )
    state = learner.state_dict()
    state["logits"] = torch.tensor([0.0, -40.0])  # pi = (1, e^-40): only image 0
    learner.load_state_dict(state)
    loader = torch.utils.data.DataLoader(
        ToIterableDataset([0, 1], sampler),
        batch_size=None,
        num_workers=1,
        multiprocessing_context="fork",
        prefetch_factor=2,
    )
    it = iter(loader)
    assert [int(next(it)) for _ in range(20)] == [0] * 20
    state["logits"] = torch.tensor([-40.0, 0.0])  # the learner writes pi = (e^-40, 1)
    learner.load_state_dict(state)
    # Items already drawn (one chunk + prefetched ones) may still be 0; then only 1.
    after = [int(next(it)) for _ in range(40)]
    del it
    assert after[-20:] == [1] * 20


def test_feature_bank_keeps_the_last_features_of_each_class():
    bank = ClassBalancedFeatureBank(num_classes=3, per_class=2)
    assert bank.sample(4) is None
    feats = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 2)  # row i = (i, i)
    bank.push(feats, torch.tensor([0, 0, 0, 3, 1, 3]))  # label 3 = background: ignored
    assert bank.filled.tolist() == [2, 1, 0]
    bank.push(feats[5:], torch.tensor([0]))
    x, y = bank.sample(0)  # whole bank
    stored = sorted((int(c), float(v)) for c, v in zip(y, x[:, 0]))
    assert stored == [(0, 2.0), (0, 5.0), (1, 4.0)]
    x, y = bank.sample(3000, generator=torch.Generator().manual_seed(0))
    share = (y == 0).float().mean()
    assert abs(share - 0.5) < 0.05  # class-balanced: classes 0 and 1 equally often


def _distributed_worker(rank, init_file, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        classifier, x, y, meta_x, meta_y = _crafted_problem()
        sampler = MetaSampler([[0, 1], [2, 3], [4, 5]], init="class_balanced", seed=0)
        learner = _learner(sampler, seed=0)
        if rank == 0:  # rank 1 starts with an empty meta set: nothing to contribute at first
            learner.bank.push(meta_x, meta_y)
        stats = [learner.step(classifier, x[rank::2], y[rank::2]) for _ in range(3)]
        queue.put((rank, sampler.rates.tolist(), [sorted(s) for s in stats]))
    finally:
        dist.destroy_process_group()


def test_meta_rates_stay_identical_across_ranks(tmp_path):
    ctx = torch.multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_distributed_worker, args=(r, str(tmp_path / "init"), queue))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(
        (r, (rates, stats)) for r, rates, stats in [queue.get(timeout=60) for _ in procs]
    )
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == results[1][0]  # the same rates on both ranks
    assert results[0][0] != pytest.approx([1 / K] * K)  # and they were updated
    assert results[1][1][0] == []  # rank 1 had no meta batch in its first step


@pytest.mark.parametrize("loss", ["balanced_softmax", "balanced_sigmoid"])
def test_learner_from_config_steps_through_the_heads_own_loss(loss):
    # Inner loss = the head loss's per_roi; meta loss = its plain form: softmax CE for a softmax
    # head, sigmoid CE for a sigmoid head (which never reads the background column).
    from lt_det.modeling.losses import build_cls_loss

    prior = torch.tensor([0.5, 0.2, 0.1])
    cls_loss = build_cls_loss(loss, num_classes=3, class_prior=prior)
    learner = MetaSamplerLearner(_cfg("MetaSampler", 3), _meta_sampler(), cls_loss=cls_loss)
    g = torch.Generator().manual_seed(0)
    z, y = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 3])
    torch.testing.assert_close(learner.loss_fn(z, y), cls_loss(z, y, reduction="none"))
    if loss == "balanced_softmax":
        expected = torch.nn.functional.cross_entropy(z, y)
    else:
        target = torch.nn.functional.one_hot(y, 4)[:, :3].float()
        expected = torch.nn.functional.binary_cross_entropy_with_logits(
            z[:, :3], target, reduction="sum"
        ) / 6
        z_bg = z.clone()
        z_bg[:, 3] += 5.0
        torch.testing.assert_close(learner.meta_loss_fn(z_bg, y), expected)
    torch.testing.assert_close(learner.meta_loss_fn(z, y), expected)
