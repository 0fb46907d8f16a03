"""Every registered loss, calibration and stage-2 method against a transcription of its reference
code's maths at matched settings, and the defaults that follow the reference.

Each ``_ref_*`` function restates, in plain torch written for this file, what the reference
repository computes (file and commit in docs/peers.md and docs/e2e.md). "Matched settings" are
the inputs on which the two must agree exactly: where lt_det's head has a background column
that the reference's classifier does not have (classification references), the background
logit is set to -1e4 (exp underflows to 0) and every ROI is foreground; where the reference
draws at random (federated negatives, BAGS "others"), inputs for which the draw is determined.

Also here: the checks of logits width and label range every pure loss function makes.
"""
import contextlib
import math

import pytest
import torch
from torch.nn import functional as F

from lt_det.decouple import LT_DECOUPLE_REGISTRY, LWSLinear, TauNormLinear, tau_normalize
from lt_det.modeling.calibration import CALIBRATION_METHODS, PosthocCalibration
from lt_det.modeling.losses import (
    LT_CLS_LOSS_REGISTRY,
    acsl_class_groups,
    acsl_loss,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
    bags_groups,
    bags_loss,
    bags_probs,
    build_cls_loss,
    class_balanced_focal_loss,
    class_balanced_sigmoid_loss,
    class_balanced_softmax_loss,
    ecm_loss,
    eql_loss,
    eqlv2_loss,
    federated_class_mask,
    federated_loss,
    grw_loss,
    gol_loss,
    ldam_loss,
    logit_adjusted_loss,
    pcb_loss,
    seesaw_loss,
    sigmoid_ce_loss,
    softmax_ce_loss,
)

K = 6
NEG = -1e4  # background logit of the matched setting for classification references


