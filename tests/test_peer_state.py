"""State of the stateful losses in training: saved, restored on --resume, reduced across ranks.

- EQLv2 (accumulated gradients): a run stopped and resumed gives the losses and final weights
  and state of an uninterrupted run (the EQLv2 weights of every iteration depend on the state,
  so a state lost or reset on resume changes the losses).
- Seesaw (accumulated counts): two gloo processes train like one process with the same global
  batch (the set-up of tests/test_distributed.py with detectron2's TrainingSampler, which shards
  one shared stream by rank) and end with identical counts on both ranks, equal to the
  one-process counts: the counts are all-reduced when the world size is 2.
- PCB (confusion matrix and counts): both, as EQLv2 and Seesaw.
- ACSL and the federated loss (the generator of their draws): saved and restored as torch's
  extra state.
"""
import json

import pytest
import torch

from test_distributed import ITERS, train_one_and_two_processes
from test_resume import (
    MAX_ITER,
    PERIOD,
    STOP,
    check_resumed_equals_uninterrupted,
    load_train_net,
    tiny_opts,
)

PREFIX = "roi_heads.box_predictor.cls_loss."


def test_eqlv2_state_survives_save_load_resume(tiny_lvis, tmp_path, monkeypatch):
    train_net = load_train_net()

    def opts(out):
        return tiny_opts(tiny_lvis, out, "SOLVER.MAX_ITER", str(MAX_ITER),
                         "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
                         "MODEL.ROI_BOX_HEAD.CLS_LOSS", "eqlv2")

    a, b, _ = check_resumed_equals_uninterrupted(monkeypatch, train_net, opts, tmp_path)
    for key in ("pos_grad", "neg_grad", "pos_neg"):
        assert PREFIX + key in a["model"], key
        torch.testing.assert_close(b["model"][PREFIX + key], a["model"][PREFIX + key])
    assert float(a["model"][PREFIX + "neg_grad"].sum()) > 0  # the state did accumulate


def _train(argv, out_json):
    """Worker: train; write the logged losses (rank 0) and the Seesaw counts of this rank."""
    torch.set_num_threads(1)
    from detectron2.utils import comm

    from lt_det.engine import LTTrainer, setup_cfg

    cfg = setup_cfg(load_train_net().argument_parser().parse_args(argv))
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    counts = model.roi_heads.box_predictor.cls_loss.counts.tolist()
    losses = {
        k: [v for v, _ in trainer.storage.history(k).values()] for k in ("loss_cls",)
    } if comm.is_main_process() else None
    with open(f"{out_json}.rank{comm.get_rank()}", "w") as f:
        json.dump(dict(losses=losses, counts=counts, world=comm.get_world_size()), f)


def test_seesaw_counts_two_gloo_processes_match_one(tiny_lvis, tmp_path):
    ref, r0, r1 = train_one_and_two_processes(
        _train, tiny_lvis, tmp_path,
        "MODEL.ROI_BOX_HEAD.CLS_LOSS", "seesaw", "DATALOADER.SAMPLER_TRAIN", "TrainingSampler",
    )
    assert sum(ref["counts"]) > 0, "no foreground ROI was counted"
    assert r0["counts"] == r1["counts"] == ref["counts"]
    values = ref["losses"]["loss_cls"]
    assert len(values) == ITERS
    assert r0["losses"]["loss_cls"] == pytest.approx(values, rel=1e-4)


# PCB (confusion matrix + counts): the regulariser on from the first iteration (START 0) once every
# class was counted, so the losses read the matrix once the counts are complete (in the resume
# test: class-balanced sampling, seed 0, complete before the iteration the run resumes at).
PCB_OPTS = ("MODEL.ROI_BOX_HEAD.CLS_LOSS", "pcb", "MODEL.ROI_BOX_HEAD.PCB.START", "0.0")


