"""Turn a COCO-format instances json into an LVIS-format one (what ``tools/coco_to_lvis.py`` runs).

LVIS adds to COCO's format what a dataset that is *not* exhaustively labelled needs
(Gupta et al. 2019, "LVIS", Sec. 3 and 5; the fields lvis-api's ``LVISEval`` reads):

- per image ``neg_category_ids``: categories verified absent from the image (a detection of one
  there is a false positive), and ``not_exhaustive_category_ids``: categories present in the
  image but not all of whose instances are labelled (a detection of one there that matches no
  labelled instance is ignored);
- per category ``image_count`` / ``instance_count`` (training-set counts) and ``frequency``
  ("r" / "c" / "f"), which give APr / APc / APf.

What the COCO labels imply (the assumption this conversion rests on): COCO labels every instance
of every category in every image, so

- every category with no annotation in an image is a verified negative there
  (``neg_category_ids`` = all categories minus those annotated in the image, crowd included);
- ``not_exhaustive_category_ids`` lists the categories that have a crowd region (``iscrowd`` 1)
  in the image: a crowd region marks instances that are present but not labelled one by one,
  which is LVIS's definition of "not exhaustive" (COCO's own evaluation likewise ignores
  detections that fall on a crowd region). An image without crowd regions gets an empty list.

A dataset that was *not* labelled exhaustively (some classes left out of some images) must not be
converted this way: its unlabelled objects would become verified negatives and their detections
false positives. Give such data its own ``neg_category_ids`` / ``not_exhaustive_category_ids``.

Counts follow :mod:`lt_det.class_stats` (the one place that counts classes): crowd annotations
are not instances, ``image_count`` is the number of images with at least one non-crowd instance,
and ``frequency`` is LVIS's rule on it (r <= 10 < c <= 100 < f). A validation json converted on
its own gets its own counts; ``train_categories`` (``--counts-from`` in the tool) copies the
training set's instead, as LVIS's validation json carries the training counts.

Pure Python (no torch, no detectron2): the tool starts in well under a second.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from .class_stats import class_stats_from_lvis_json
from .errors import LTDetError
from .files import open_temporary
from .evaluation._json import load_json
from .lvis_json import check_json_sections, check_lvis_records

__all__ = ["coco_to_lvis", "convert_coco_json", "read_coco_json", "LVIS_IMAGE_KEYS"]

#: The per-image keys LVIS adds to COCO's image records.
LVIS_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def read_coco_json(path: str) -> Dict[str, Any]:
    """Read a COCO-format instances json and check it by the rules of :mod:`lt_det.lvis_json`
    (the rules every lt_det path applies), plus what the conversion needs: every annotation has
    an ``area``, every image a ``file_name`` (or ``coco_url``), every category a ``name``, and no
    image carries LVIS's own ``neg_category_ids`` / ``not_exhaustive_category_ids`` already.

    Raises:
        LTDetError: naming the file, the record and the key.
    """
    if not os.path.isfile(path):
        raise LTDetError(f"COCO json not found: '{path}'.")
    data = load_json(path, "COCO json")
    check_json_sections(
        data, path, kind="a COCO instances json",
        hint=" (A results list or a panoptic json is not one.)",
    )
    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            raise LTDetError(f"'{path}': '{key}' is a {type(data[key]).__name__}, not a list.")
    check_lvis_records(data, path)
    for cat in data["categories"]:
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            raise LTDetError(
                f"'{path}': category {cat['id']} has no 'name'; every category needs one (the "
                "class name of the metadata, the evaluation reports and the drawn predictions)."
            )
    for img in data["images"]:
        if "file_name" not in img and "coco_url" not in img:
            raise LTDetError(
                f"'{path}': image {img['id']} has no 'file_name'; it is the image's path under "
                "the image folder. Add it."
            )
        present = [k for k in LVIS_IMAGE_KEYS if k in img]
        if present:
            raise LTDetError(
                f"'{path}': image {img['id']} already has {present}: the file is LVIS-format "
                "already (its negatives would be replaced by ones derived from the labels). "
                "Register it directly (DATASETS.LVIS_FORMAT), or remove those keys first."
            )
    for ann in data["annotations"]:
        if "area" not in ann:
            raise LTDetError(
                f"'{path}': annotation {ann['id']} (image {ann['image_id']}) has no 'area'; COCO "
                "annotations carry the object's area in pixels (the mask's area; w * h of the box "
                "for box-only data), which evaluation needs for its size ranges. Add it."
            )
    return data


def coco_to_lvis(
    coco: Mapping[str, Any],
    *,
    train_categories: Optional[Sequence[Mapping[str, Any]]] = None,
    source: str = "<COCO dict>",
    train_source: str = "the training json",
) -> Dict[str, Any]:
    """The LVIS-format version of a (checked, see :func:`read_coco_json`) COCO instances dict.

    Args:
        coco: ``images``, ``annotations``, ``categories`` (other top-level keys, e.g. ``info``,
            ``licenses``, are kept). Not modified.
        train_categories: the categories of the training set's LVIS-format json (with
            ``image_count``, ``instance_count``, ``frequency``); their counts and groups are
            copied instead of counting ``coco``'s own annotations. None = count ``coco``.
        source: the file name used in messages.
        train_source: the file ``train_categories`` came from, for messages.

    Returns:
        A new dict: every image record with ``neg_category_ids`` (sorted ids of the categories
        not annotated in it) and ``not_exhaustive_category_ids`` (sorted ids of the categories
        with a crowd region in it); the annotations unchanged; categories sorted by id, each with
        ``image_count``, ``instance_count`` (crowd excluded) and ``frequency`` (r/c/f).

    Raises:
        LTDetError: ``train_categories`` lack counts or do not have the same ids as ``coco``.
    """
    cat_ids = sorted(c["id"] for c in coco["categories"])
    annotated: Dict[Any, set] = {}
    crowd: Dict[Any, set] = {}
    for ann in coco["annotations"]:
        annotated.setdefault(ann["image_id"], set()).add(ann["category_id"])
        if ann.get("iscrowd", 0):
            crowd.setdefault(ann["image_id"], set()).add(ann["category_id"])
    images = []
    for img in coco["images"]:
        present = annotated.get(img["id"], set())
        record = dict(img)
        record["neg_category_ids"] = [c for c in cat_ids if c not in present]
        record["not_exhaustive_category_ids"] = sorted(crowd.get(img["id"], ()))
        images.append(record)

    if train_categories is None:
        ids, stats, _ = class_stats_from_lvis_json(coco, declared=False)
        counts = {
            i: (n_img, n_inst, group)
            for i, n_img, n_inst, group in zip(
                ids, stats.image_counts, stats.instance_counts, stats.frequency
            )
        }
    else:
        counts = _train_counts(train_categories, cat_ids, source, train_source)
    categories = []
    for cat in sorted(coco["categories"], key=lambda c: c["id"]):
        n_img, n_inst, group = counts[cat["id"]]
        categories.append(
            dict(cat, image_count=n_img, instance_count=n_inst, frequency=group)
        )
    out = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=list(coco["annotations"]), categories=categories)
    return out


def _train_counts(
    train_categories: Sequence[Mapping[str, Any]],
    cat_ids: List[int],
    source: str,
    train_source: str = "the training json",
) -> Dict[int, tuple]:
    """{category id: (image_count, instance_count, frequency)} of the training set's categories."""
    if not all(
        isinstance(c, dict) and "id" in c and "image_count" in c and "instance_count" in c
        for c in train_categories
    ):
        raise LTDetError(
            f"the categories of {train_source} lack 'image_count' / 'instance_count' (a COCO "
            "json, not one this tool wrote?); pass the LVIS-format json this tool wrote for the "
            "training set."
        )
    ids, stats, groups = class_stats_from_lvis_json({"categories": list(train_categories)})
    if ids != cat_ids:
        only_train = sorted(set(ids) - set(cat_ids))[:5]
        only_here = sorted(set(cat_ids) - set(ids))[:5]
        raise LTDetError(
            f"'{source}' and {train_source} have different category ids (only in "
            f"{train_source}: {only_train}, only in '{source}': {only_here}); both splits must "
            "use the same categories."
        )
    return {
        i: (n_img, n_inst, group)
        for i, n_img, n_inst, group in zip(ids, stats.image_counts, stats.instance_counts, groups)
    }


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(b) and os.path.samefile(a, b)


