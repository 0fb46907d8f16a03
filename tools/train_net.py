#!/usr/bin/env python
"""Train or evaluate a detectron2 model with lt_det's heads, samplers, decoupling and LVIS evaluation.

    python tools/train_net.py --config-file configs/lvis_balanced.yaml
    python tools/train_net.py --config-file configs/synthetic/softmax.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu  # 2 CPU processes, gloo
"""
import json
import os
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from lt_det.engine import LTTrainer, launch, setup_cfg
from lt_det.errors import LTDetError


def save_results(cfg, results) -> None:
    """Write the final evaluation results to OUTPUT_DIR/eval_results.json (main process)."""
    if results and comm.is_main_process():
        with open(os.path.join(cfg.OUTPUT_DIR, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
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
    args = default_argument_parser().parse_args()
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
        print(f"lt_det: error: {e}", file=sys.stderr)
        sys.exit(2)