def _logits(r=12, k=K, seed=0, fg_only=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(r, k + 1, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, k + 1, (r,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    if fg_only:
        y = torch.where(y == k, torch.zeros_like(y), y)
        z[:, k] = NEG
    else:
        y[k] = k  # and the background
    return z, y



@contextlib.contextmanager
def _counts_dataset(name):
    """A registered 4-image training set: instance counts [10, 4, 2], image counts [2, 4, 1]
    for classes 0, 1, 2 (removed from the catalog afterwards)."""
    from detectron2.data import DatasetCatalog

    def ann(c):
        return {"category_id": c, "iscrowd": 0, "bbox": [0, 0, 4, 4], "bbox_mode": 1}

    images = [[0] * 5 + [1], [0] * 5 + [1, 2, 2], [1], [1]]
    dicts = [{"image_id": i, "annotations": [ann(c) for c in cs]} for i, cs in enumerate(images)]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    DatasetCatalog.register(name, lambda: dicts)
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)

def _counts(k=K):
    return torch.tensor([500.0, 120.0, 40.0, 9.0, 3.0, 1.0][:k], dtype=torch.float64)


# ------------------------------------------------------------------ softmax / sigmoid CE
def test_softmax_ce_equals_detectron2_cross_entropy():
    # detectron2 FastRCNNOutputLayers.losses: detectron2.layers.cross_entropy, mean over ROIs
    from detectron2.layers import cross_entropy

    z, y = _logits()
    torch.testing.assert_close(softmax_ce_loss(z, y), cross_entropy(z, y, reduction="mean"))


def _ref_detectron2_sigmoid_ce(z, y, fed_classes=None):
    """detectron2 main fast_rcnn.py sigmoid_cross_entropy_loss: one-hot over K + 1, column K
    dropped, BCE summed (times the federated class mask) and divided by N."""
    n, k = z.shape[0], z.shape[1] - 1
    target = torch.zeros(n, k + 1, dtype=z.dtype)
    target[torch.arange(n), y] = 1
    target = target[:, :k]
    loss = F.binary_cross_entropy_with_logits(z[:, :-1], target, reduction="none")
    weight = 1.0
    if fed_classes is not None:
        mask = torch.zeros(k + 1, dtype=z.dtype)
        mask[fed_classes] = 1
        weight = mask[:k].view(1, k).expand(n, k)
    return torch.sum(loss * weight) / n


def test_sigmoid_ce_equals_detectron2_sigmoid_ce():
    z, y = _logits()
    torch.testing.assert_close(sigmoid_ce_loss(z, y), _ref_detectron2_sigmoid_ce(z, y))


# ------------------------------------------------------------------ federated loss
def _ref_fed_loss_classes(gt_classes, num_fed, k, weight):
    """detectron2 main get_fed_loss_classes: unique labels (background included) plus
    negatives drawn with ``weight`` until ``num_fed``."""
    unique = torch.unique(gt_classes)
    prob = torch.ones(k + 1)
    prob[-1] = 0
    if len(unique) < num_fed:
        prob[:k] = weight.float().clone()
        prob[unique] = 0
        neg = torch.multinomial(prob, num_fed - len(unique), replacement=False)
        return torch.cat([unique, neg])
    return unique


def test_federated_counts_the_background_label_as_detectron2():
    # 60 classes, 10 present plus background, |S| = 50: detectron2 keeps 49 foreground classes
    k = 60
    y = torch.cat([torch.arange(10), torch.full((5,), k)])
    weight = torch.rand(k, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.manual_seed(0)
    ref = _ref_fed_loss_classes(y, 50, k, weight)
    assert int((ref < k).sum()) == 49
    for groups in (None, [15]):  # batch sets and one image's set
        mask = federated_class_mask(y, weight, 50, rois_per_image=groups)
        assert int(mask.sum()) == 49
        assert bool(mask[0, :10].all())


@pytest.mark.parametrize("class_sets", ["batch", "image"])
def test_federated_loss_equals_detectron2_where_the_draw_is_determined(class_sets):
    # labels {0, 2, 4, K}; |S| = 5 leaves one draw, and only class 5 has weight: S = {0, 2, 4, 5}
    z = _logits()[0][:6]
    y = torch.tensor([0, 2, 4, K, K, 2])
    weight = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    ref = _ref_fed_loss_classes(y, 5, K, weight)
    assert sorted(ref.tolist()) == [0, 2, 4, 5, K]
    groups = [6] if class_sets == "image" else None
    mask = federated_class_mask(y, weight, 5, rois_per_image=groups)
    got = federated_loss(z, y, mask, rois_per_image=groups)
    torch.testing.assert_close(got, _ref_detectron2_sigmoid_ce(z, y, ref))
    # the module (class_sets "batch" is detectron2's) on the same inputs, drawing with power 1
    loss = build_cls_loss(
        "federated", num_classes=K, class_prior=weight.clamp(min=1e-30).float(),
        num_classes_sampled=5, power=1.0, class_sets=class_sets,
    )
    torch.testing.assert_close(loss(z, y, groups), _ref_detectron2_sigmoid_ce(z, y, ref))


# ------------------------------------------------------------------ balanced softmax / sigmoid
def test_balanced_softmax_equals_balms_on_foreground_rois():
    # BalancedMetaSoftmax-Classification loss/BalancedSoftmaxLoss.py: CE(z + log n_j, y)
    z, y = _logits(fg_only=True)
    n = _counts()
    ref = F.cross_entropy(z[:, :K] + n.log(), y, reduction="none")
    for bg in ("fg_mass", "unshifted"):
        got = balanced_softmax_loss(z, y, n, reduction="none", background=bg)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def _ref_balms_sigmoid(z, y, freq):
    """BalancedMetaSoftmax-InstanceSeg fast_rcnn.py balanced_softmax_loss (sigmoid variant):
    foreground rows get z - log((1 - f) / f), BCE over the K classes, summed, / N."""
    n, k = z.shape[0], z.shape[1] - 1
    x = z[:, :k].clone()
    target = F.one_hot(y, k + 1)[:, :k].to(z.dtype)
    weight = ((1.0 - freq) / freq).unsqueeze(0).expand(n, -1)
    fg = y != k
    x[fg] = (x - weight.log())[fg]
    return F.binary_cross_entropy_with_logits(x, target, reduction="none").sum() / n


def test_balanced_sigmoid_equals_balms_instance_seg():
    z, y = _logits()
    freq = _counts() / 1000.0
    torch.testing.assert_close(balanced_sigmoid_loss(z, y, freq), _ref_balms_sigmoid(z, y, freq))


# ------------------------------------------------------------------ EQL / EQLv2
def _ref_eql(z, y, freq, lambda_):
    """tztztztztz/eqlv2 mmdet/models/losses/eql.py: the classifier has K outputs; weight
    1 - E(r) T(f) (1 - y) with E(r) = [not background], T(f) = [f < lambda]; sum / N."""
    x = z[:, :-1]
    n, c = x.shape
    target = torch.zeros(n, c + 1, dtype=z.dtype)
    target[torch.arange(n), y] = 1
    target = target[:, :c]
    exclude = (y != c).to(z.dtype).view(n, 1).expand(n, c)
    threshold = (freq < lambda_).to(z.dtype).view(1, c).expand(n, c)
    w = 1 - exclude * threshold * (1 - target)
    return torch.sum(F.binary_cross_entropy_with_logits(x, target, reduction="none") * w) / n


def test_eql_equals_reference():
    z, y = _logits()
    freq = _counts() / 1000.0
    for lam in (0.0, 0.005, 0.05, 1.0):
        torch.testing.assert_close(eql_loss(z, y, freq, lambda_=lam), _ref_eql(z, y, freq, lam))


class _RefEQLv2:
    """tztztztztz/eqlv2 mmdet/models/losses/eqlv2.py: K + 1 sigmoids (the last is objectness),
    weights from the accumulated gradient ratio, statistics of the first K columns only."""

    def __init__(self, k, gamma=12.0, mu=0.8, alpha=4.0, test_with_obj=True):
        self.gamma, self.mu, self.alpha, self.obj = gamma, mu, alpha, test_with_obj
        self.pos_grad = torch.zeros(k, dtype=torch.float64)
        self.neg_grad = torch.zeros(k, dtype=torch.float64)
        self.pos_neg = torch.ones(k, dtype=torch.float64) * 100

    def _map(self, x):
        return 1 / (1 + torch.exp(-self.gamma * (x - self.mu)))

    def __call__(self, z, y):
        n_i, n_c = z.shape
        target = torch.zeros(n_i, n_c, dtype=z.dtype)
        target[torch.arange(n_i), y] = 1
        neg_w = torch.cat([self._map(self.pos_neg), torch.ones(1, dtype=z.dtype)])
        pos_w = 1 + self.alpha * (1 - neg_w)
        weight = pos_w.view(1, -1) * target + neg_w.view(1, -1) * (1 - target)
        loss = F.binary_cross_entropy_with_logits(z, target, reduction="none")
        loss = torch.sum(loss * weight) / n_i
        prob = torch.sigmoid(z)
        grad = torch.abs(target * (prob - 1) + (1 - target) * prob)
        self.pos_grad += torch.sum(grad * target * weight, dim=0)[:-1]
        self.neg_grad += torch.sum(grad * (1 - target) * weight, dim=0)[:-1]
        self.pos_neg = self.pos_grad / (self.neg_grad + 1e-10)
        return loss

    def activation(self, z):
        s = torch.sigmoid(z)
        if self.obj:
            s[:, :-1] *= 1 - s[:, -1:]
        return s


@pytest.mark.parametrize("test_with_obj", [True, False])
def test_eqlv2_loss_state_and_scores_equal_reference_over_iterations(test_with_obj):
    ref = _RefEQLv2(K, test_with_obj=test_with_obj)
    loss = build_cls_loss("eqlv2", num_classes=K, test_with_obj=test_with_obj).double()
    for it in range(4):
        z, y = _logits(r=20, seed=it)
        z = z * 3
        expected = ref(z, y)
        got = loss(z.clone().requires_grad_(), y)
        torch.testing.assert_close(got.detach(), expected, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(loss.pos_neg.double(), ref.pos_neg, rtol=1e-5, atol=1e-9)
    assert float(loss.weights()[1].min()) < 0.5  # the weights moved away from 1
    scores = loss.predict_probs(z)
    torch.testing.assert_close(scores[:, :K], ref.activation(z)[:, :K])
    assert float(scores[:, K].abs().max()) == 0.0  # detectron2's inference drops column K


def test_eqlv2_scores_default_to_the_reference_objectness_product():
    from detectron2.config import get_cfg

    from lt_det import add_lt_config
    from lt_det.modeling.losses import build_cls_loss_from_cfg

    cfg = add_lt_config(get_cfg())
    assert cfg.MODEL.ROI_BOX_HEAD.EQLV2.TEST_WITH_OBJ is True
    cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "eqlv2"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    loss = build_cls_loss_from_cfg(cfg)
    z, _ = _logits()
    z = z.float()
    expected = torch.sigmoid(z[:, :K]) * (1 - torch.sigmoid(z[:, K:]))
    torch.testing.assert_close(loss.predict_probs(z)[:, :K], expected)


# ------------------------------------------------------------------ Seesaw
def _ref_seesaw_ce(cls_score, labels, cum_samples, p, q, eps):
    """mmdetection mmdet/models/losses/seesaw_loss.py seesaw_ce_loss on the K class logits of
    foreground ROIs (its objectness branch is a separate 2-way CE)."""
    c = cls_score.shape[1]
    onehot = F.one_hot(labels, c)
    w = torch.ones_like(cls_score)
    if p > 0:
        ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
        index = (ratio < 1.0).to(cls_score.dtype)
        w = w * (ratio.pow(p) * index + (1 - index))[labels]
    if q > 0:
        scores = F.softmax(cls_score.detach(), dim=1)
        self_scores = scores[torch.arange(len(scores)), labels]
        m = scores / self_scores[:, None].clamp(min=eps)
        index = (m > 1.0).to(cls_score.dtype)
        w = w * (m.pow(q) * index + (1 - index))
    return F.cross_entropy(cls_score + w.log() * (1 - onehot), labels, reduction="none")


@pytest.mark.parametrize("p,q", [(0.8, 2.0), (0.8, 0.0), (0.0, 2.0)])
def test_seesaw_equals_reference_on_foreground_rois(p, q):
    # counts: the reference adds the batch to its counts before the loss; lt_det's pure function
    # is given the same counts
    z, y = _logits(r=24, fg_only=True)
    counts = _counts() + torch.bincount(y, minlength=K)
    expected = _ref_seesaw_ce(z[:, :K], y, counts, p, q, 0.01)
    got = seesaw_loss(z, y, counts, p=p, q=q, eps=0.01, reduction="none")
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ PCB
class _RefPCB:
    """megvii-research/PCB mmdet/models/losses/cross_entropy_pcb_loss.py (CrossEntropyPCBLoss)
    and seesaw_pcb_loss.py (SeesawPCBLoss), one process (the all_gather sums are the batch's own
    statistics), past start_epoch, the last pass of the iterative head (iter_id = n_iter - 1, so
    alpha is the configured one). ``forward`` is the reference's order: ``update`` (matrix, counts
    and Seesaw's cum_samples), then ``loss``; both are separate here so that the loss with the
    state before the batch (lt_det's order) can be read off too."""

    def __init__(self, k, momentum=0.99, alpha=0.4, seesaw=False, p=0.8, q=2.0):
        self.k, self.momentum, self.alpha = k, momentum, alpha
        self.seesaw, self.p, self.q = seesaw, p, q
        self.fg_confusion_matrix = torch.zeros(k, k, dtype=torch.float64)
        self.num_inst_cnt = torch.zeros(k, dtype=torch.float64)
        self.cum_samples = torch.zeros(k + 1, dtype=torch.float64)

    def update(self, cls_score, label):
        k = self.k
        for u in label.unique():  # SeesawPCBLoss: cum_samples of every label, before the loss
            self.cum_samples[u] += (label == u).sum()
        pos = label < k
        if pos.sum() > 0:
            pred = F.softmax(cls_score[pos, :k], dim=1)
            tmp = torch.zeros_like(self.fg_confusion_matrix).scatter_add_(
                0, label[pos].view(-1, 1).repeat(1, k), pred)
            cnt = torch.zeros_like(self.num_inst_cnt).scatter_add_(
                0, label[pos], torch.ones(int(pos.sum()), dtype=torch.float64))
            nz = cnt != 0
            tmp[nz] = tmp[nz] / cnt[nz].view(-1, 1)
            m = self.fg_confusion_matrix
            m[nz] = m[nz] * self.momentum + tmp[nz] * (1 - self.momentum)
            m[nz] /= m[nz].sum(1, keepdim=True)
            self.num_inst_cnt = self.num_inst_cnt + cnt

    def active(self):
        return bool((self.num_inst_cnt == 0).sum() == 0)

    def targets(self, label):
        cm = self.fg_confusion_matrix.clone()
        cm /= cm.sum(0, keepdim=True)  # C x C (GT vs. Predict)
        return cm[: self.k, label].t()

    def loss(self, cls_score, label):
        k, n, alpha = self.k, len(label), self.alpha
        pos, neg = label < k, label == k
        if self.seesaw:  # classes branch of SeesawPCBLoss (the objectness branch is its own)
            z, y = cls_score[pos, :k], label[pos]
            classes = _ref_seesaw_ce(z, y, self.cum_samples[:k], self.p, self.q, 0.01).sum() / n
            if not self.active():
                return classes
            shifted = _ref_seesaw_logits(z, y, self.cum_samples[:k], self.p, self.q, 0.01)
            soft = -(self.targets(y) * F.log_softmax(shifted, dim=1)).sum(1).sum() / n
            return classes * (1 - alpha) + soft * alpha
        if not self.active():
            return F.cross_entropy(cls_score, label, reduction="sum") / n
        objectness = F.cross_entropy(cls_score[neg], label[neg], reduction="sum") / n
        classes = F.cross_entropy(cls_score[pos], label[pos], reduction="sum") / n * (1 - alpha)
        p_t = self.targets(label[pos])
        p_t = torch.cat([p_t, p_t.new_zeros(p_t.size(0), 1)], dim=1)
        p_s = F.log_softmax(cls_score[pos, :], dim=1)
        kl = F.kl_div(p_s, p_t, reduction="sum") / n * alpha
        return objectness + classes + kl

    def forward(self, cls_score, label):
        self.update(cls_score, label)
        return self.loss(cls_score, label)


def _ref_seesaw_logits(cls_score, labels, cum_samples, p, q, eps):
    """The seesaw-modified logits of mmdetection's seesaw_ce_loss (what SeesawPCBLoss's soft
    target cross-entropy takes the log-softmax of)."""
    c = cls_score.shape[1]
    onehot = F.one_hot(labels, c)
    ratio = cum_samples[None, :].clamp(min=1) / cum_samples[:, None].clamp(min=1)
    index = (ratio < 1.0).to(cls_score.dtype)
    w = (ratio.pow(p) * index + (1 - index))[labels]
    scores = F.softmax(cls_score.detach(), dim=1)
    m = scores / scores[torch.arange(len(scores)), labels][:, None].clamp(min=eps)
    index = (m > 1.0).to(cls_score.dtype)
    w = w * (m.pow(q) * index + (1 - index))
    return cls_score + w.log() * (1 - onehot)


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_pcb_equals_reference_over_iterations(momentum):
    ref = _RefPCB(K, momentum=momentum)
    loss = build_cls_loss("pcb", num_classes=K, momentum=momentum).double()
    for it in range(5):
        z, y = _logits(r=20, seed=it)
        z = z * 3
        expected = ref.loss(z, y)  # lt_det's order: the loss with the state before the batch
        got = loss(z.clone().requires_grad_(), y)
        ref.update(z, y)
        torch.testing.assert_close(got.detach(), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss.confusion, ref.fg_confusion_matrix, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(loss.counts, ref.num_inst_cnt)
        # the reference's own order (update, then loss): the pure function on the updated state
        torch.testing.assert_close(pcb_loss(z, y, ref.fg_confusion_matrix), ref.loss(z, y))
    assert ref.active()  # every class was counted from the first batch on: regulariser on
    torch.testing.assert_close(loss.predict_probs(z), F.softmax(z, dim=1))  # get_activation


def test_pcb_seesaw_base_equals_reference_on_foreground_rois():
    # matched settings: every ROI foreground, background logit -1e4; the reference's PCB term is a
    # soft-target cross-entropy, lt_det's the KL divergence: they differ by alpha * H(t_y) / R
    alpha = 0.05
    ref = _RefPCB(K, momentum=0.9, alpha=alpha, seesaw=True)
    loss = build_cls_loss("pcb", num_classes=K, momentum=0.9, alpha=alpha, base="seesaw").double()
    for it in range(4):
        z, y = _logits(r=24, seed=it, fg_only=True)
        active = ref.active()
        entropy = torch.special.entr(ref.targets(y)).sum(1).sum() / len(y) if active else 0.0
        expected = ref.loss(z, y) - alpha * entropy
        got = loss(z.clone().requires_grad_(), y)
        ref.update(z, y)
        torch.testing.assert_close(got.detach(), expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss.confusion, ref.fg_confusion_matrix, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(loss.counts, ref.cum_samples[:K])
    assert ref.active()


# ------------------------------------------------------------------ BAGS
def _ref_bags(z_groups, y_groups, weights):
    """FishYuLi/BalancedGroupSoftmax gs_bbox_head_with0.py loss: per group, CE weighted by the
    sampled "others" weights, divided by max(1, sum of weights); groups summed."""
    total = 0.0
    for zg, yg, wg in zip(z_groups, y_groups, weights):
        ce = F.cross_entropy(zg, yg, reduction="none")
        total = total + (ce * wg).sum() / max(float(wg.sum()), 1.0)
    return total


def test_bags_loss_and_scores_equal_reference_when_every_other_is_kept():
    # instance counts put classes 0-1 in [0, 10), 2-3 in [10, 100), 4-5 in [100, 1000); every
    # group has own ROIs and at most 8 x as many "others", so the reference keeps every ROI
    counts = [3, 7, 40, 60, 200, 900]
    groups = bags_groups(counts)
    assert groups == [[0, 1], [2, 3], [4, 5]]
    y = torch.tensor([0, 1, 2, 3, 4, 5, K, K, 0, 2, 4, K])
    g = torch.Generator().manual_seed(3)
    z = torch.randn(len(y), K + 2 + len(groups), generator=g, dtype=torch.float64) * 2
    # reference layout: group 0 = [background, foreground], group g = [others, its classes]
    z0 = z[:, [K, K + 1]]
    y0 = (y < K).long()
    zs, ys, ws = [z0], [y0], [torch.ones(len(y), dtype=z.dtype)]
    for gi, classes in enumerate(groups):
        zs.append(torch.cat([z[:, K + 2 + gi : K + 3 + gi], z[:, classes]], dim=1))
        local = torch.zeros(len(y), dtype=torch.long)
        for j, c in enumerate(classes):
            local[y == c] = j + 1
        n_own, n_others = int((local > 0).sum()), int((local == 0).sum())
        assert int(n_own * 8.0) >= n_others  # the reference's sampler keeps every "other"
        ys.append(local)
        ws.append(torch.ones(len(y), dtype=z.dtype))
    expected = _ref_bags(zs, ys, ws)
    torch.testing.assert_close(bags_loss(z, y, groups, others_ratio=8.0), expected * 1.0,
                               rtol=1e-10, atol=1e-10)
    # _merge_score: class c of group g scores P0(fg) * softmax_g(c); background P0(bg)
    p0 = F.softmax(z0, dim=1)
    merged = torch.zeros(len(y), K + 1, dtype=z.dtype)
    for gi, classes in enumerate(groups):
        sg = F.softmax(zs[gi + 1], dim=1)
        merged[:, classes] = p0[:, 1:2] * sg[:, 1:]
    merged[:, K] = p0[:, 0]
    torch.testing.assert_close(bags_probs(z, groups), merged)


# ------------------------------------------------------------------ LDAM
def test_ldam_equals_reference_on_foreground_rois():
    # kaidic/LDAM-DRW losses.py LDAMLoss: m_j = 1 / n_j^(1/4) scaled to max_m; CE(s (z - m_y))
    z, y = _logits(fg_only=True)
    n = _counts()
    m = 1.0 / torch.sqrt(torch.sqrt(n))
    m = m * (0.5 / m.max())
    s = 30.0
    x = z[:, :K].clone()
    x = torch.where(F.one_hot(y, K).bool(), x - m[y].view(-1, 1), x)
    got = ldam_loss(z, y, n / 1000.0, max_margin=0.5, scale=s, reduction="none")
    torch.testing.assert_close(got, F.cross_entropy(s * x, y, reduction="none"))
    # DRW (cifar_train.py): per-class weights (1 - beta) / (1 - beta^n), normalised to sum K,
    # multiply each ROI's loss (compared per ROI: the reference's mean divides by the sum of
    # weights, lt_det's by the number of ROIs)
    beta = 0.9999
    w = (1.0 - beta) / (1.0 - beta ** n)
    w = w / w.sum() * K
    ref = F.cross_entropy(s * x, y, weight=w, reduction="none")
    got = ldam_loss(z, y, n / 1000.0, max_margin=0.5, scale=s, roi_weights=w[y],
                    reduction="none")
    torch.testing.assert_close(got, ref)


# ------------------------------------------------------------------ GOL
def _ref_gumbel_ce(cls_score, labels):
    """kostas1515/GOL mmdet/models/losses/gumbel_ce.py (GumbelCE with its bbox head's avg_factor,
    the number of sampled ROIs): logits clamped to [-4, 10], p = 1 / exp(exp(-z)), one-hot over
    all K + 1 channels (a background ROI's 1 in channel K), BCE summed over the channels and
    divided by the ROIs, the result clamped to [0, 20]."""
    pred = torch.clamp(cls_score, min=-4, max=10)
    pestim = 1 / (torch.exp(torch.exp(-pred)))
    target = F.one_hot(labels, cls_score.shape[1]).to(cls_score.dtype)
    loss = F.binary_cross_entropy(pestim, target, reduction="none").sum() / cls_score.shape[0]
    return torch.clamp(loss, min=0, max=20)


def test_gol_loss_scores_and_bias_equal_reference():
    loss = build_cls_loss("gol", num_classes=K)
    for scale, shift in ((2.0, -2.0), (4.0, 0.0), (8.0, 4.0)):  # the last: loss above 20
        z, y = _logits(r=20)
        z = z * scale + shift
        a, b = z.clone().requires_grad_(), z.clone().requires_grad_()
        got, expected = loss(a, y), _ref_gumbel_ce(b, y)
        torch.testing.assert_close(got, expected)
        got.backward()
        expected.backward()
        torch.testing.assert_close(a.grad, b.grad)
    assert float(expected.detach()) == 20.0 and float(a.grad.abs().max()) == 0.0  # capped
    # scores: the reference's get_activation of the K class channels (multiclass_nms drops K)
    z, _ = _logits()
    scores = loss.predict_probs(z)
    torch.testing.assert_close(scores[:, :K], (1 / torch.exp(torch.exp(-z)))[:, :K])
    assert float(scores[:, K].abs().max()) == 0.0
    # init_cfg Constant(bias=-2) of fc_cls: every one of the K + 1 outputs
    bias = torch.zeros(K + 1)
    loss.init_cls_bias_(bias)
    assert torch.equal(bias, torch.full((K + 1,), -2.0))


# ------------------------------------------------------------------ logit adjustment
def test_logit_adjusted_loss_equals_reference_on_foreground_rois():
    # google-research logit_adjustment utils.py build_loss_fn: CE(z + log(pi^tau + 1e-12), y)
    z, y = _logits(fg_only=True)
    pi = _counts() / _counts().sum()
    for tau in (0.5, 1.0, 2.0):
        ref = F.cross_entropy(z[:, :K] + torch.log(pi**tau + 1e-12), y, reduction="none")
        got = logit_adjusted_loss(z, y, pi, tau=tau, reduction="none")
        # the reference's 1e-12 moves each shift by at most 1e-12 / pi^tau; the loss moves by
        # at most twice that
        bound = 2 * float((1e-12 / pi**tau).max())
        torch.testing.assert_close(got, ref, rtol=0, atol=bound + 1e-12)


def test_posthoc_logit_adjustment_equals_reference_on_foreground_scores():
    # google-research logit_adjustment main.py: logits - log(pi^tau + 1e-12), at test time
    z, _ = _logits()
    pi = _counts() / _counts().sum()
    tau = 1.0
    cal = PosthocCalibration(method="logit_adjustment", log_ref=pi.log(), strength=tau)
    ref = z[:, :K] - torch.log(pi**tau + 1e-12)
    got = cal(z)[:, :K]
    # both hold log pi in float32 (the reference casts to float32; lt_det's buffer is float32)
    torch.testing.assert_close(F.softmax(got, 1), F.softmax(ref, 1), rtol=0, atol=1e-6)


# ------------------------------------------------------------------ class-balanced losses
def _ref_cb_weights(n, beta):
    """richardaecn/class-balanced-loss src/cifar_main.py: (1 - beta) / (1 - beta^n), normalised
    to sum to the number of classes."""
    w = (1.0 - beta) / (1.0 - beta**n)
    return w / w.sum() * len(n)


def test_class_balanced_losses_equal_reference_on_foreground_rois():
    z, y = _logits(fg_only=True)
    n = _counts()
    beta, gamma = 0.999, 1.0
    w = _ref_cb_weights(n, beta)[y]
    onehot = F.one_hot(y, K).to(z.dtype)
    x = z[:, :K]
    # softmax: tf.losses.softmax_cross_entropy(weights=w): sum(w l) / #non-zero weights
    ref = (w * F.cross_entropy(x, y, reduction="none")).sum() / len(y)
    torch.testing.assert_close(class_balanced_softmax_loss(z, y, n, beta=beta), ref)
    # sigmoid: sum(w * BCE) / #positives
    bce = F.binary_cross_entropy_with_logits(x, onehot, reduction="none")
    ref = (w[:, None] * bce).sum() / onehot.sum()
    torch.testing.assert_close(class_balanced_sigmoid_loss(z, y, n, beta=beta), ref)
    # focal: modulator exp(-gamma t x - gamma log(1 + exp(-x))), sum(w * mod * BCE) / #positives
    mod = torch.exp(-gamma * onehot * x - gamma * torch.log1p(torch.exp(-x)))
    ref = (w[:, None] * mod * bce).sum() / onehot.sum()
    torch.testing.assert_close(class_balanced_focal_loss(z, y, n, beta=beta, gamma=gamma), ref)


# ------------------------------------------------------------------ GRW (DisAlign's loss)
def _ref_grw_weight(num_shots, exp_scale):
    """Megvii-BaseDetection/DisAlign instance_seg/lvis1.0/.../disalign.1x/roi_heads/fast_rcnn.py
    GRWFastRCNNOutputs._init_weights: ratio = n / sum n, 1 / ratio ** exp_scale normalised to sum
    K, then a (K + 1,) weight with 1 for the background."""
    ratio_list = num_shots / num_shots.sum()
    exp_reweight = 1 / (ratio_list**exp_scale)
    exp_reweight = exp_reweight / exp_reweight.sum() * len(num_shots)
    final = torch.ones(len(num_shots) + 1, dtype=num_shots.dtype)
    final[:-1] = exp_reweight
    return final


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 1.2])
def test_grw_equals_reference(rho):
    # the reference's loss: F.cross_entropy(logits, gt, weight=final_reweight, reduction="mean")
    z, y = _logits()
    n = _counts()
    ref = F.cross_entropy(z, y, weight=_ref_grw_weight(n, rho), reduction="mean")
    torch.testing.assert_close(grw_loss(z, y, n, rho=rho), ref)
    module = build_cls_loss("grw", num_classes=K, class_prior=n / n.sum(), rho=rho)
    torch.testing.assert_close(module(z.float(), y), ref.float())
    assert torch.equal(module.predict_probs(z), F.softmax(z, dim=1))  # no weight at inference
# ------------------------------------------------------------------ ECM
class _RefECM:
    """janghyuncho/ECM-Loss mmdet/models/losses/effective_class_margin_loss.py (+ ecm_utils.py
    get_detection_weight): counts n with the background appended as sum(n) * fg_bg_ratio,
    two-sided sigmoid with the margins added to +z and -z, per-column weights, sum / B."""

    def __init__(self, n, fg_bg_ratio=6.3313):
        n = torch.cat([n, n.sum()[None] * fg_bg_ratio])
        self.sample_n = n
        a = (n.sum() - n) / n
        self.detection_cls_weight = (a * ((1 + a) / a).log())[None]

    def compute_weight(self, cls_score):
        b, c = cls_score.shape
        n_pos = self.sample_n
        n_neg = self.sample_n.sum() - self.sample_n
        pos_w = (n_neg.pow(1 / 4) / (n_pos.pow(1 / 4) + n_neg.pow(1 / 4))).pow(-1).log()
        neg_w = (n_pos.pow(1 / 4) / (n_pos.pow(1 / 4) + n_neg.pow(1 / 4))).pow(-1).log()
        return pos_w.view(1, -1).expand(b, c), neg_w.view(1, -1).expand(b, c)

    def __call__(self, cls_score, labels):
        b, c = cls_score.shape[0], cls_score.shape[1] - 1
        target = cls_score.new_zeros(b, c + 1)
        target[torch.arange(b), labels] = 1
        pos_w, neg_w = self.compute_weight(cls_score)
        score_exp_pos = (cls_score + pos_w).exp()
        score_exp_neg = (-cls_score + neg_w).exp()
        pred_pos = score_exp_pos / (score_exp_pos + score_exp_neg)
        pred_neg = score_exp_neg / (score_exp_pos + score_exp_neg)
        loss_cls = -(pred_pos.log() * target + pred_neg.log() * (1 - target))
        return (loss_cls * self.detection_cls_weight).sum() / b

    def get_activation(self, cls_score):
        s = cls_score.sigmoid()
        s[:, :-1] *= 1 - s[:, -1:]
        return s


def test_ecm_loss_and_scores_equal_reference():
    # lt_det's background column K is the reference's last column (mmdet 2.x: label K = bg)
    z, y = _logits()
    n = _counts()
    ref = _RefECM(n)
    torch.testing.assert_close(ecm_loss(z, y, n), ref(z, y))
    torch.testing.assert_close(ecm_loss(z, y, n / n.sum()), ref(z, y))  # only ratios matter
    loss = build_cls_loss("ecm", num_classes=K, class_counts=n.tolist()).double()
    torch.testing.assert_close(loss(z, y), ref(z, y))
    torch.testing.assert_close(loss.predict_probs(z)[:, :K], ref.get_activation(z)[:, :K])
    assert float(loss.predict_probs(z)[:, K].abs().max()) == 0.0
    assert loss.fg_bg_ratio == 6.3313


def test_ecm_counts_instances_of_the_training_set():
    # the reference's lvis_v1_image_count.pkl holds LVIS v1 train's instance_count values:
    # instance counts [10, 4, 2] with image counts [2, 4, 1] give counts proportional to [10, 4, 2]
    from detectron2.config import get_cfg

    from lt_det import add_lt_config
    from lt_det.modeling.losses import build_cls_loss_from_cfg

    with _counts_dataset("reference_defaults_ecm_counts") as name:
        cfg = add_lt_config(get_cfg())
        cfg.DATASETS.TRAIN = (name,)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        cfg.MODEL.ROI_BOX_HEAD.CLS_LOSS = "ecm"
        loss = build_cls_loss_from_cfg(cfg)
        counts = loss.class_counts / loss.class_counts[0] * 10
        torch.testing.assert_close(counts, torch.tensor([10.0, 4.0, 2.0]))


# ------------------------------------------------------------------ ACSL
def _ref_acsl(cls_logits, labels, freq_group, score_thr, choose):
    """CASIA-IVA-Lab/ACSL mmdet/models/losses/acsl.py ACSL.forward (mmdet v1: label 0 and column
    0 are the background, classes 1..K). ``freq_group`` {"rare", "common", "freq"}: category ids;
    ``choose(cls_inds, size)`` stands for ``np.random.choice(cls_inds, size, replace=False)``."""
    n_i, n_c = cls_logits.size()
    target = cls_logits.new_zeros(n_i, n_c)
    unique_label = torch.unique(labels)
    with torch.no_grad():
        sigmoid_cls_logits = torch.sigmoid(cls_logits)
    high_score_inds = torch.nonzero(sigmoid_cls_logits >= score_thr)
    weight_mask = cls_logits.new_zeros(n_i, n_c)  # the reference: a sparse_coo_tensor, densified
    weight_mask[high_score_inds[:, 0], high_score_inds[:, 1]] = 1
    for cls in unique_label:
        cls = cls.item()
        cls_inds = torch.nonzero(labels == cls).squeeze(1)
        if cls == 0:
            target[cls_inds, 0] = 1
            weight_mask[cls_inds] = 0
            for group, frac in (("rare", 0.01), ("common", 0.1), ("freq", 1.0)):
                cats = torch.tensor(freq_group[group], dtype=torch.long)
                chosen = choose(cls_inds, int(len(cls_inds) * frac))
                tmp = weight_mask[chosen]
                tmp[:, cats] = 1
                weight_mask[chosen] = tmp
            weight_mask[cls_inds, 0] = 1
        else:
            tmp_label_vec = cls_logits.new_zeros(n_c)
            tmp_label_vec[cls] = 1
            target[cls_inds] = tmp_label_vec.expand(cls_inds.numel(), n_c)
            tmp = weight_mask[cls_inds]
            tmp[:, cls] = 1
            weight_mask[cls_inds] = tmp
    cls_loss = F.binary_cross_entropy_with_logits(cls_logits, target, reduction="none")
    return torch.sum(weight_mask * cls_loss) / n_i


def test_acsl_equals_reference_with_the_same_background_draws():
    # 300 ROIs, 200 of them background: the reference keeps int(200 * 0.01) = 2 for rare and
    # int(200 * 0.1) = 20 for common classes; both are given the same draws
    r, n_bg = 300, 200
    g = torch.Generator().manual_seed(7)
    z = torch.randn(r, K + 1, generator=g, dtype=torch.float64) * 2
    y = torch.full((r,), K)
    y[:100] = torch.randint(0, K, (100,), generator=g)
    y = y[torch.randperm(r, generator=g)]
    frequency = ["f", "f", "c", "c", "r", "r"]
    groups = acsl_class_groups(frequency)
    loss = build_cls_loss("acsl", num_classes=K, class_frequency=frequency, seed=3).double()
    assert (loss.score_thr, loss.bg_fractions) == (0.7, (0.01, 0.1, 1.0))
    copy = torch.Generator().manual_seed(0)
    copy.set_state(loss.generator.get_state())
    keep = loss._draw(y, copy)
    assert keep.sum(dim=0).tolist() == [2, 20, n_bg]
    # the reference's layout: column 0 / label 0 background, class j in column j + 1
    z_ref = torch.cat([z[:, K:], z[:, :K]], dim=1)
    y_ref = torch.where(y == K, torch.zeros_like(y), y + 1)
    freq_group = {name: [j + 1 for j in range(K) if frequency[j] == letter]
                  for name, letter in (("rare", "r"), ("common", "c"), ("freq", "f"))}
    draws = iter([torch.nonzero(keep[:, gi]).flatten() for gi in range(3)])

    def choose(cls_inds, size):
        chosen = next(draws)
        assert len(chosen) == size and bool(torch.isin(chosen, cls_inds).all())
        return chosen

    expected = _ref_acsl(z_ref, y_ref, freq_group, 0.7, choose)
    torch.testing.assert_close(acsl_loss(z, y, groups, keep), expected)
    torch.testing.assert_close(loss(z, y), expected)  # the module draws the same
    # scores: the reference's use_sigmoid test path, background column dropped
    torch.testing.assert_close(loss.predict_probs(z)[:, :K], torch.sigmoid(z[:, :K]))
    # the reference's init_weights: every bias, background included, at -log(99)
    bias = torch.zeros(K + 1)
    loss.init_cls_bias_(bias)
    torch.testing.assert_close(bias, torch.full((K + 1,), -math.log(99.0)))


# ------------------------------------------------------------------ NorCal
def _ref_norcal(z, n, gamma):
    """tydpan/NorCal projects/NorCal/norcal/roi_heads.py predict_probs with the defaults
    (WITH "exps", RENORM True): exp(z), foreground times 1 / n^gamma, renormalised."""
    probs = torch.exp(z)
    probs[:, :-1] *= 1 / n**gamma
    return probs / probs.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.75, 1.0])
def test_norcal_equals_reference(gamma):
    z, _ = _logits()
    n = _counts()
    cal = PosthocCalibration(method="norcal", log_ref=n.log(), strength=gamma)
    torch.testing.assert_close(F.softmax(cal(z), dim=1), _ref_norcal(z, n, gamma))


def test_norcal_counts_classes_by_images_by_default(tmp_path):
    # the reference reads LVIS's image_count (_get_frequencies(cfg, by="image")): image counts
    # [2, 4, 1] with instance counts [10, 4, 2] give n = [2, 4, 1]
    from detectron2.config import get_cfg

    from lt_det import add_lt_config
    from lt_det.modeling.calibration import calibration_log_ref

    with _counts_dataset("reference_defaults_norcal_counts") as name:
        cfg = add_lt_config(get_cfg())
        cfg.DATASETS.TRAIN = (name,)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
        assert cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS == "image"
        n = calibration_log_ref(cfg, "norcal").exp()
        torch.testing.assert_close(n, torch.tensor([2.0, 4.0, 1.0]))
        cfg.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL_COUNTS = "instance"
        n = calibration_log_ref(cfg, "norcal").exp()
        torch.testing.assert_close(n, torch.tensor([10.0, 4.0, 2.0]))


# ------------------------------------------------------------------ FRACAL
def _ref_fractal_dims(cx, cy, categories, num_classes, dims):
    """kostas1515/FRACAL stat_files/calculate_fractality.py (variant box_dim): occupied cells of
    a dim x dim grid per class for dim = 1..dims, a line fitted to log N against log dim over
    the dims with frequency >= dim^2 (curve_fit of a line = least squares), 1 below 4 boxes,
    slopes below 1 raised to 1."""
    import numpy as np

    frequencies = np.bincount(categories, minlength=num_classes)
    boxes = []
    for dim in range(1, dims + 1):
        step = 1 / dim
        loc = np.zeros((dim, dim, num_classes))
        for j in range(dim):
            for i in range(dim):
                mask = (cx >= i * step) & (cx < (i + 1) * step)
                mask &= (cy >= j * step) & (cy < (j + 1) * step)
                loc[j, i, :] = np.bincount(categories[mask], minlength=num_classes)
        boxes.append((loc > 0).sum(axis=0).sum(axis=0))
    grid = np.arange(dims) + 1
    out = []
    for k in range(num_classes):
        if frequencies[k] < 4:
            out.append(1.0)
            continue
        cut = frequencies[k] >= grid * grid
        n = np.array([boxes[i][k] for i in range(dims)], dtype=float)
        a = np.stack([np.log(grid)[cut], np.ones(int(cut.sum()))], axis=1)
        slope = np.linalg.lstsq(a, np.log(n)[cut], rcond=None)[0][0]
        out.append(max(slope, 1.0))
    return torch.tensor(out, dtype=torch.float64)


def _ref_fracal_scores(z, base10, fractal, fractal_l, use_sigmoid, activation):
    """kostas1515/FRACAL mmdet/models/roi_heads/bbox_heads/fracal_bbox_head.py
    (_predict_by_feat_single, get_fracal_weights with variant "base10"): wy = base10 + ptarget,
    ptarget = -log10(sum(freqs) / freqs) with freqs all equal (= -log10 K); base10_j =
    log10(N / n_j) is the csv column (e.g. LVIS v1 aerosol_can: log10(100170 / 64) = 3.1946).
    softmax: softmax(z + [wy, 0]) / [D, 1]^l, renormalised; sigmoid: a(z) * a(z + wy + fp),
    fp = -log10(D^l / sum D^l) + log10(1 / K)."""
    k = base10.shape[0]
    wy = base10 - math.log10(k)
    if not use_sigmoid:
        scores = F.softmax(z + torch.cat([wy, wy.new_zeros(1)]), dim=-1)
        scores = scores / torch.cat([fractal, fractal.new_ones(1)]) ** fractal_l
        return scores / scores.sum(dim=1, keepdim=True)
    fw = fractal**fractal_l
    fw = fw / fw.sum()
    fractal_prob = -torch.log10(fw) + math.log10(1 / k)
    x = z[:, :k]
    return activation(x) * activation(x + wy + fractal_prob)


def test_fracal_dimensions_and_scores_equal_reference():
    import numpy as np

    from lt_det.modeling.calibration import fractal_dimensions

    rng = np.random.RandomState(0)
    sizes = [300, 120, 40, 9, 4, 3, 0]
    cats = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    cx, cy = rng.rand(len(cats)), rng.rand(len(cats))
    cy[:120] = 0.3 + 0.05 * cx[:120]  # class 0 partly on a line
    cx[300:320] = 0.41 + 0.01 * rng.rand(20)  # class 1 partly in a column
    cx[:6] = [0.5, 0.25, 1 / 3, 2 / 3, 1.0, 0.0]  # cell edges, and a centre on the image edge
    k = len(sizes)
    ref = _ref_fractal_dims(cx, cy, cats, k, dims=16)
    centres = torch.from_numpy(np.stack([cx, cy], axis=1))
    got = fractal_dimensions(torch.from_numpy(cats), centres, k, max_grid=16)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert got[:5].gt(1.0).all() and got[5:].eq(1.0).all()  # below 4 boxes / none: 1

    z, _ = _logits()
    n_img, counts = 1000.0, _counts()
    base10 = torch.log10(n_img / counts)
    dims = torch.tensor([1.9, 1.5, 1.2, 1.0, 1.7, 1.05], dtype=torch.float64)
    log_ref = torch.stack([torch.log(K * counts / n_img), torch.log(dims)])
    for lam in (0.0, 1.0, 2.0):
        cal = PosthocCalibration(method="fracal", log_ref=log_ref, strength=lam)
        softmax = build_cls_loss("softmax_ce", num_classes=K)
        expected = _ref_fracal_scores(z, base10, dims, lam, False, None)
        torch.testing.assert_close(cal.predict_probs(z, softmax).double(), expected)
        gumbel = lambda x: 1 / torch.exp(torch.exp(-x))  # noqa: E731
        for name, act in (("sigmoid_ce", torch.sigmoid), ("gol", gumbel)):
            loss = build_cls_loss(name, num_classes=K)
            expected = _ref_fracal_scores(z, base10, dims, lam, True, act)
            torch.testing.assert_close(cal.predict_probs(z, loss)[:, :K].double(), expected)


# ------------------------------------------------------------------ stage 2
def _ref_pnorm(weights, p):
    """facebookresearch/classifier-balancing tau_norm.py pnorm: row c divided by ||w_c||^p."""
    norms = torch.norm(weights, 2, 1)
    ws = weights.clone()
    for i in range(weights.size(0)):
        ws[i] = ws[i] / torch.pow(norms[i], p)
    return ws


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.0, 1.5])
def test_tau_norm_equals_reference(tau):
    # the reference normalises every row (classification, no background) and keeps the bias
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(K + 1, 8, generator=g), torch.randn(K + 1, generator=g)
    x = torch.randn(5, 8, generator=g)
    new_w, new_b = tau_normalize(w, b, tau, num_normalized=K + 1, bias_mode="keep")
    torch.testing.assert_close(new_w, _ref_pnorm(w, tau))
    assert torch.equal(new_b, b)
    layer = TauNormLinear(8, K + 1, tau=tau, num_normalized=K)  # lt_det: background row kept
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    ref = torch.addmm(b, x, torch.cat([_ref_pnorm(w[:K], tau), w[K:]]).t())
    torch.testing.assert_close(layer(x), ref)


