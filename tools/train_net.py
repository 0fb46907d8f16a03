#!/usr/bin/env python
"""Train or evaluate a detectron2 model with lt_det's heads, samplers, decoupling and LVIS evaluation.

    python tools/train_net.py --config-file configs/lvis_balanced.yaml
    python tools/train_net.py --config-file configs/synthetic/softmax.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu  # 2 CPU processes, gloo
    python tools/train_net.py --config-file CFG --resume           # continue the run in OUTPUT_DIR

Bad input (a missing file, a malformed dataset, an unknown config value, a NaN loss, ...) is
reported as one line "lt_det: error: ..." on stderr with exit status 2; see docs/robustness.md.
An OUTPUT_DIR that already holds a run is not overwritten unless --resume or --overwrite-output.
"""
import json
import os
import sys
import warnings

# This program's choice (the library sets no filter): detectron2 0.6 scripts helpers with
# torch.jit at import time, which recent torch reports on every start; it is not the user's code.
warnings.filterwarnings(
    "ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning
)

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402
from detectron2.evaluation import verify_results  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from lt_det.engine import LTTrainer, launch, setup_cfg  # noqa: E402
from lt_det.engine.trainer import check_weights_file  # noqa: E402
from lt_det.errors import LTDetError, report_error  # noqa: E402


def save_results(cfg, results) -> None:
    """Write the final evaluation results to OUTPUT_DIR/eval_results.json (main process)."""
    if results and comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--overwrite-output``."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite-output",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that already holds one (its checkpoints are "
        "replaced); without it such a folder is refused unless --resume is given",
    )
    return parser


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        if not args.resume:
            check_weights_file(cfg.MODEL.WEIGHTS)
        model = LTTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = LTTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        save_results(cfg, res)
        return res
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    res = trainer.train()
    save_results(cfg, getattr(trainer, "_last_eval_results", None))
    return res


if __name__ == "__main__":
    args = argument_parser().parse_args()
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except LTDetError as e:
        sys.exit(report_error(e))
