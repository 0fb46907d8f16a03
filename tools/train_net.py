#!/usr/bin/env python
"""Train or evaluate a detectron2 model with lt_det's heads, samplers, decoupling and LVIS evaluation.

    python tools/train_net.py --config-file configs/lvis_balanced.yaml
    python tools/train_net.py --config-file configs/synthetic/softmax.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu  # 2 CPU processes, gloo
"""
import sys

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from lt_det.engine import LTTrainer, launch, setup_cfg
from lt_det.errors import LTDetError


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
        return res
    trainer = LTTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


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