def test_lws_equals_reference():
    # classifier-balancing models/TauNormClassifier.py (the LWS classifier): fc(x) * scales
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(8, K + 1)
    layer = LWSLinear.from_linear(linear)
    with torch.no_grad():
        layer.scale.copy_(torch.rand(K + 1, generator=g) + 0.5)
    x = torch.randn(5, 8, generator=g)
    torch.testing.assert_close(layer(x), linear(x) * layer.scale)


def _ref_disalign_forward(x, weight, bias, logit_scale, logit_bias, conf_weight, conf_bias):
    """Megvii-BaseDetection/cvpods cvpods/modeling/roi_heads/disalign_fast_rcnn.py
    DisAlignFastRCNNOutputLayers.forward (scores part): only the foreground columns are adjusted,
    sigma * (z * alpha + beta) + (1 - sigma) * z; the background column as is."""
    scores = F.linear(x, weight, bias)
    confidence = torch.sigmoid(F.linear(x, conf_weight, conf_bias))
    scores_tmp = confidence * (scores[:, :-1] * logit_scale + logit_bias)
    scores_tmp = scores_tmp + (1 - confidence) * scores[:, :-1]
    return torch.cat([scores_tmp, scores[:, -1].view(-1, 1)], dim=1)


def test_disalign_equals_reference():
    from lt_det.decouple import DisAlignLinear

    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(8, K + 1)
    layer = DisAlignLinear.from_linear(linear)
    # the reference's init: alpha 1, beta 0, gate bias 0 (gate weight ~ N(0, 0.01^2))
    assert torch.equal(layer.logit_scale, torch.ones(K))
    assert torch.equal(layer.logit_bias, torch.zeros(K))
    assert torch.equal(layer.confidence_layer.bias, torch.zeros(1))
    assert 0 < float(layer.confidence_layer.weight.detach().std()) < 0.03
    with torch.no_grad():
        layer.logit_scale.copy_(torch.rand(K, generator=g) * 2)
        layer.logit_bias.copy_(torch.randn(K, generator=g))
        layer.confidence_layer.weight.copy_(torch.randn(1, 8, generator=g))
        layer.confidence_layer.bias.fill_(0.3)
    x = torch.randn(5, 8, generator=g)
    ref = _ref_disalign_forward(
        x, linear.weight, linear.bias, layer.logit_scale, layer.logit_bias,
        layer.confidence_layer.weight, layer.confidence_layer.bias,
    )
    torch.testing.assert_close(layer(x), ref)
