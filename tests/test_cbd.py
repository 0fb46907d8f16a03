"""Class-Balanced Distillation (MODEL.DECOUPLE.METHOD "cbd"): the distillation term, the stage-2
step, the frozen teacher, save / resume, and a tiny end-to-end stage 1 -> CBD stage 2 run.

Tiny GeneralizedRCNN of tests/test_decouple.py (ResNet-18-FPN with BatchNorm, 5 classes, box
head 2 x FC 32) on 64 x 64 random images, CPU.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import GeneralizedRCNN
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage

from lt_det.decouple import (
    BoxFeatureTeacher,
    ClassBalancedDistillation,
    DecoupledTrainer,
    DistilledStep,
    cbd_distillation_loss,
    check_decoupled_training,
    frozen_box_batch,
)
from lt_det.decouple.stage2_model import DecoupledGeneralizedRCNN
from lt_det.errors import LTDetError

from test_decouple import CLS, _load, _save_stage1, batch, bn_stats, make_model, tiny_cfg

HEAD = "roi_heads.box_head"
TRAINABLE = [HEAD, "roi_heads.box_predictor"]


def cbd_cfg(**overrides):
    return tiny_cfg("cbd", **{"MODEL.DECOUPLE.TRAINABLE": TRAINABLE, **overrides})


def _teacher_state(model):
    return {k: v.clone() for k, v in model.cbd_teacher.box_head.state_dict().items()}


def _head_state(model):
    return {k: v.clone() for k, v in model.roi_heads.box_head.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the distillation term
def test_distillation_term_on_hand_made_features():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
    t = torch.tensor([[6.0, 8.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0], [-5.0, 0.0]])
    # same direction 0; orthogonal 1; 45 degrees 1 - 1/sqrt(2); all-zero student 1; opposite 2
    expected = torch.tensor([0.0, 1.0, 1.0 - 1.0 / math.sqrt(2.0), 1.0, 2.0])
    torch.testing.assert_close(cbd_distillation_loss(s, t, reduction="none"), expected)
    torch.testing.assert_close(cbd_distillation_loss(s, t), expected.mean())
    torch.testing.assert_close(cbd_distillation_loss(s, t, reduction="sum"), expected.sum())
    # scale-free in both arguments; the teacher is a constant (no gradient reaches it)
    torch.testing.assert_close(cbd_distillation_loss(7 * s, 0.1 * t), expected.mean())
    s_grad, t_grad = s.clone().requires_grad_(), t.clone().requires_grad_()
    cbd_distillation_loss(s_grad, t_grad).backward()
    assert t_grad.grad is None and torch.isfinite(s_grad.grad).all()
    # d/ds (1 - s.t_hat / |s|) at s = (1, 0), t = (0, 2): -t_hat / |s| / R = (0, -1) / 5
    torch.testing.assert_close(s_grad.grad[1], torch.tensor([0.0, -0.2]))
    # the closed-form gradient equals autograd through plain ops (float64, random features)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 5, generator=g, dtype=torch.float64)
    w = torch.rand(7, generator=g, dtype=torch.float64)
    (cbd_distillation_loss(a, b, reduction="none") * w).sum().backward()
    fast = a.grad.clone()
    a.grad = None
    plain = 1 - (F.normalize(a, dim=1, eps=1e-6) * F.normalize(b, dim=1, eps=1e-6)).sum(1)
    (plain * w).sum().backward()
    torch.testing.assert_close(fast, a.grad)
    empty = torch.zeros(0, 4, requires_grad=True)
    out = cbd_distillation_loss(empty, torch.zeros(0, 4))
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError, match="both be \\(R, D\\)"):
        cbd_distillation_loss(s, t[:, :1])


def test_teacher_losses_combine_as_the_formula():
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3), torch.nn.ReLU())
    teacher = BoxFeatureTeacher(head, alpha=0.4, beta=100.0)
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(6, 2, 2, 2, generator=g)
    student = torch.randn(6, 3, generator=g)
    task = {"loss_cls": torch.tensor(2.0), "loss_box_reg": torch.tensor(0.5)}
    out = teacher.losses(task, student, pooled)
    assert set(out) == {"loss_cls", "loss_box_reg", "loss_distill"}
    torch.testing.assert_close(out["loss_cls"], torch.tensor(0.6 * 2.0))
    torch.testing.assert_close(out["loss_box_reg"], torch.tensor(0.6 * 0.5))
    t = head(pooled)
    cos = (student * t).sum(1) / student.norm(dim=1) / t.norm(dim=1).clamp(min=1e-6)
    torch.testing.assert_close(out["loss_distill"], 40.0 * (1 - cos).mean())
    # alpha 0 (or beta 0): the task losses themselves, no distillation entry
    for a, b in ((0.0, 100.0), (0.0, 0.0)):
        plain = BoxFeatureTeacher(head, alpha=a, beta=b).losses(task, student, pooled)
        assert plain.keys() == task.keys()
        assert all(torch.equal(plain[k], task[k]) for k in task)
    assert "loss_distill" not in BoxFeatureTeacher(head, alpha=0.4, beta=0.0).losses(
        task, student, pooled)
    # a deep copy, frozen, always in eval mode
    assert teacher.box_head is not head and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.box_head.training


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("key,value", [("ALPHA", 1.0), ("ALPHA", -0.1), ("BETA", -1.0)])
def test_out_of_range_weights_are_refused_before_building(key, value):
    cfg = cbd_cfg(**{f"MODEL.DECOUPLE.CBD.{key}": value})
    with pytest.raises(LTDetError, match=rf"MODEL\.DECOUPLE\.CBD\.{key} is"):
        check_decoupled_training(cfg)


@pytest.mark.parametrize(
    "trainable,match",
    [
        ([CLS], "leaves roi_heads.box_head frozen"),
        (TRAINABLE + ["backbone.bottom_up.res5"], r"also names \['backbone.bottom_up.res5'\]"),
        (TRAINABLE + ["cbd_teacher"], r"also names \['cbd_teacher'\]"),
        (["roi_heads"], r"also names \['roi_heads'\]"),  # holds the mask head too
    ],
)
def test_trainable_must_be_box_head_and_predictor(trainable, match):
    cfg = tiny_cfg("cbd", **{"MODEL.DECOUPLE.TRAINABLE": trainable})
    with pytest.raises(LTDetError, match=match):
        check_decoupled_training(cfg)  # at the door, from the config alone
    with pytest.raises(LTDetError, match=match):
        make_model(cfg)


def test_empty_reinit_is_allowed_and_keeps_the_stage1_classifier(tmp_path):
    stage1, path = _save_stage1(tmp_path / "s1", tiny_cfg("none"))
    cfg = cbd_cfg(**{"MODEL.WEIGHTS": path, "MODEL.DECOUPLE.REINIT": []})
    model, _ = _load(cfg, tmp_path / "s2", resume=False)
    ref = dict(stage1.named_parameters())
    for n, p in model.named_parameters():
        if not n.startswith("cbd_teacher."):
            assert torch.equal(p, ref[n]), n


# ------------------------------------------------------------------ the step
def test_teacher_starts_as_student_so_distillation_starts_at_zero():
    model = make_model(cbd_cfg())
    assert _same(_teacher_state(model), _head_state(model))
    with EventStorage(0):
        losses, _ = DistilledStep().losses(model, batch(2))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_distill"}
    assert abs(losses["loss_distill"].item()) < 1e-4  # 40 x (1 - cos) at float32 rounding
    assert losses["loss_distill"].requires_grad


def _plain_finetune_losses(model, data):
    """The class-balanced fine-tune of box head + predictor without distillation, written out:
    frozen backbone / RPN / sampling / pooler, then box head and predictor with grad."""
    roi_heads = model.roi_heads
    b = frozen_box_batch(model, data, sample=True, box_features=False)
    pooled = roi_heads.box_pooler([b.features[f] for f in roi_heads.box_in_features],
                                  [p.proposal_boxes for p in b.proposals])
    predictor = roi_heads.box_predictor
    return predictor.losses(predictor(roi_heads.box_head(pooled)), b.proposals)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("alpha", [0.0, 0.4])
def test_alpha_zero_is_the_plain_finetune_and_alpha_scales_the_task_losses(alpha):
    model = make_model(cbd_cfg(**{"MODEL.DECOUPLE.CBD.ALPHA": alpha}))
    with torch.no_grad():  # let the student differ from the teacher
        model.roi_heads.box_head.fc2.weight.mul_(-0.5)
    data = batch(2)
    with EventStorage(0):
        torch.manual_seed(3)
        plain = _plain_finetune_losses(model, data)
        sum(plain.values()).backward()
        plain_grads = _grads(model)
        model.zero_grad()
        torch.manual_seed(3)  # the same proposal sampling
        cbd, _ = DistilledStep().losses(model, data)
        sum(cbd.values()).backward()
        cbd_grads = _grads(model)
    for k in plain:
        torch.testing.assert_close(cbd[k], (1 - alpha) * plain[k])
    if alpha == 0.0:
        assert cbd.keys() == plain.keys()
        assert cbd_grads.keys() == plain_grads.keys()
        for n in plain_grads:
            torch.testing.assert_close(cbd_grads[n], plain_grads[n])
    else:
        assert cbd["loss_distill"].item() > 0.1
        assert not any(n.startswith("cbd_teacher.") for n in cbd_grads)


def test_teacher_never_changes_and_is_not_in_the_optimizer():
    cfg = cbd_cfg(**{"SOLVER.BASE_LR": 0.01})
    model = make_model(cfg)
    opt = build_optimizer(cfg, model)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_opt} == {n for n, p in model.named_parameters()
                                        if n.startswith(tuple(t + "." for t in TRAINABLE))}
    assert not any(n.startswith("cbd_teacher.") for n in (names[i] for i in in_opt))
    teacher, head, stats = _teacher_state(model), _head_state(model), bn_stats(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = DecoupledTrainer(model, [batch(2)] * 3, opt, step=DistilledStep())
    with EventStorage(0) as storage:
        for it in range(3):
            trainer.iter = it
            trainer.run_step()
            storage.step()
        latest = storage.latest()
    assert _same(_teacher_state(model), teacher)
    assert not _same(_head_state(model), head)
    assert not model.cbd_teacher.training
    for n, b in bn_stats(model).items():
        assert torch.equal(b, stats[n]), n
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, params[n])}
    assert changed and all(n.startswith((HEAD + ".", "roi_heads.box_predictor.")) for n in changed)
    assert latest["loss_distill"][0] > 0  # the student moved away from the teacher


# ------------------------------------------------------------------ stage-1 load, save, resume
def test_stage1_load_copies_the_teacher_and_resume_keeps_it(tmp_path):
    stage1, path = _save_stage1(tmp_path / "s1", tiny_cfg("none"))
    s1_head = {k: v.clone() for k, v in stage1.roi_heads.box_head.state_dict().items()}
    cfg = cbd_cfg(**{"MODEL.WEIGHTS": path})
    out = tmp_path / "s2"
    # the stage-1 file has no teacher: not refused (the teacher is copied after the load)
    model, ckpt = _load(cfg, out, resume=False)
    assert _same(_teacher_state(model), s1_head) and _same(_head_state(model), s1_head)
    assert not torch.equal(model.roi_heads.box_predictor.cls_score.weight,
                           stage1.roi_heads.box_predictor.cls_score.weight)  # REINIT
    with torch.no_grad():  # "training" moved the student
        model.roi_heads.box_head.fc1.weight.fill_(0.125)
    ckpt.save("model_0000009")
    saved = torch.load(str(out / "model_0000009.pth"), weights_only=False)["model"]
    assert all(torch.equal(saved["cbd_teacher.box_head." + k], v) for k, v in s1_head.items())
    # a resumed run gets the stage-1 teacher back from its own checkpoint, the student too
    resumed, _ = _load(cfg, out, resume=True)
    assert _same(_teacher_state(resumed), s1_head)
    assert torch.all(resumed.roi_heads.box_head.fc1.weight == 0.125)
    # ... also when the stage-1 file is gone
    os.remove(path)
    resumed, _ = _load(cfg, out, resume=True)
    assert _same(_teacher_state(resumed), s1_head)


def test_lazyconfig_model_trains_with_the_distilled_step(tmp_path):
    cfg1 = tiny_cfg("none")
    stage1 = make_model(cfg1)  # a forward-able stage 1 (_save_stage1's +0.5 overflows)
    path = str(tmp_path / "model_final.pth")
    torch.save({"model": stage1.state_dict()}, path)
    torch.manual_seed(0)
    model = DecoupledGeneralizedRCNN(
        decouple=ClassBalancedDistillation(trainable=TRAINABLE, reinit=[CLS], alpha=0.4,
                                           beta=100.0),
        stage1_weights=path,
        **GeneralizedRCNN.from_config(cfg1),
    )
    assert _same(_teacher_state(model), _head_state(stage1))
    model.train()
    with EventStorage(0):
        losses = model(batch(2))
    assert "loss_distill" in losses and abs(losses["loss_distill"].item()) < 1e-4


# ------------------------------------------------------------------ end to end
def test_lt_trainer_stage1_then_cbd_stage2_and_resume(tiny_lvis, tmp_path):
    from lt_det.engine import LTTrainer

    def trainer_cfg(out_dir, method, **over):
        cfg = tiny_cfg(method, **over)
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = tiny_lvis["num_classes"]
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (tiny_lvis["train"],), ()
        cfg.DATALOADER.NUM_WORKERS = 0
        cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48,), 48
        cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS = 2, 2, 0
        cfg.SOLVER.BASE_LR = 0.01
        cfg.SOLVER.CHECKPOINT_PERIOD = 100000
        cfg.OUTPUT_DIR = str(out_dir)
        return cfg

    s1 = LTTrainer(trainer_cfg(tmp_path / "s1", "none"))
    s1.resume_or_load(resume=False)
    s1.train()
    s1_head = _head_state(s1.model)
    cfg = trainer_cfg(tmp_path / "s2", "cbd", **{
        "MODEL.WEIGHTS": str(tmp_path / "s1" / "model_final.pth"),
        "MODEL.DECOUPLE.TRAINABLE": TRAINABLE,
        "DATALOADER.SAMPLER_TRAIN": "ClassBalancedSampler",
        "SOLVER.LR_SCHEDULER_NAME": "WarmupCosineLR",
    })
    s2 = LTTrainer(cfg)
    assert isinstance(s2._trainer.step, DistilledStep)
    s2.resume_or_load(resume=False)
    assert _same(_teacher_state(s2.model), s1_head)
    s2.train()
    assert _same(_teacher_state(s2.model), s1_head)
    assert not _same(_head_state(s2.model), s1_head)
    assert "loss_distill" in s2.storage.histories()
    saved = torch.load(str(tmp_path / "s2" / "model_final.pth"), weights_only=False)["model"]
    s3 = LTTrainer(cfg)
    s3.resume_or_load(resume=True)
    assert _same(_teacher_state(s3.model), s1_head)
    assert torch.equal(s3.model.roi_heads.box_head.fc1.weight,
                       saved["roi_heads.box_head.fc1.weight"])
