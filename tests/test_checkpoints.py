"""Weights are what they claim to be: one load guard for every load, files that name their path,
one class prior, frozen modules in eval mode."""
import logging
import os
import stat

import pytest
import torch
from detectron2.solver import build_optimizer
from detectron2.utils.events import EventStorage
from test_bad_input import data_opts, make_data, write_json
from test_decouple import batch, make_model, tiny_cfg
from test_resume import CONFIG, TINY_OPTS, load_train_net

from lt_det.data import register_datasets_from_cfg
from lt_det.decouple import DecoupledTrainer
from lt_det.engine import LTCheckpointer, LTTrainer, load_config
from lt_det.errors import LTDetError

K = 3


def tiny_dataset(tmp_path):
    data, root = make_data(tmp_path)
    return data_opts(write_json(tmp_path, data), root)


def train_net_error(tmp_path, *argv, flags=()):
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY_OPTS, *argv]
    )
    with pytest.raises(LTDetError) as e:
        train_net.main(args)
    return str(e.value)


def save_model(tmp_path, opts, name, num_classes=K, **extra):
    """A checkpoint of the tiny config's model with ``num_classes`` classes."""
    cfg = load_config(CONFIG, [*TINY_OPTS, *opts, "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes),
                               *[x for kv in extra.items() for x in kv]])
    register_datasets_from_cfg(cfg)  # the prior is counted from it (this test alone, any order)
    model = LTTrainer.build_model(cfg)
    path = str(tmp_path / name)
    torch.save({"model": model.state_dict()}, path)
    return path, model


# ------------------------------------------------------------------ one guard for every load
def test_eval_only_with_a_checkpoint_of_another_class_count(tmp_path):
    opts = tiny_dataset(tmp_path)
    other, _ = save_model(tmp_path, opts, "k5.pth", num_classes=5)
    msg = train_net_error(tmp_path, *opts, "DATASETS.TEST", "('bad_train',)", "MODEL.WEIGHTS",
                          other, "OUTPUT_DIR", str(tmp_path / "eval"), flags=["--eval-only"])
    assert f"checkpoint '{other}' does not fit this model" in msg
    assert "roi_heads.box_predictor.cls_score.weight" in msg and "NUM_CLASSES" in msg


def test_resume_refuses_a_checkpoint_of_another_class_count(tmp_path):
    opts = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    save_model(out, opts, "model_0000001.pth", num_classes=5)
    (out / "last_checkpoint").write_text("model_0000001.pth")
    msg = train_net_error(tmp_path, *opts, "OUTPUT_DIR", str(out), flags=["--resume"])
    assert f"'{out / 'model_0000001.pth'}' does not fit this model" in msg