def convert_coco_json(
    coco_json: str,
    output: str,
    *,
    force: bool = False,
    counts_from: Optional[str] = None,
) -> Dict[str, Any]:
    """Read ``coco_json``, convert it (:func:`coco_to_lvis`) and write ``output``.

    Everything is checked before anything is written; the file is written to a temporary file
    in the same folder and moved into place, so ``output`` is never left half written.

    Args:
        coco_json: the COCO instances json.
        output: the LVIS-format json to write (its folder is created).
        force: replace an existing ``output`` (never ``coco_json`` itself).
        counts_from: an LVIS-format json (the converted training set) whose categories' counts
            and groups the output takes (for a validation split).

    Returns:
        The LVIS-format dict written.

    Raises:
        LTDetError: ``output`` exists (without ``force``) or is ``coco_json``; an input is
            missing or malformed (naming the file, the record and the key).
    """
    if not os.path.isfile(coco_json):
        raise LTDetError(f"COCO json not found: '{coco_json}'.")
    if os.path.isdir(output):
        raise LTDetError(f"--output '{output}' is a folder; give the path of the json to write.")
    if _same_file(coco_json, output):
        raise LTDetError(
            f"--output '{output}' is the input COCO json; write the LVIS-format json to another "
            "file (the input stays as it is)."
        )
    if os.path.exists(output) and not force:
        raise LTDetError(
            f"--output '{output}' already exists; nothing was written. Choose another path, or "
            "pass --force to replace it."
        )
    coco = read_coco_json(coco_json)
    train_categories = None
    if counts_from is not None:
        if not os.path.isfile(counts_from):
            raise LTDetError(f"--counts-from json not found: '{counts_from}'.")
        train = load_json(counts_from, "training json")
        if not isinstance(train, dict) or not isinstance(train.get("categories"), list):
            raise LTDetError(
                f"'{counts_from}' has no 'categories' list; --counts-from takes the LVIS-format "
                "json this tool wrote for the training set."
            )
        train_categories = train["categories"]
    lvis = coco_to_lvis(coco, train_categories=train_categories, source=coco_json,
                        train_source=f"'{counts_from}'")
    check_lvis_records(lvis, output)  # what every lt_det path will apply to the file
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    tmp = None
    try:
        f, tmp = open_temporary(output, binary=False)  # mode 0o666 less the umask
        with f:
            json.dump(lvis, f)
        os.replace(tmp, output)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        raise LTDetError(f"cannot write '{output}' ({os.strerror(e.errno or 0)}).") from None
    return lvis