def test_pcb_state_survives_save_load_resume(tiny_lvis, tmp_path, monkeypatch):
    train_net = load_train_net()

    def opts(out):
        return tiny_opts(tiny_lvis, out, "SOLVER.MAX_ITER", str(MAX_ITER),
                         "SOLVER.CHECKPOINT_PERIOD", str(PERIOD), *PCB_OPTS,
                         "DATALOADER.SAMPLER_TRAIN", "ClassBalancedSampler", "SEED", "0")

    a, b, _ = check_resumed_equals_uninterrupted(monkeypatch, train_net, opts, tmp_path)
    for key in ("confusion", "counts"):
        assert PREFIX + key in a["model"], key
        torch.testing.assert_close(b["model"][PREFIX + key], a["model"][PREFIX + key])
    # every class was counted by the checkpoint the run resumed from: the resumed iterations
    # trained with the regulariser on, so their losses read the restored matrix
    resumed_from = torch.load(str(tmp_path / "cut" / f"model_{STOP - 1:07d}.pth"),
                              weights_only=False)
    assert float(resumed_from["model"][PREFIX + "counts"].min()) > 0
    rows = a["model"][PREFIX + "confusion"].sum(dim=1)
    torch.testing.assert_close(rows, torch.ones_like(rows))


DRAWING_LOSSES = {
    "acsl": ("MODEL.ROI_BOX_HEAD.ACSL.BG_FRACTIONS", "[0.5, 0.5, 0.5]"),
    "federated": ("MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES", "3"),
}


@pytest.mark.parametrize("loss", sorted(DRAWING_LOSSES))
def test_drawing_losses_resume_with_their_generator(tiny_lvis, tmp_path, monkeypatch, loss):
    """ACSL (suppressed background ROIs) and the federated loss (negative classes) draw with
    their own generator: the checkpoint holds its state, so the resumed run draws, and losses,
    as the uninterrupted one."""
    train_net = load_train_net()

    def opts(out):
        return tiny_opts(tiny_lvis, out, "SOLVER.MAX_ITER", str(MAX_ITER),
                         "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
                         "MODEL.ROI_BOX_HEAD.CLS_LOSS", loss, *DRAWING_LOSSES[loss])

    a, b, _ = check_resumed_equals_uninterrupted(monkeypatch, train_net, opts, tmp_path)
    key = PREFIX + "_extra_state"
    assert key in a["model"] and a["model"][key].dtype == torch.uint8
    assert torch.equal(b["model"][key], a["model"][key])
    fresh = torch.Generator().manual_seed(0).get_state()
    assert not torch.equal(a["model"][key], fresh)  # the draws did advance it


def _train_pcb(argv, out_json):
    """Worker: train; write the logged losses (rank 0) and the PCB state of this rank."""
    torch.set_num_threads(1)
    from detectron2.utils import comm

    from lt_det.engine import LTTrainer, setup_cfg

    cfg = setup_cfg(load_train_net().argument_parser().parse_args(argv))
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    loss = model.roi_heads.box_predictor.cls_loss
    loss.counts.fill_(1.0)  # every class counted (as after a first epoch): regulariser on at once
    trainer.train()
    losses = [v for v, _ in trainer.storage.history("loss_cls").values()] if (
        comm.is_main_process()) else None
    with open(f"{out_json}.rank{comm.get_rank()}", "w") as f:
        json.dump(dict(losses=losses, counts=loss.counts.tolist(),
                       confusion=loss.confusion.tolist(), world=comm.get_world_size()), f)


def test_pcb_matrix_two_gloo_processes_match_one(tiny_lvis, tmp_path):
    ref, r0, r1 = train_one_and_two_processes(
        _train_pcb, tiny_lvis, tmp_path, *PCB_OPTS, "DATALOADER.SAMPLER_TRAIN", "TrainingSampler",
    )
    assert sum(ref["counts"]) > len(ref["counts"]), "no foreground ROI was counted"
    assert r0["counts"] == r1["counts"] == ref["counts"]
    assert r0["confusion"] == r1["confusion"]  # the same all-reduced statistics on both ranks
    torch.testing.assert_close(torch.tensor(r0["confusion"]), torch.tensor(ref["confusion"]),
                               rtol=1e-5, atol=1e-7)
    assert len(ref["losses"]) == ITERS
    assert r0["losses"] == pytest.approx(ref["losses"], rel=1e-4)