@pytest.mark.parametrize("kind", ["truncated", "text.pth", "text.pkl"])
def test_unreadable_checkpoint_names_its_path(tmp_path, kind):
    opts = tiny_dataset(tmp_path)
    good, _ = save_model(tmp_path, opts, "good.pth")
    bad = str(tmp_path / ("bad.pkl" if kind.endswith("pkl") else "bad.pth"))
    with open(bad, "wb") as f:
        if kind == "truncated":
            data = open(good, "rb").read()
            f.write(data[: len(data) // 2])
        else:
            f.write(b"these are not weights\n")
    for flags in ([], ["--eval-only"]):
        msg = train_net_error(tmp_path, *opts, "MODEL.WEIGHTS", bad, "OUTPUT_DIR",
                              str(tmp_path / f"out{len(flags)}"), flags=flags)
        assert f"checkpoint '{bad}' cannot be read" in msg and "truncated, corrupt" in msg


def test_last_checkpoint_naming_a_missing_file(tmp_path):
    opts = tiny_dataset(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000009.pth")
    msg = train_net_error(tmp_path, *opts, "OUTPUT_DIR", str(out), flags=["--resume"])
    assert f"checkpoint '{out / 'model_0000009.pth'}' does not exist" in msg
    assert "last_checkpoint" in msg


# ------------------------------------------------------------------ one class prior
def test_the_configs_prior_wins_over_the_checkpoints(tmp_path, caplog):
    opts = tiny_dataset(tmp_path)
    loss = ("MODEL.ROI_BOX_HEAD.CLS_LOSS", "balanced_softmax")
    path, stage1 = save_model(tmp_path, opts, "stage1.pth", **dict([loss]))
    state = torch.load(path, weights_only=False)
    key = "roi_heads.box_predictor.cls_loss.class_prior"
    config_prior = state["model"][key].clone()
    state["model"][key] = config_prior.flip(0) / 3  # as trained with another prior
    torch.save(state, path)
    cfg = load_config(CONFIG, [*TINY_OPTS, *opts, *loss, "MODEL.DECOUPLE.METHOD", "crt",
                               "DATALOADER.SAMPLER_TRAIN", "MetaSampler"])
    model = LTTrainer.build_model(cfg)
    with caplog.at_level(logging.WARNING, logger="lt_det.checkpoint"):
        LTCheckpointer(model).load(path)
    assert torch.equal(model.state_dict()[key], config_prior)
    assert f"'{path}' holds another {key}" in caplog.text and "config's" in caplog.text
    # the Meta Sampler's inner step differentiates the loss module's per_roi: the same buffer
    predictor = model.roi_heads.box_predictor
    logits, gt = torch.randn(5, K + 1), torch.tensor([0, 1, 2, 3, 0])
    torch.testing.assert_close(
        predictor.cls_loss.per_roi(logits, gt).mean(), predictor.cls_loss(logits, gt)
    )


def test_a_checkpoint_without_a_prior_is_not_reported_as_missing_it(tmp_path):
    # a softmax stage-1 checkpoint loaded for a Balanced Softmax stage 2: the config's prior is
    # used, and only truly missing entries are reported by the checkpointer
    opts = tiny_dataset(tmp_path)
    path, _ = save_model(tmp_path, opts, "stage1.pth")
    state = torch.load(path, weights_only=False)
    prior_key = "roi_heads.box_predictor.cls_loss.class_prior"
    missing_key = "roi_heads.box_predictor.bbox_pred.bias"
    assert prior_key not in state["model"]
    del state["model"][missing_key]
    torch.save(state, path)
    cfg = load_config(CONFIG, [*TINY_OPTS, *opts, "MODEL.ROI_BOX_HEAD.CLS_LOSS", "balanced_softmax"])
    model = LTTrainer.build_model(cfg)
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    checkpointer = LTCheckpointer(model, must_load=None)
    checkpointer.logger.addHandler(handler)
    try:
        checkpointer.load(path)
    finally:
        checkpointer.logger.removeHandler(handler)
    text = "\n".join(r.getMessage() for r in records)
    assert missing_key.rsplit(".", 1)[0] in text and "class_prior" not in text, text
    assert prior_key in model.state_dict()


# ------------------------------------------------------------------ frozen means eval mode
def test_frozen_cascade_box_heads_run_in_eval_mode():
    names = [f"roi_heads.box_predictor.{i}.cls_score" for i in range(3)]
    cfg = tiny_cfg("crt", **{"MODEL.DECOUPLE.TRAINABLE": names, "MODEL.DECOUPLE.REINIT": names})
    cfg.MODEL.ROI_HEADS.NAME = "LTCascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    model = make_model(cfg)
    seen = []
    for k, head in enumerate(model.roi_heads.box_head):
        head.register_forward_hook(lambda m, i, o, k=k: seen.append((k, m.training)))
    trainer = DecoupledTrainer(model, [batch(2)], build_optimizer(cfg, model))
    assert model.training  # SimpleTrainer called model.train()
    with EventStorage(0):
        trainer.run_step()
    assert sorted({k for k, _ in seen}) == [0, 1, 2]
    assert not any(training for _, training in seen), seen


@pytest.mark.parametrize("content", [[1, 2, 3], {"a": 1}, {"model": [1, 2]}, {"model": {}}])
def test_a_torch_file_that_is_not_a_checkpoint_names_its_path(tmp_path, content):
    opts = tiny_dataset(tmp_path)
    bad = str(tmp_path / "not_weights.pth")
    torch.save(content, bad)
    for flags in ([], ["--eval-only"]):
        msg = train_net_error(tmp_path, *opts, "MODEL.WEIGHTS", bad, "OUTPUT_DIR",
                              str(tmp_path / f"out{len(flags)}"), flags=flags)
        assert msg.startswith(f"checkpoint '{bad}' is not a model checkpoint: "), msg
        assert "Traceback" not in msg


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_get_the_mode_of_every_other_file(tmp_path, umask):
    previous = os.umask(umask)
    try:
        LTCheckpointer(torch.nn.Linear(2, 1), str(tmp_path)).save("model_0000000")
        (tmp_path / "config.yaml").write_text("")  # what default_setup writes, same umask
    finally:
        os.umask(previous)
    expected = 0o666 & ~umask
    for name in ("model_0000000.pth", "last_checkpoint", "config.yaml"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == expected, name


def test_a_new_run_removes_temporary_files_an_interrupted_save_left(tmp_path):
    opts = [*tiny_dataset(tmp_path), "SOLVER.CHECKPOINT_PERIOD", "1"]
    out = tmp_path / "out"
    train_net = load_train_net()

    def train(max_iter, *flags):
        train_net.main(train_net.argument_parser().parse_args(
            ["--config-file", CONFIG, *flags, *TINY_OPTS, *opts, "OUTPUT_DIR", str(out),
             "SOLVER.MAX_ITER", str(max_iter)]))

    train(1)
    # what kill -9 during a save leaves (names as the checkpointer makes them), and a user file
    stale = [".model_0000001.pth.4242-0badc0de.tmp", ".last_checkpoint.4242-00ff00ff.tmp"]
    for name in stale:
        (out / name).write_bytes(b"partial")
    (out / ".notes.1-ab.tmp").write_text("not lt_det's")
    train(2, "--resume")
    left = sorted(n for n in os.listdir(out) if n.endswith(".tmp"))
    assert left == [".notes.1-ab.tmp"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
