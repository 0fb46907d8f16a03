"""State of the stateful losses in training: saved, restored on --resume, reduced across ranks.

- EQLv2 (accumulated gradients): a run stopped and resumed gives the losses and final weights
  and state of an uninterrupted run (the EQLv2 weights of every iteration depend on the state,
  so a state lost or reset on resume changes the losses).
- Seesaw (accumulated counts): two gloo processes train like one process with the same global
  batch (the set-up of tests/test_distributed.py with detectron2's TrainingSampler, which shards
  one shared stream by rank) and end with identical counts on both ranks, equal to the
  one-process counts: the counts are all-reduced when the world size is 2.
"""
import json

import pytest
import torch

from test_distributed import ITERS, train_one_and_two_processes
from test_resume import (
    MAX_ITER,
    PERIOD,
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
