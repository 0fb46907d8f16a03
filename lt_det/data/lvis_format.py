"""Register any LVIS-format dataset (json + image folder) under a user-chosen name.

Layout expected::

    <json_file>      LVIS-format json with "images", "annotations", "categories"
    <image_root>/    the images; an image's path is image_root/file_name when the image record
                     has "file_name", else image_root/<split folder>/<file> taken from the last two
                     parts of its "coco_url" (real LVIS v1: image_root = "coco/")

Category ids may be any distinct positive integers; they are mapped to detectron2's contiguous ids
``0..K-1`` in increasing id order (the background class is ``K``).

Metadata set on ``MetadataCatalog.get(name)`` (what lt_det's heads, samplers and evaluator read):
``json_file``, ``image_root``, ``evaluator_type="lvis"``, ``thing_classes``,
``thing_dataset_id_to_contiguous_id``, ``class_image_count`` (list of ``{"id", "image_count"}``,
contiguous order), ``class_instance_count`` (list of int), ``class_frequency`` (list of
"r"/"c"/"f") and ``num_images``, all from :func:`lt_det.class_stats.class_stats_from_lvis_json`:
the json's own category counts when every category has them, else counted from its annotations
(crowd annotations excluded).
"""
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..class_stats import class_stats_from_lvis_json, class_stats_to_metadata
from ..errors import LTDetError
from ..lvis_json import check_json_sections, check_lvis_records

__all__ = [
    "register_lvis_format",
    "load_lvis_format_json",
    "read_lvis_json",
    "register_datasets_from_cfg",
]

logger = logging.getLogger(__name__)

_LAYOUT = (
    "Expected an LVIS-format json with keys 'images', 'annotations', 'categories' and an image "
    "folder holding the files its images name (see lt_det/data/lvis_format.py)."
)


def read_lvis_json(json_file: str) -> Dict[str, Any]:
    """Read an LVIS-format json and check it (:func:`lt_det.lvis_json.check_lvis_records`: the
    rules the evaluators apply to the same file, ids included).

    Raises:
        LTDetError: naming the file (and the record) for a missing file, invalid JSON, missing
            keys, or a record that breaks a rule.
    """
    if not os.path.isfile(json_file):
        raise LTDetError(f"LVIS-format json not found: '{json_file}'. {_LAYOUT}")
    try:
        with open(json_file, "rb") as f:  # JSON is UTF-8, whatever the locale
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        if isinstance(e, UnicodeDecodeError):
            raise LTDetError(
                f"'{json_file}' is not UTF-8 text ({e.reason} at byte {e.start}); JSON files are "
                "UTF-8. Re-save it as UTF-8."
            ) from None
        raise LTDetError(
            f"'{json_file}' is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}). "
            "Regenerate or repair the file."
        ) from None
    check_json_sections(data, json_file, hint=f" {_LAYOUT}")
    check_lvis_records(data, json_file)  # the rules evaluation applies too
    return data


