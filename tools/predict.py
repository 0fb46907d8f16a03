#!/usr/bin/env python
"""Draw a trained model's predictions (boxes, masks, class names and scores) on images.

    python tools/predict.py --config-file configs/own_data.yaml --input photos/ \\
        --output output/drawn --opts MODEL.WEIGHTS output/own_data/model_final.pth
    python tools/predict.py --config-file CFG --input a.jpg b.png --output out \\
        --confidence-threshold 0.3 --opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu

As detectron2's demo/demo.py: each --input image (or every image of an --input folder) goes
through the model of --config-file with MODEL.WEIGHTS (KEY VALUE overrides after --opts, last) and
is written, drawn by detectron2's Visualizer at its own size, to --output/<its file name>.
Detections scoring below --confidence-threshold are not drawn. Class names are those of the
dataset DATASETS.TEST[0] (else DATASETS.TRAIN[0]): an LVIS_FORMAT entry (its json is read) or a
detectron2 builtin name such as lvis_v1_val (needs no files). Without a GPU add MODEL.DEVICE cpu.

Bad input (a missing image, config, weights file or dataset json; an output that would replace a
file) is one line "lt_det: error: ..." on stderr, exit status 2, before anything is written;
existing drawings in --output are replaced only with --force, an input never.
"""
import argparse
import os
import re
import sys
import time
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from detectron2.data.detection_utils import read_image  # noqa: E402
from PIL import Image  # noqa: E402

from lt_det.data import register_datasets_from_cfg  # noqa: E402
from lt_det.engine.defaults import (  # noqa: E402
    check_cascade_box_reg,
    check_cls_loss_heads,
    check_config_values,
    check_dataset_files,
    check_device,
    check_weights_file,
    load_config,
)
from lt_det.engine.predictor import (  # noqa: E402
    LTPredictor,
    draw_predictions,
    list_images,
    metadata_for_drawing,
    output_paths,
)
from lt_det.errors import LTDetError, report_error  # noqa: E402

# A config key such as MODEL.WEIGHTS (what --input swallows when --opts is left out).
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config-file", required=True, metavar="FILE", help="the model's config")
    p.add_argument(
        "--input", nargs="+", required=True, help="image files and/or folders of images"
    )
    p.add_argument("--output", required=True, help="folder to write the drawn images to")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="lowest score drawn, in [0, 1] (default %(default)s, as detectron2's demo; "
        "sets MODEL.ROI_HEADS.SCORE_THRESH_TEST and MODEL.RETINANET.SCORE_THRESH_TEST)",
    )
    p.add_argument("--force", action="store_true", help="replace drawings already in --output")
    p.add_argument(
        "--opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE config overrides, last on the line (as in detectron2's demo), e.g. "
        "--opts MODEL.WEIGHTS model_final.pth MODEL.DEVICE cpu",
    )
    return p


def setup(args):
    """The checked config, the {input: output} paths and the class-name metadata; nothing is
    written. Raises LTDetError."""
    for path in args.input:
        if CONFIG_KEY.match(path) and not os.path.exists(path):
            raise LTDetError(
                f"--input '{path}' does not exist and looks like a config key; KEY VALUE "
                "overrides go last, after --opts (--opts MODEL.WEIGHTS model_final.pth)."
            )
    cfg = load_config(args.config_file, args.opts)
    threshold = args.confidence_threshold
    if not 0.0 <= threshold <= 1.0:
        raise LTDetError(f"--confidence-threshold is {threshold}; it must be in [0, 1].")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = threshold
    check_config_values(cfg)
    check_cls_loss_heads(cfg)
    check_cascade_box_reg(cfg)
    check_device(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise LTDetError(
            "MODEL.WEIGHTS is empty: predict.py draws a trained model's predictions. Add "
            "--opts MODEL.WEIGHTS path/to/model_final.pth (last on the line)."
        )
    check_weights_file(cfg.MODEL.WEIGHTS, trained=True)
    targets = output_paths(list_images(args.input), args.output, force=args.force)
    cfg.freeze()
    check_dataset_files(cfg)
    register_datasets_from_cfg(cfg)
    return cfg, targets, metadata_for_drawing(cfg)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, targets, metadata = setup(args)
        predictor = LTPredictor(cfg)
        os.makedirs(args.output, exist_ok=True)
        for path, target in targets.items():
            try:
                image = read_image(path, format="BGR")  # EXIF orientation applied
            except OSError as e:
                raise LTDetError(
                    f"cannot read the image '{path}' ({e}); the images before it were written to "
                    f"'{args.output}'."
                ) from None
            tic = time.perf_counter()
            instances = predictor(image)["instances"]
            drawn = draw_predictions(image[:, :, ::-1], instances, metadata)
            Image.fromarray(drawn).save(target)
            print(
                f"{path}: {len(instances)} detection(s) scoring above "
                f"{args.confidence_threshold} in {time.perf_counter() - tic:.2f} s -> {target}",
                flush=True,
            )
    except LTDetError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
