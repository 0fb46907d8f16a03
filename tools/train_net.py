#!/usr/bin/env python
"""Train or evaluate a detectron2 model with lt_det's heads, samplers, decoupling and LVIS evaluation.

    python tools/train_net.py --config-file configs/lvis_balanced.yaml   # stage 1 RFS, then cRT
    python tools/train_net.py --config-file configs/synthetic/softmax.yaml MODEL.DEVICE cpu
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS out/model_final.pth
    python tools/train_net.py --config-file CFG --num-gpus 8            # one process per GPU
    python tools/train_net.py --config-file CFG --num-gpus 2 MODEL.DEVICE cpu  # 2 CPU processes, gloo
    python tools/train_net.py --config-file CFG --resume           # continue the run in OUTPUT_DIR
    python tools/train_net.py --config-file configs/lazy/lvis_rfs.py train.device=cpu  # LazyConfig

The program is :mod:`lt_det.tools.train_net` (also ``lt-train-net`` and
``python -m lt_det.tools.train_net`` from an installed package); this file runs it from a
checkout. Without a GPU add ``MODEL.DEVICE cpu`` (the LVIS configs default to CUDA). Outputs: see
--help. Bad input is reported as one line "lt_det: error: ..." on stderr with exit status 2.
"""
import sys

from lt_det.tools.train_net import argument_parser, cli, main, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(cli())
