"""Predict on single images and draw the predictions (what ``tools/predict.py`` runs).

:class:`LTPredictor` is detectron2's ``DefaultPredictor`` (one BGR image in, one ``Instances``
out; resizing by ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``; ``INPUT.FORMAT`` honoured) with the
model built and loaded the way ``tools/train_net.py --eval-only`` does: ``LTTrainer.build_model``
(stage-2 classifiers of ``MODEL.DECOUPLE.METHOD``; the class prior read from the checkpoint when it
holds one) and :class:`~lt_det.checkpoint.LTCheckpointer` with ``must_load="all"``, so a
checkpoint of another architecture or class count is refused instead of leaving layers random.

Drawing is detectron2's ``Visualizer`` (boxes, masks, "class score%" labels) at the image's own
size. Everything a run reads is checked before anything is written: :func:`list_images` (the
inputs) and :func:`output_paths` (no output replaces a file unless asked, never an input).
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image, UnidentifiedImageError

from ..errors import LTDetError
from ..checkpoint import LTCheckpointer
from .defaults import eval_only_config
from .trainer import LTTrainer

__all__ = [
    "LTPredictor",
    "IMAGE_EXTENSIONS",
    "list_images",
    "output_paths",
    "draw_predictions",
    "metadata_for_drawing",
]

#: File endings :func:`list_images` takes from a folder (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class LTPredictor(DefaultPredictor):
    """detectron2's ``DefaultPredictor`` with lt_det's model building and checkpoint load.

    ``predictor(image)`` takes an (H, W, 3) uint8 BGR array and returns detectron2's output dict
    for it (``{"instances": Instances}`` in the image's own pixel coordinates); inherited.

    Attributes:
        cfg: a copy of the config.
        model: the model, in eval mode.
        metadata: ``MetadataCatalog`` entry of ``DATASETS.TEST[0]`` (None when TEST is empty).
        aug / input_format: the test-time resizing and the channel order the model expects.
    """

    def __init__(self, cfg):
        """
        Args:
            cfg: a loaded config whose ``MODEL.WEIGHTS`` names the checkpoint to predict with
                and whose datasets are registered.

        Raises:
            LTDetError: the checkpoint is missing, unreadable or lacks parameters of the model.
        """
        # DefaultPredictor.__init__ is not called: it builds detectron2's plain model and loads
        # it with DetectionCheckpointer, which lets a mismatched checkpoint through. The
        # attributes set here are the ones DefaultPredictor.__call__ reads.
        self.cfg = cfg.clone()
        self.model = LTTrainer.build_model(eval_only_config(self.cfg))
        self.model.eval()
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None
        LTCheckpointer(self.model, must_load="all").load(cfg.MODEL.WEIGHTS)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise LTDetError(f"INPUT.FORMAT is {self.input_format!r}; it must be 'RGB' or 'BGR'.")


def _check_image(path: str) -> None:
    try:
        with Image.open(path):  # reads the header only
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise LTDetError(
            f"--input '{path}' is not an image PIL can read ({type(e).__name__}). Remove it or "
            "pass the image files themselves."
        ) from None


def list_images(inputs: Sequence[str]) -> List[str]:
    """The image files to predict on, in the order given; a folder gives its files ending in one
    of :data:`IMAGE_EXTENSIONS`, sorted by name (not its subfolders).

    Raises:
        LTDetError: no input; a path that does not exist; a folder without images; a file PIL
            cannot open as an image.
    """
    if not inputs:
        raise LTDetError("no --input given; pass image files and/or folders of images.")
    images = []
    for path in inputs:
        if os.path.isdir(path):
            found = sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(path, name))
            )
            if not found:
                raise LTDetError(
                    f"--input folder '{path}' holds no image (files ending in "
                    f"{', '.join(IMAGE_EXTENSIONS)})."
                )
            images += found
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise LTDetError(
                f"--input '{path}' does not exist (relative paths are taken from the current "
                f"directory, '{os.getcwd()}')."
            )
    for path in images:
        _check_image(path)
    return images


def output_paths(images: Sequence[str], output_dir: str, *, force: bool = False) -> Dict[str, str]:
    """{input image: drawn image to write}: ``output_dir/<the input's file name>``.

    Raises:
        LTDetError: ``output_dir`` is a file; two inputs share a file name; an output would be an
            input itself (even with ``force``); an output exists and ``force`` is False. Nothing
            is written.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise LTDetError(f"--output '{output_dir}' is a file; --output is the folder to write to.")
    out: Dict[str, str] = {}
    seen: Dict[str, str] = {}
    for path in images:
        name = os.path.basename(path)
        if name in seen:
            raise LTDetError(
                f"--input '{seen[name]}' and '{path}' have the same file name, so their drawings "
                f"would both be '{os.path.join(output_dir, name)}'. Predict on them in two runs "
                "with two --output folders."
            )
        seen[name] = path
        target = os.path.join(output_dir, name)
        if os.path.exists(target):
            if os.path.samefile(target, path):
                raise LTDetError(
                    f"--output '{output_dir}' is the folder of the input '{path}', whose drawing "
                    "would replace it. Choose another --output folder."
                )
            if not force:
                raise LTDetError(
                    f"'{target}' already exists; nothing was written. Choose another --output "
                    "folder, or pass --force to replace the drawings there."
                )
        out[path] = target
    return out


def draw_predictions(image_rgb: np.ndarray, instances, metadata=None) -> np.ndarray:
    """Draw ``instances`` on the image with detectron2's ``Visualizer``.

    Args:
        image_rgb: (H, W, 3) uint8, RGB.
        instances: detectron2 ``Instances`` in the image's pixel coordinates (``pred_boxes``,
            ``scores``, ``pred_classes``, ``pred_masks`` when the model predicts masks).
        metadata: detectron2 ``Metadata`` with ``thing_classes`` (the label text); None =
            class indices only.

    Returns:
        (H, W, 3) uint8 RGB: the image with boxes, masks and "class score%" labels.
    """
    visualizer = Visualizer(image_rgb, metadata, scale=1.0, instance_mode=ColorMode.IMAGE)
    return visualizer.draw_instance_predictions(instances.to("cpu")).get_image()


def metadata_for_drawing(cfg, dataset_name: Optional[str] = None):
    """The ``MetadataCatalog`` entry whose ``thing_classes`` name the model's classes:
    ``dataset_name``, else ``DATASETS.TEST[0]``, else ``DATASETS.TRAIN[0]``.

    Raises:
        LTDetError: no dataset named, or its class count is not ``MODEL.ROI_HEADS.NUM_CLASSES``.
    """
    names = [dataset_name] if dataset_name else list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    if not names:
        raise LTDetError(
            "the config names no dataset (DATASETS.TEST and DATASETS.TRAIN are empty), so the "
            "class names are unknown. Set DATASETS.TEST to the dataset the model was trained for."
        )
    meta = MetadataCatalog.get(names[0])
    classes = meta.get("thing_classes", None)
    if classes is None:
        raise LTDetError(
            f"dataset '{names[0]}' has no class names (thing_classes): it is not registered. "
            "Add [name, json_file, image_root] to DATASETS.LVIS_FORMAT, or use one of "
            "detectron2's builtin names (e.g. lvis_v1_val)."
        )
    k = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if len(classes) != k:
        raise LTDetError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {k} but dataset '{names[0]}' has {len(classes)} "
            f"classes; the model and the class names would not match. Set "
            f"MODEL.ROI_HEADS.NUM_CLASSES {len(classes)} (after --opts) if the model was trained "
            "on it, else name the dataset the model was trained for (DATASETS.TEST)."
        )
    return meta