def _ref_cbd_loss(logits, labels, features, teacher_features, alpha, beta):
    """google-research class_balanced_distillation/train.py (1d4d2f1a) train_step with one
    teacher: (1 - alpha) * mean CE + alpha * beta * compute_feat_distillation, the latter
    1 - <l2_normalize(f), l2_normalize(t)> averaged (tf.nn.l2_normalize: x / sqrt(max(|x|^2,
    1e-12))). The model's features are already normalised there; normalising twice is the
    same."""
    def l2n(x):
        return x / torch.sqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=1e-12))

    ce = F.cross_entropy(logits, labels)
    feat = (1.0 - (l2n(features) * l2n(teacher_features)).sum(dim=-1)).mean()
    return (1 - alpha) * ce + alpha * beta * feat


def test_cbd_loss_equals_reference_on_foreground_rois():
    from detectron2.config import get_cfg

    from lt_det.config import add_lt_config
    from lt_det.decouple import BoxFeatureTeacher

    cfg = add_lt_config(get_cfg())  # the defaults are configs/stage_two_cbd.py's
    alpha, beta = cfg.MODEL.DECOUPLE.CBD.ALPHA, cfg.MODEL.DECOUPLE.CBD.BETA
    assert (alpha, beta) == (0.4, 100.0)
    z, y = _logits(fg_only=True)
    g = torch.Generator().manual_seed(5)
    student = torch.randn(len(y), 16, generator=g, dtype=torch.float64)
    pooled = torch.randn(len(y), 16, generator=g, dtype=torch.float64)
    pooled[0] = 0.0  # an all-zero teacher feature (the normalisation's floor)
    teacher = BoxFeatureTeacher(torch.nn.Identity(), alpha=alpha, beta=beta)
    out = teacher.losses({"loss_cls": softmax_ce_loss(z, y)}, student, pooled)
    torch.testing.assert_close(
        sum(out.values()), _ref_cbd_loss(z[:, :K], y, student, pooled, alpha, beta)
    )


