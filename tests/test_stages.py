"""Two stages in one command (MODEL.DECOUPLE.STAGE1_CONFIG): the argument plan, without training
(tests/test_train_net.py trains both stages on tiny data)."""
import os
from argparse import Namespace

import pytest

from lt_det.engine import load_config
from lt_det.engine.stages import stage1_finished, two_stage_args
from lt_det.errors import LTDetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def _args(config, out, **kw):
    base = dict(config_file=config, opts=["OUTPUT_DIR", str(out)], eval_only=False,
                resume=False, overwrite_output=False)
    base.update(kw)
    return Namespace(**base)


def test_flagship_config_is_rfs_then_crt(tmp_path):
    # stage 2 of the flagship is cRT (re-initialised classifier, class-balanced sampling), as is
    # that of its synthetic counterpart
    for flagship in ("lvis_balanced.yaml", os.path.join("synthetic", "rfs_then_crt.yaml")):
        cfg = load_config(os.path.join(CONFIGS, flagship))
        assert cfg.MODEL.DECOUPLE.METHOD == "crt", flagship
        assert cfg.DATALOADER.SAMPLER_TRAIN == "ClassBalancedSampler", flagship
    out = tmp_path / "o"
    plan = two_stage_args(_args(os.path.join(CONFIGS, "lvis_balanced.yaml"), out))
    assert plan.stage1.config_file == os.path.join(CONFIGS, "lvis_rfs.yaml")
    assert plan.stage1_dir == str(out / "stage1")
    assert plan.stage1.opts[-2:] == ["OUTPUT_DIR", str(out / "stage1")]
    weights = plan.stage2.opts[plan.stage2.opts.index("MODEL.WEIGHTS") + 1]
    assert weights == str(out / "stage1" / "model_final.pth")
    assert plan.stage2.config_file.endswith("lvis_balanced.yaml")
    # the stage-2 run does not plan a stage 1 again
    assert plan.stage2.opts[-2:] == ["MODEL.DECOUPLE.STAGE1_CONFIG", ""]
    # --eval-only and single-stage configs run as they are
    assert two_stage_args(_args(os.path.join(CONFIGS, "lvis_balanced.yaml"), out,
                                eval_only=True)) is None
    assert two_stage_args(_args(os.path.join(CONFIGS, "lvis_balanced_e2e.yaml"), out)) is None
    assert not stage1_finished(str(out / "stage1"))


def test_bad_stage1_config_and_earlier_run(tmp_path):
    cfg = tmp_path / "two.yaml"
    cfg.write_text(f'_BASE_: "{os.path.join(CONFIGS, "synthetic", "stage2_balms.yaml")}"\n'
                   'MODEL:\n  DECOUPLE:\n    STAGE1_CONFIG: "missing.yaml"\n')
    with pytest.raises(LTDetError, match="missing.yaml', which does not exist"):
        two_stage_args(_args(str(cfg), tmp_path / "o"))
    cfg.write_text(f'_BASE_: "{os.path.join(CONFIGS, "synthetic", "stage2_balms.yaml")}"\n'
                   'MODEL:\n  DECOUPLE:\n    STAGE1_CONFIG: "two.yaml"\n')
    with pytest.raises(LTDetError, match="sets MODEL.DECOUPLE.STAGE1_CONFIG itself"):
        two_stage_args(_args(str(cfg), tmp_path / "o"))
    # a finished stage 1 in OUTPUT_DIR/stage1: refused without --resume, skipped with it
    done = tmp_path / "o" / "stage1"
    done.mkdir(parents=True)
    (done / "model_final.pth").write_bytes(b"x")
    flagship = os.path.join(CONFIGS, "synthetic", "rfs_then_crt.yaml")
    with pytest.raises(LTDetError, match="already holds a finished run"):
        two_stage_args(_args(flagship, tmp_path / "o"))
    plan = two_stage_args(_args(flagship, tmp_path / "o", resume=True))
    assert stage1_finished(plan.stage1_dir)


