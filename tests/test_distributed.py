"""Two CPU processes (gloo) train like one process with the same global batch.

The comparison is a stage-2 (decoupled) run: only the box classifier trains, every other module is
frozen and in eval mode, so there are no batch statistics (BatchNorm uses its stored statistics)
and the frozen RPN proposes deterministically. What would still make 1 and 2 processes differ is
removed by the config:

- the samplers shard one common stream by rank (rank r takes draws r, r + 2, ...), so with
  ``ASPECT_RATIO_GROUPING False`` an iteration sees the same B images in both runs;
- no random flip; ``PROPOSAL_APPEND_GT False`` and ``POSITIVE_FRACTION 1`` with
  ``BATCH_SIZE_PER_IMAGE`` >= the proposals per image, so every proposal is used (no random
  subsampling) and every image contributes the same number R of ROIs. Then the mean of the
  ranks' mean losses (what DDP-style gradient averaging and detectron2's metric averaging
  compute) equals the 1-process mean over all ROIs.

The runs then differ only in the order of floating-point sums (all-reduce vs one batch); the
tolerance, relative 1e-4 on every logged loss over 4 iterations, is orders of magnitude above that
(float32 sums of a few hundred terms: ~1e-6) and far below the change of the loss from one
iteration to the next.

The sampler is the Meta Sampler: its rates are learned during the run and must be identical on
both ranks (the meta-gradients are all-reduced). Its first chunk of 256 draws is taken with the
initial rates, so for these 4 iterations (16 images) both runs still see the same images.
"""
import json

import pytest
import torch

from lt_det.engine import launch
from test_resume import CONFIG, load_train_net, tiny_opts

ITERS, BATCH = 4, 4


def train_one_and_two_processes(worker, tiny_lvis, tmp_path, *method_opts):
    """Stage 1 for one iteration, then ``ITERS`` stage-2 (cRT) iterations of batch ``BATCH``
    with ``method_opts`` and the overrides that make 1 and 2 processes see the same ROIs (see
    the module docstring), run in 1 and in 2 gloo processes. ``worker(argv, out_json)`` trains
    with that argv and writes ``f"{out_json}.rank{rank}"`` as json with a ``world`` entry.

    Returns the records (1 process, 2 processes rank 0, 2 processes rank 1).
    """
    train_net = load_train_net()
    stage1 = tmp_path / "stage1"
    train_net.main(train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *tiny_opts(tiny_lvis, stage1, "SOLVER.MAX_ITER", "1")]
    ))

    def argv(out):
        return ["--config-file", CONFIG, *tiny_opts(
            tiny_lvis, out, "SOLVER.MAX_ITER", str(ITERS), "SOLVER.IMS_PER_BATCH", str(BATCH),
            "MODEL.WEIGHTS", str(stage1 / "model_final.pth"), "MODEL.DECOUPLE.METHOD", "crt",
            *method_opts,
            "DATALOADER.ASPECT_RATIO_GROUPING", "False", "INPUT.RANDOM_FLIP", "none",
            "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
            "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
            "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0", "SOLVER.BASE_LR", "0.5",
        )]

    one = str(tmp_path / "one.json")
    launch(worker, 1, args=(argv(tmp_path / "one"), one))
    two = str(tmp_path / "two.json")
    launch(worker, 2, args=(argv(tmp_path / "two"), two), dist_url="auto")

    ref = json.load(open(one + ".rank0"))
    r0, r1 = (json.load(open(f"{two}.rank{r}")) for r in (0, 1))
    assert (ref["world"], r0["world"], r1["world"]) == (1, 2, 2)
    return ref, r0, r1


def _train(argv, out_json):
    """Worker: train with tools/train_net.py's set-up; write losses (rank 0) and rates."""
    torch.set_num_threads(1)
    from detectron2.utils import comm

    from lt_det.engine import LTTrainer, setup_cfg

    train_net = load_train_net()
    cfg = setup_cfg(train_net.argument_parser().parse_args(argv))
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=False)
    learner = trainer.checkpointer.checkpointables["meta_sampler"]
    rates0 = learner.rates.tolist()
    trainer.train()
    losses = {  # detectron2 gathers and averages the ranks' losses into rank 0's storage
        k: [v for v, _ in trainer.storage.history(k).values()]
        for k in ("loss_cls", "loss_box_reg")
    } if comm.is_main_process() else None
    with open(f"{out_json}.rank{comm.get_rank()}", "w") as f:
        json.dump(dict(losses=losses, rates=learner.rates.tolist(), rates0=rates0,
                       world=comm.get_world_size()), f)


def test_two_gloo_processes_match_one(tiny_lvis, tmp_path):
    ref, r0, r1 = train_one_and_two_processes(
        _train, tiny_lvis, tmp_path,
        "DATALOADER.SAMPLER_TRAIN", "MetaSampler", "DATALOADER.META_SAMPLER.LR", "0.5",
    )
    for key, values in ref["losses"].items():
        assert len(values) == ITERS
        rel = max(abs(a - b) / abs(b) for a, b in zip(r0["losses"][key], values))
        print(f"{key}: 1 process {values}, 2 processes {r0['losses'][key]}, max rel diff {rel:.2e}")
        assert r0["losses"][key] == pytest.approx(values, rel=1e-4), key
    # the classifier did learn (the comparison is not between constant losses)
    assert ref["losses"]["loss_cls"][-1] < ref["losses"]["loss_cls"][0]
    # Meta Sampler rates: identical on both ranks, and they moved away from the initial rates
    assert r0["rates"] == r1["rates"]
    assert r0["rates0"] == r1["rates0"]
    assert max(abs(a - b) for a, b in zip(r0["rates"], r0["rates0"])) > 1e-4