# Stage-2 methods without maths of their own: what the reference trains is pinned by
# tests/test_decouple.py (cRT: classifier alone, re-initialised; finetune: the stage-1 classifier
# alone; none: ordinary training).
STAGE2_PROCEDURE_TESTS = {
    "crt": "test_crt_freezes_all_but_named_and_optimizer_sees_only_them",
    "finetune": "test_finetune_keeps_every_stage1_weight_and_trains_only_the_classifier",
    "none": "test_stage2_step_updates_only_classifier_and_keeps_bn_stats",
}


# ------------------------------------------------------------------ coverage
LOSS_TESTS = {
    "softmax_ce": test_softmax_ce_equals_detectron2_cross_entropy,
    "sigmoid_ce": test_sigmoid_ce_equals_detectron2_sigmoid_ce,
    "federated": test_federated_loss_equals_detectron2_where_the_draw_is_determined,
    "balanced_softmax": test_balanced_softmax_equals_balms_on_foreground_rois,
    "balanced_sigmoid": test_balanced_sigmoid_equals_balms_instance_seg,
    "eql": test_eql_equals_reference,
    "eqlv2": test_eqlv2_loss_state_and_scores_equal_reference_over_iterations,
    "seesaw": test_seesaw_equals_reference_on_foreground_rois,
    "bags": test_bags_loss_and_scores_equal_reference_when_every_other_is_kept,
    "ldam": test_ldam_equals_reference_on_foreground_rois,
    "logit_adjusted": test_logit_adjusted_loss_equals_reference_on_foreground_rois,
    "class_balanced_softmax": test_class_balanced_losses_equal_reference_on_foreground_rois,
    "class_balanced_sigmoid": test_class_balanced_losses_equal_reference_on_foreground_rois,
    "class_balanced_focal": test_class_balanced_losses_equal_reference_on_foreground_rois,
    "grw": test_grw_equals_reference,
    "ecm": test_ecm_loss_and_scores_equal_reference,
    "acsl": test_acsl_equals_reference_with_the_same_background_draws,
    "gol": test_gol_loss_scores_and_bias_equal_reference,
    "pcb": test_pcb_equals_reference_over_iterations,
}
CALIBRATION_TESTS = {
    "norcal": test_norcal_equals_reference,
    "logit_adjustment": test_posthoc_logit_adjustment_equals_reference_on_foreground_scores,
    "fracal": test_fracal_dimensions_and_scores_equal_reference,
}
STAGE2_TESTS = {"tau_norm": test_tau_norm_equals_reference, "lws": test_lws_equals_reference,
                "disalign": test_disalign_equals_reference,
                "cbd": test_cbd_loss_equals_reference_on_foreground_rois}


