"""Register your own LVIS-format dataset (json + image folder) in code, and use it from a config.

Writes a four-image LVIS-format dataset (two classes) into a folder, registers it under a name,
prints what lt_det reads from it (classes, training image counts, r/c/f groups) and points a
config at it. Pass your own json and image folder to register those instead:

    python examples/register_dataset.py --out output/toy_dataset   # writes the toy set there
    python examples/register_dataset.py --json data/train.json --images data/images
"""
import argparse
import json
import os
import tempfile
import warnings

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from lt_det import add_lt_config  # noqa: E402
from lt_det.data import register_lvis_format  # noqa: E402
from lt_det.engine import check_num_classes  # noqa: E402


def write_toy_dataset(folder: str) -> str:
    """Four 64 x 64 images: a red square in three of them (class 1), a blue one in one (class 2).

    Returns the json path; the images are folder/images/*.png.
    """
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    images, annotations = [], []
    for i, classes in enumerate([[1], [1], [1, 2], []], start=1):
        img = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(img)
        for c in classes:
            x = 8 if c == 1 else 36
            draw.rectangle([x, 8, x + 20, 28], fill="red" if c == 1 else "blue")
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": [x, 8, 20, 20],
                    "area": 400.0,
                }
            )
        img.save(os.path.join(folder, "images", f"{i:04d}.png"))
        images.append(
            {
                "id": i,
                "file_name": f"{i:04d}.png",
                "width": 64,
                "height": 64,
                # LVIS: classes verified absent (negative) / not exhaustively annotated in the image
                "neg_category_ids": [2] if 2 not in classes else [],
                "not_exhaustive_category_ids": [],
            }
        )
    categories = [{"id": 1, "name": "red_square"}, {"id": 2, "name": "blue_square"}]
    path = os.path.join(folder, "train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="your LVIS-format json (default: write the toy set)")
    p.add_argument("--images", help="folder of the images the json names")
    p.add_argument("--out", help="folder for the toy set (default: a new temporary folder)")
    args = p.parse_args(argv)
    if args.json:
        json_file, image_root = args.json, args.images
    else:
        folder = args.out or tempfile.mkdtemp(prefix="lt_det_example_")
        print(f"writing a toy LVIS-format dataset into {folder}")
        json_file, image_root = write_toy_dataset(folder), os.path.join(folder, "images")

    # In code: one call per dataset.
    register_lvis_format("my_train", json_file, image_root)
    meta = MetadataCatalog.get("my_train")
    print(f"classes: {meta.thing_classes}")
    print(f"training images per class: {[c['image_count'] for c in meta.class_image_count]}")
    print(f"frequency groups: {meta.class_frequency}")
    print(f"{len(DatasetCatalog.get('my_train'))} images, {meta.num_images} in the json")

    # From a config: the same registration through DATASETS.LVIS_FORMAT (tools/train_net.py
    # registers these entries itself); NUM_CLASSES must equal the number of categories.
    cfg = add_lt_config(get_cfg())
    cfg.DATASETS.LVIS_FORMAT = [["my_train", json_file, image_root]]
    cfg.DATASETS.TRAIN = ("my_train",)
    cfg.DATASETS.TEST = ()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(meta.thing_classes)
    check_num_classes(cfg)
    print("config: DATASETS.LVIS_FORMAT =", cfg.DATASETS.LVIS_FORMAT)


if __name__ == "__main__":
    main()