def test_stage1_config_from_the_command_line(tmp_path):
    # Any stage-2 config becomes a two-stage run with STAGE1_CONFIG on the command line; the key
    # chooses stage 1 and is not passed on to it (it would make stage 1 plan a stage 1 itself).
    out = tmp_path / "o"
    args = _args(os.path.join(CONFIGS, "lvis_stage2_crt.yaml"), out)
    args.opts = ["MODEL.DECOUPLE.STAGE1_CONFIG", "lvis_rfs.yaml", "SOLVER.BASE_LR", "0.01"] + \
        args.opts
    plan = two_stage_args(args)
    assert plan.stage1.config_file == os.path.join(CONFIGS, "lvis_rfs.yaml")
    assert plan.stage1.opts == ["SOLVER.BASE_LR", "0.01", "OUTPUT_DIR", str(out / "stage1")]
    assert plan.stage2.config_file.endswith("lvis_stage2_crt.yaml")
    assert plan.stage2.opts[-2:] == ["MODEL.DECOUPLE.STAGE1_CONFIG", ""]


def test_runs_in_one_process_log_apart(tmp_path):
    # The two stages run in one process: each run's records go to its own log.txt, and the
    # console gets them once (detectron2's setup_logger never removes the handlers it adds).
    import logging

    from detectron2.utils.logger import setup_logger

    from lt_det.engine.log_setup import RUN_LOGGERS, run_logging, setup_lt_logging

    def handlers():
        return {n: list(logging.getLogger(n).handlers) for n in RUN_LOGGERS}

    before = handlers()
    first, second = tmp_path / "stage1", tmp_path / "stage2"
    with run_logging():
        setup_logger(str(first), name="detectron2")
        setup_lt_logging(str(first), rank=0)
        logging.getLogger("detectron2.x").info("first run")
        logging.getLogger("lt_det.x").info("first lt_det")
    assert handlers() == before
    with run_logging():
        for _ in range(2):  # set up twice for one folder: still one handler each
            setup_logger(str(second), name="detectron2")
            setup_lt_logging(str(second), rank=0)
        added = {n: len(logging.getLogger(n).handlers) - len(before[n]) for n in RUN_LOGGERS}
        logging.getLogger("detectron2.x").info("second run")
        logging.getLogger("lt_det.x").info("second lt_det")
    assert added == {"detectron2": 2, "fvcore": 0, "lt_det": 2}  # console + log.txt
    assert handlers() == before
    one, two = (first / "log.txt").read_text(), (second / "log.txt").read_text()
    assert "first run" in one and "first lt_det" in one and "second" not in one
    assert "second run" in two and "second lt_det" in two and "first" not in two


def test_each_start_checks_its_config_once(tmp_path, monkeypatch):
    # check_launch (the launching process) records what it checked; setup_cfg in the same process
    # (one GPU) does not check those arguments again, but does check each stage of a two-stage
    # config, whose arguments differ.
    from lt_det.engine import defaults

    checked = []
    real = defaults.check_config
    monkeypatch.setattr(defaults, "check_config",
                        lambda cfg, **kw: (checked.append(cfg.MODEL.DECOUPLE.METHOD),
                                           real(cfg, **kw)))

    class Stop(Exception):
        pass

    def stop(cfg):  # right after the config checks: no dataset is read
        raise Stop

    monkeypatch.setattr(defaults, "check_dataset_files", stop)
    flagship = os.path.join(CONFIGS, "synthetic", "rfs_then_crt.yaml")
    args = _args(flagship, tmp_path / "o", num_gpus=1)
    defaults.check_launch(args)
    assert checked == ["crt"]
    with pytest.raises(Stop):
        defaults.setup_cfg(args)
    assert checked == ["crt"]  # not again for the same arguments
    plan = two_stage_args(args)
    for stage in (plan.stage1, plan.stage2):
        with pytest.raises(Stop):
            defaults.setup_cfg(stage)
    assert checked == ["crt", "none", "crt"]
    # setup_cfg alone (no launcher) checks
    with pytest.raises(Stop):
        defaults.setup_cfg(_args(flagship, tmp_path / "p", num_gpus=1))
    assert checked == ["crt", "none", "crt", "crt"]