def _image_path(image_root: str, img: Dict[str, Any]) -> str:
    if "file_name" in img:
        return os.path.join(image_root, img["file_name"])
    if "coco_url" in img:
        split_folder, file_name = img["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_folder, file_name)
    raise LTDetError(f"image id {img.get('id')} has neither 'file_name' nor 'coco_url'.")


def load_lvis_format_json(
    json_file: str, image_root: str, dataset_name: Optional[str] = None
) -> List[Dict[str, Any]]:
    """Load an LVIS-format json as detectron2 dataset dicts (contiguous category ids).

    Raises :class:`LTDetError` naming the file and the offending record on malformed input.
    """
    if not os.path.isdir(image_root):
        raise LTDetError(f"image folder not found: '{image_root}' (for '{json_file}'). {_LAYOUT}")
    data = read_lvis_json(json_file)
    id_map = {cid: i for i, cid in enumerate(sorted(c["id"] for c in data["categories"]))}
    anns_of: Dict[Any, List[Dict[str, Any]]] = {}
    for ann in data["annotations"]:
        anns_of.setdefault(ann["image_id"], []).append(ann)

    def contiguous(ids, img_id, key):
        try:
            return [id_map[i] for i in ids]
        except KeyError as e:
            raise LTDetError(
                f"'{json_file}': image {img_id} lists {key} {e.args[0]}, which is not a category."
            ) from None

    dicts = []
    for img in data["images"]:
        record = {
            "file_name": _image_path(image_root, img),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "neg_category_ids": contiguous(img.get("neg_category_ids", []), img["id"], "neg id"),
            "not_exhaustive_category_ids": contiguous(
                img.get("not_exhaustive_category_ids", []), img["id"], "not-exhaustive id"
            ),
        }
        objs = []
        for ann in anns_of.get(img["id"], []):  # checked by read_lvis_json
            obj = {
                "bbox": list(ann["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                # Crowd regions stay in the dicts, flagged: detectron2's DatasetMapper drops
                # them from the training targets, as on its own COCO path.
                "iscrowd": int(ann.get("iscrowd", 0)),
            }
            if "segmentation" in ann:
                obj["segmentation"] = ann["segmentation"]
            objs.append(obj)
        record["annotations"] = objs
        dicts.append(record)
    if dataset_name is not None:
        logger.info(f"Loaded {len(dicts)} images from '{json_file}' as '{dataset_name}'.")
    return dicts


def _missing_images(data: Dict[str, Any], image_root: str) -> Tuple[int, Optional[str]]:
    """(how many images of the json are not files under ``image_root``, a description of the
    first one); one stat per image (about a second for LVIS's 100k)."""
    missing = [img for img in data["images"] if not os.path.isfile(_image_path(image_root, img))]
    if not missing:
        return 0, None
    first = missing[0]
    return len(missing), f"image id {first.get('id')}: '{_image_path(image_root, first)}'"


def register_lvis_format(name: str, json_file: str, image_root: str) -> None:
    """Register an LVIS-format dataset under ``name`` (lazily loaded; metadata set now).

    Args:
        name: the name to use in ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
        json_file: path of the LVIS-format json.
        image_root: folder holding the images.
    """
    if not os.path.isfile(json_file):
        raise LTDetError(f"dataset '{name}': json not found: '{json_file}'. {_LAYOUT}")
    if not os.path.isdir(image_root):
        raise LTDetError(f"dataset '{name}': image folder not found: '{image_root}'. {_LAYOUT}")
    data = read_lvis_json(json_file)
    ids, stats, groups = class_stats_from_lvis_json(data)
    names = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    # Mask R-CNN needs a mask for every object it trains on or scores (checked in setup_cfg).
    no_segm = [a["id"] for a in data["annotations"] if "segmentation" not in a]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: load_lvis_format_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="lvis",
        thing_classes=[names[i] for i in ids],
        thing_dataset_id_to_contiguous_id={cid: i for i, cid in enumerate(ids)},
        class_frequency=groups,
        annotations_without_segmentation=(len(no_segm), no_segm[0] if no_segm else None),
        # (count, first) of the images that are not in image_root (checked in setup_cfg for the
        # datasets a run reads: registering for statistics alone needs no images).
        missing_images=_missing_images(data, image_root),
        **class_stats_to_metadata(ids, stats),
    )


def register_datasets_from_cfg(cfg) -> List[str]:
    """Register every ``[name, json_file, image_root]`` entry of ``cfg.DATASETS.LVIS_FORMAT``."""
    names = []
    for entry in cfg.DATASETS.LVIS_FORMAT:
        if len(entry) != 3:
            raise LTDetError(
                f"DATASETS.LVIS_FORMAT entries are [name, json_file, image_root]; got {entry}."
            )
        register_lvis_format(*entry)
        names.append(entry[0])
    return names
