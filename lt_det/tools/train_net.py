"""Train or evaluate a detectron2 model with lt_det's heads, samplers, decoupling and LVIS evaluation.

    lt-train-net --config-file lvis_balanced.yaml                  # stage 1 RFS, then cRT
    python -m lt_det.tools.train_net --config-file configs/synthetic/softmax.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu  # 2 CPU processes, gloo
    python tools/train_net.py --config-file CFG --resume           # continue the run in OUTPUT_DIR
    python tools/train_net.py --config-file configs/lazy/lvis_rfs.py train.device=cpu  # LazyConfig

The three forms are one program: ``lt-train-net`` (console script of the installed package),
``python -m lt_det.tools.train_net`` and a checkout's ``tools/train_net.py``. A ``--config-file``
that is not a file is looked up among the configs lt_det ships (:mod:`lt_det.model_zoo`), so an
installed package needs no checkout.

Without a GPU add ``MODEL.DEVICE cpu`` (the LVIS configs default to CUDA). Outputs: see --help.
Bad input (a missing file, a malformed dataset, an unknown config value, a NaN loss, ...) is
reported as one line "lt_det: error: ..." on stderr with exit status 2; see docs/robustness.md.
An OUTPUT_DIR that already holds a run is not overwritten unless --resume or --overwrite-output.
A config with MODEL.DECOUPLE.STAGE1_CONFIG trains that config first (into OUTPUT_DIR/stage1) and
then itself from the stage-1 model, in one command; --resume continues either stage.
"""
import os
import sys
from typing import List, Optional

__all__ = ["argument_parser", "main", "run", "cli"]

_EPILOG = """
lt_det:
  Without a GPU add MODEL.DEVICE cpu (the LVIS configs default to CUDA; the synthetic configs
  already run on CPU); --num-gpus N MODEL.DEVICE cpu runs N CPU processes over gloo.
  --config-file takes a path, or the name of a config lt_det ships (lvis_balanced.yaml,
  synthetic/rfs.yaml, lazy/lvis_rfs.py: python -c "from lt_det import model_zoo;
  print(model_zoo.list_configs())").
  MODEL.WEIGHTS must be reachable: offline, copy the weights file onto the machine and pass its
  path (an R-50 with FrozenBN and MODEL.WEIGHTS "" trains poorly; a warning says so).
  Training writes OUTPUT_DIR/{config.yaml,log.txt,metrics.json,events.out.tfevents.*,
  model_*.pth,last_checkpoint,eval_results.json,.lt_det.lock} and OUTPUT_DIR/inference/<dataset>/
  (detections, per-class AP); --eval-only writes its config.yaml, log.txt, eval_results.json and
  .lt_det.lock under OUTPUT_DIR/inference/ and leaves the training run's own files as they are.
  .lt_det.lock (one run per folder) is an OS lock that ends with the process; the file stays.
  Two stages in one command: a config with MODEL.DECOUPLE.STAGE1_CONFIG (configs/lvis_balanced.yaml:
  RFS, then cRT) trains that stage-1 config into OUTPUT_DIR/stage1/, then itself from
  OUTPUT_DIR/stage1/model_final.pth into OUTPUT_DIR (KEY VALUE overrides reach both); --resume
  skips a finished stage 1 and resumes the unfinished stage. Any stage-2 config does the same
  with MODEL.DECOUPLE.STAGE1_CONFIG <stage-1 yaml> on the command line.
  A .py --config-file is a LazyConfig (configs/lazy/, docs/lazyconfig.md): overrides are then
  path.key=value (train.device=cpu train.output_dir=out), options go before them.
"""


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--overwrite-output`` and lt_det's notes
    (device, weights, what is written where) in the help."""
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.epilog = (parser.epilog or "") + _EPILOG
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that already holds one (its checkpoints are "
        "replaced); without it such a folder is refused unless --resume is given",
    )
    return parser


def _shipped_config(config_file: str) -> str:
    """``config_file`` as given when it exists, else the shipped config of that name (an
    installed package has no configs/ folder in the working directory); a name that is neither
    is left as it is for the config loader's "not found" message."""
    if not config_file or os.path.exists(config_file):
        return config_file
    from ..errors import LTDetError
    from ..model_zoo import get_config_file

    try:
        return get_config_file(config_file)
    except LTDetError:
        return config_file


def main(args):
    """One start: both stages of a two-stage config, else the run ``args`` describes (in each
    process of :func:`lt_det.engine.launch`). Returns the evaluation results."""
    from detectron2.utils import comm

    from ..engine import eval_output_dir, release_output_dir, run_logging, setup_cfg
    from ..engine.lazy import is_lazy_config, lazy_main
    from ..engine.stages import stage1_finished, two_stage_args

    if is_lazy_config(args.config_file):  # a .py LazyConfig, path.key=value overrides
        return lazy_main(args)
    stages = two_stage_args(args)
    if stages is not None:
        if not (args.resume and stage1_finished(stages.stage1_dir)):
            with run_logging():  # stage 1's log handlers end with it
                main(stages.stage1)
        elif comm.is_main_process():  # before stage 2's logging is set up
            print(f"[train_net] stage 1 is finished ({stages.stage1_dir}/model_final.pth); "
                  "--resume goes on with stage 2", flush=True)
        comm.synchronize()
        return main(stages.stage2)
    cfg = setup_cfg(args)  # checks everything, then locks the folder it writes to
    try:
        return run(cfg, args)
    finally:
        release_output_dir(eval_output_dir(cfg) if args.eval_only else cfg.OUTPUT_DIR)


def run(cfg, args):
    """Train (``LTTrainer``) or, with ``--eval-only``, evaluate ``cfg.MODEL.WEIGHTS``; write
    ``eval_results.json``. ``cfg`` comes from :func:`lt_det.engine.setup_cfg`."""
    from detectron2.evaluation import verify_results
    from detectron2.utils import comm

    from ..engine import LTCheckpointer, LTTrainer, eval_only_config, eval_output_dir
    from ..evaluation import save_eval_results

    if args.eval_only:
        model = LTTrainer.build_model(eval_only_config(cfg))  # prior from the checkpoint
        # must_load="all": a checkpoint of another architecture or class count is refused
        LTCheckpointer(model, save_dir=cfg.OUTPUT_DIR, must_load="all").resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = LTTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        save_eval_results(eval_output_dir(cfg), res)
        return res
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    save_eval_results(cfg.OUTPUT_DIR, getattr(trainer, "_last_eval_results", None))
    return res


def cli(argv: Optional[List[str]] = None) -> int:
    """The program: parse ``argv`` (default ``sys.argv[1:]``), check the config in this process
    before any worker starts, then :func:`main` in ``--num-gpus`` processes. Returns the exit
    status (0, 2 for bad input, 128 + signal for a signal stop)."""
    from . import filter_jit_deprecation

    filter_jit_deprecation()
    from ..engine import launch
    from ..engine.defaults import check_launch
    from ..engine.lazy import check_lazy_launch, is_lazy_config
    from ..errors import LTDetError, report_error

    args = argument_parser().parse_args(argv)
    args.config_file = _shipped_config(args.config_file)
    try:
        # the config alone, before any worker process starts
        (check_lazy_launch if is_lazy_config(args.config_file) else check_launch)(args)
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except LTDetError as e:  # bad input (exit 2) or a signal stop (exit 128 + signal)
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
