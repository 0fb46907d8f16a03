"""Every yaml under configs/ builds its model on CPU and takes one training step on generated data.

LVIS-size configs keep their architecture (R50-FPN Mask R-CNN, Cascade, ...) but run on the tiny
synthetic set: NUM_CLASSES follows the data, images are 64 px, no pretrained weights are fetched.
"""
import glob
import math
import os

import pytest
from detectron2.utils.events import EventStorage

from lt_det.engine import LTTrainer, load_config

from conftest import tiny_data_opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_builds_and_trains_one_step(path, tiny_lvis, tmp_path):
    opts = tiny_data_opts(tiny_lvis) + [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path),
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    ]
    cfg = load_config(path, opts)
    if cfg.MODEL.DECOUPLE.METHOD == "tau_norm":  # nothing to train: build the model only
        model = LTTrainer.build_model(cfg)
        assert model.roi_heads.box_predictor.cls_score.weight.shape[0] == cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
        return
    trainer = LTTrainer(cfg)
    with EventStorage(0) as storage:
        trainer.storage = storage
        trainer.iter = 0
        trainer.run_step()
        losses = {k: v.latest()
                  for k, v in storage.histories().items() if "loss" in k}
    assert losses, "no loss was logged"
    assert all(math.isfinite(v) for v in losses.values()), losses