def test_every_registered_method_has_a_reference_test():
    import test_decouple

    assert set(LOSS_TESTS) == set(LT_CLS_LOSS_REGISTRY.choices())
    assert set(CALIBRATION_TESTS) == set(CALIBRATION_METHODS) - {"none"}
    assert set(STAGE2_TESTS) | set(STAGE2_PROCEDURE_TESTS) == set(LT_DECOUPLE_REGISTRY.choices())
    for name in STAGE2_PROCEDURE_TESTS.values():
        assert callable(getattr(test_decouple, name)), name


# ------------------------------------------------------------------ width and label checks
def _pure_calls():
    """(name, call(logits, labels), K) for every pure loss function."""
    n = _counts()
    prior = n / 1000.0
    ones = torch.ones(K, dtype=torch.float64)
    groups = bags_groups([3, 7, 40, 60, 200, 900])
    mask = torch.ones(1, K)
    return [
        ("softmax_ce_loss", lambda z, y: softmax_ce_loss(z, y)),
        ("sigmoid_ce_loss", lambda z, y: sigmoid_ce_loss(z, y)),
        ("balanced_softmax_loss", lambda z, y: balanced_softmax_loss(z, y, prior)),
        ("balanced_sigmoid_loss", lambda z, y: balanced_sigmoid_loss(z, y, prior)),
        ("eql_loss", lambda z, y: eql_loss(z, y, prior)),
        ("eqlv2_loss", lambda z, y: eqlv2_loss(z, y, ones, ones)),
        ("seesaw_loss", lambda z, y: seesaw_loss(z, y, n)),
        ("pcb_loss", lambda z, y: pcb_loss(z, y, torch.eye(K, dtype=torch.float64) * 0.5 + 0.1)),
        ("federated_loss", lambda z, y: federated_loss(z, y, mask)),
        ("ldam_loss", lambda z, y: ldam_loss(z, y, prior)),
        ("logit_adjusted_loss", lambda z, y: logit_adjusted_loss(z, y, prior)),
        ("class_balanced_softmax_loss", lambda z, y: class_balanced_softmax_loss(z, y, n)),
        ("class_balanced_focal_loss", lambda z, y: class_balanced_focal_loss(z, y, n)),
        ("class_balanced_sigmoid_loss", lambda z, y: class_balanced_sigmoid_loss(z, y, n)),
        ("grw_loss", lambda z, y: grw_loss(z, y, n)),
        ("ecm_loss", lambda z, y: ecm_loss(z, y, n)),
        ("acsl_loss", lambda z, y: acsl_loss(
            z, y, acsl_class_groups("ffccrr"), torch.ones(len(y), 3, dtype=torch.bool))),
        ("bags_loss", lambda z, y: bags_loss(
            torch.cat([z, z[:, : 1 + len(groups)]], dim=1), y, groups)),
        ("gol_loss", lambda z, y: gol_loss(z, y)),
    ]


