"""--resume continues a run exactly: same iterations, sampler position, learner state and losses.

A run is stopped (an exception raised after iteration ``STOP``; its last checkpoint is older), then
``tools/train_net.py --resume`` (its ``main``, in process) finishes it. Everything is compared with
an uninterrupted run of the same config: stage 1 (detectron2's TrainingSampler, training-mode
RPN/ROI sampling and BatchNorm) and stage 2 with the Meta Sampler (rates change every iteration,
so the rest of the sampler's chunk in progress must be drawn with the rates saved for it).
"""
import importlib.util
import os

import pytest
import torch
from conftest import tiny_data_opts
from detectron2.engine import HookBase

from lt_det.engine import LTTrainer
from lt_det.checkpoint import AtomicDetectionCheckpointer
from lt_det.errors import LTDetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "softmax.yaml")
MAX_ITER, PERIOD, STOP = 6, 2, 4  # checkpoints after iterations 1, 3, 5; stopped after 4

# A tiny, fast version of the synthetic R18-FPN detector (48 px images, batch 2).
TINY_OPTS = [
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "48",
    "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "48",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()",
    "SOLVER.BASE_LR", "0.01", "DATALOADER.NUM_WORKERS", "0", "SEED", "3",
]


def load_train_net():
    spec = importlib.util.spec_from_file_location(
        "lt_train_net", os.path.join(ROOT, "tools", "train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_opts(tiny_lvis, out_dir, *extra):
    return [*tiny_data_opts(tiny_lvis), "DATASETS.TEST", "()", *TINY_OPTS,
            "OUTPUT_DIR", str(out_dir), *extra]


class _Stop(Exception):
    pass


class _Record(HookBase):
    """Per-iteration total loss, sampler position and (Meta Sampler) rates, in ``log``."""

    def __init__(self, log, stop_after=None):
        self.log, self.stop_after = log, stop_after

    def after_step(self):
        t = self.trainer
        learner = t.checkpointer.checkpointables.get("meta_sampler")
        self.log[t.iter] = dict(
            loss=t.storage.history("total_loss").latest(),
            position=t.train_sampler.position,
            rates=None if learner is None else learner.rates.clone(),
        )
        if self.stop_after is not None and t.iter == self.stop_after:
            raise _Stop()


def run(monkeypatch, train_net, opts, *, resume=False, stop_after=None):
    """Run tools/train_net.py's main in process; return {iteration: record}."""
    log = {}
    build_hooks = LTTrainer.build_hooks

    def hooks(self):
        return build_hooks(self) + [_Record(log, stop_after)]

    monkeypatch.setattr(LTTrainer, "build_hooks", hooks)
    argv = ["--config-file", CONFIG] + (["--resume"] if resume else []) + list(opts)
    args = train_net.argument_parser().parse_args(argv)
    if stop_after is None:
        train_net.main(args)
    else:
        with pytest.raises(_Stop):
            train_net.main(args)
    monkeypatch.setattr(LTTrainer, "build_hooks", build_hooks)
    return log


def check_resumed_equals_uninterrupted(monkeypatch, train_net, make_opts, tmp_path):
    full = run(monkeypatch, train_net, make_opts(tmp_path / "full"))
    assert sorted(full) == list(range(MAX_ITER))
    cut = tmp_path / "cut"
    stopped = run(monkeypatch, train_net, make_opts(cut), stop_after=STOP)
    assert sorted(stopped) == list(range(STOP + 1))
    assert (cut / "last_checkpoint").read_text() == f"model_{STOP - 1:07d}.pth"
    resumed = run(monkeypatch, train_net, make_opts(cut), resume=True)
    # detectron2 restarts after the last checkpoint: iterations STOP and on are run again.
    assert sorted(resumed) == list(range(STOP, MAX_ITER))
    for it in range(STOP, MAX_ITER):
        assert resumed[it]["position"] == full[it]["position"] == 2 * (it + 1)
        assert resumed[it]["loss"] == pytest.approx(full[it]["loss"], rel=1e-6, abs=1e-7), it
        if full[it]["rates"] is not None:
            torch.testing.assert_close(resumed[it]["rates"], full[it]["rates"])
    a = torch.load(str(tmp_path / "full" / "model_final.pth"), weights_only=False)
    b = torch.load(str(cut / "model_final.pth"), weights_only=False)
    assert a["iteration"] == b["iteration"] == MAX_ITER - 1
    for name, value in a["model"].items():
        torch.testing.assert_close(b["model"][name], value, rtol=1e-6, atol=1e-7, msg=name)
    return a, b, full


def test_resume_stage1_continues_stream_and_losses(tiny_lvis, tmp_path, monkeypatch):
    train_net = load_train_net()

    def opts(out):
        return tiny_opts(tiny_lvis, out, "SOLVER.MAX_ITER", str(MAX_ITER),
                         "SOLVER.CHECKPOINT_PERIOD", str(PERIOD))

    check_resumed_equals_uninterrupted(monkeypatch, train_net, opts, tmp_path)


def test_resume_stage2_meta_sampler(tiny_lvis, tmp_path, monkeypatch):
    train_net = load_train_net()
    stage1 = tmp_path / "stage1"
    run(monkeypatch, train_net, tiny_opts(tiny_lvis, stage1, "SOLVER.MAX_ITER", "1"))

    def opts(out):
        return tiny_opts(
            tiny_lvis, out, "SOLVER.MAX_ITER", str(MAX_ITER),
            "SOLVER.CHECKPOINT_PERIOD", str(PERIOD),
            "MODEL.WEIGHTS", str(stage1 / "model_final.pth"),
            "MODEL.DECOUPLE.METHOD", "crt", "MODEL.ROI_BOX_HEAD.CLS_LOSS", "balanced_softmax",
            "DATALOADER.SAMPLER_TRAIN", "MetaSampler", "DATALOADER.META_SAMPLER.LR", "0.5",
        )

    a, b, full = check_resumed_equals_uninterrupted(monkeypatch, train_net, opts, tmp_path)
    assert not torch.allclose(full[0]["rates"], full[MAX_ITER - 1]["rates"]), "rates never moved"
    # Learner state (rate logits, Adam, meta set, generator) and the sampler's chunk state.
    la, lb = a["meta_sampler"], b["meta_sampler"]
    torch.testing.assert_close(lb["logits"], la["logits"])
    torch.testing.assert_close(lb["optimizer"]["state"], la["optimizer"]["state"])
    torch.testing.assert_close(lb["bank"], la["bank"])
    assert torch.equal(lb["generator"], la["generator"])
    sa, sb = a["train_sampler"]["stream"], b["train_sampler"]["stream"]
    assert sa["position"] == sb["position"]
    torch.testing.assert_close(sb["probs"], sa["probs"])


def test_checkpoint_is_never_half_written(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicDetectionCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    good = (tmp_path / "model_final.pth").read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(LTDetError, match="cannot write .*model_final.pth.*disk full"):
        ckpt.save("model_final")
    monkeypatch.undo()
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