@pytest.mark.parametrize("name,call", _pure_calls(), ids=[c[0] for c in _pure_calls()])
def test_pure_losses_refuse_a_wrong_width_and_out_of_range_labels(name, call):
    z, y = _logits()
    assert torch.isfinite(call(z, y))
    with_k = name not in ("softmax_ce_loss", "sigmoid_ce_loss", "gol_loss")  # K from the logits
    if with_k:
        with pytest.raises(ValueError, match=rf"{name}: logits have \d+ columns.* K = {K}"):
            call(torch.cat([z, z[:, :1]], dim=1), y)
        with pytest.raises(ValueError, match=rf"{name}: logits have \d+ columns.* K = {K}"):
            call(z[:, :K], y)
    for bad in (K + 1, -1):
        labels = y.clone()
        labels[3] = bad
        with pytest.raises(ValueError, match=rf"{name}: gt_classes must lie in \[0, {K}\]"):
            call(z, labels)


def test_label_check_is_one_line_naming_the_function():
    z, y = _logits()
    y[0] = 40
    with pytest.raises(ValueError) as info:
        eql_loss(z, y, _counts() / 1000.0)
    assert "\n" not in str(info.value)
    assert "from 0 to 40" in str(info.value)


def test_the_checks_leave_a_training_step_unchanged_in_value():
    # width / range checks read the labels only: values and gradients are those of the maths
    z, y = _logits()
    a = z.clone().requires_grad_()
    loss = sigmoid_ce_loss(a, y)
    loss.backward()
    expected = _ref_detectron2_sigmoid_ce(z, y)
    torch.testing.assert_close(loss.detach(), expected)
    assert math.isfinite(float(a.grad.abs().sum()))
