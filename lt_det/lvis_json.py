"""The rules every LVIS-format json must follow, checked once for every path that reads one.

Training (``lt_det.data.register_lvis_format`` / ``load_lvis_format_json``) and evaluation
(``lt_det.evaluation.LVISGroundTruth``) call :func:`check_lvis_records`, so a file is either
accepted by both or refused by both with the same message (file, record, key, value and what to
do). Plain Python (no torch), so the offline evaluator can use it.

Rules:
    - image ids and annotation ids are integers, unique within their list; images have positive
      ``height`` and ``width``;
    - an annotation's ``image_id`` is the (integer) id of an image of the file;
    - an annotation's ``category_id`` is the id of a category of the file;
    - ``bbox`` is ``[x, y, width, height]`` with finite numbers and width, height >= 0;
    - ``segmentation``, when present, is a list of polygons with at least 3 points each
      (an even number >= 6 of coordinates) or an RLE dict (``size``, ``counts``); detectron2's
      own LVIS loader refuses polygons with fewer points too;
    - ``iscrowd``, when present, is 0 or 1. Crowd regions (``iscrowd`` 1) are not objects: the
      training mapper drops them from the targets and evaluation leaves them out of the ground
      truth (docs/robustness.md).
"""
import math
from typing import Any, Dict

from .errors import LTDetError

__all__ = ["check_lvis_records"]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_segmentation(segm: Any, where: str) -> None:
    if isinstance(segm, dict):
        if "size" not in segm or "counts" not in segm:
            raise LTDetError(
                f"{where} has a 'segmentation' dict without 'size' and 'counts'; masks are "
                "polygons (lists of x, y coordinates) or RLE dicts. Fix or drop the annotation."
            )
        return
    if not isinstance(segm, list) or not segm:
        raise LTDetError(
            f"{where} has 'segmentation' {str(segm)[:60]}, which holds no polygon; masks are "
            "lists of polygons [[x1, y1, x2, y2, x3, y3, ...], ...] or RLE dicts. Fix the mask or "
            "drop the annotation."
        )
    for poly in segm:
        if (
            not isinstance(poly, list)
            or len(poly) < 6
            or len(poly) % 2
            or not all(_is_number(v) for v in poly)
        ):
            raise LTDetError(
                f"{where} has a polygon with fewer than 3 points or an odd number of coordinates "
                f"({str(poly)[:60]}); every polygon needs >= 3 (x, y) points. Fix the mask or drop "
                "the annotation."
            )


def check_lvis_records(data: Dict[str, Any], source: str) -> None:
    """Check the images and annotations of a loaded LVIS-format json (see the module rules).

    Args:
        data: the loaded json, with lists ``images``, ``annotations``, ``categories``.
        source: the file name used in messages.

    Raises:
        LTDetError: naming ``source``, the record (image / annotation id) and the key.
    """
    image_ids = set()
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if not _is_int(iid):
            raise LTDetError(
                f"'{source}': image record {str(img)[:80]} has id {iid!r}; image ids are integers."
            )
        if iid in image_ids:
            raise LTDetError(
                f"'{source}': image id {iid} appears twice in 'images'; ids must be unique. Remove "
                "or renumber the duplicate."
            )
        image_ids.add(iid)
        for key in ("height", "width"):
            if not (_is_number(img.get(key)) and img.get(key) > 0):
                raise LTDetError(
                    f"'{source}': image {iid} has {key} {img.get(key)!r}; images need positive "
                    "'height' and 'width' (in pixels)."
                )
    cat_ids = {c.get("id") for c in data["categories"]}
    ann_ids = set()
    for n, ann in enumerate(data["annotations"]):
        aid = ann.get("id")
        if not _is_int(aid):
            raise LTDetError(
                f"'{source}': annotation number {n} (0-based) has id {aid!r}; every annotation "
                "needs a unique integer 'id'."
            )
        if aid in ann_ids:
            raise LTDetError(
                f"'{source}': annotation id {aid} appears twice; annotation ids must be unique "
                "(evaluation would silently merge the two). Renumber the duplicate."
            )
        ann_ids.add(aid)
        where = f"'{source}': annotation {aid}"
        img_id = ann.get("image_id")
        if not _is_int(img_id):
            raise LTDetError(
                f"{where} has image_id {img_id!r} ({type(img_id).__name__}); image ids are "
                "integers. Write it as the integer id of its image."
            )
        if img_id not in image_ids:
            raise LTDetError(
                f"{where} has image_id {img_id}, which names no image in 'images'. Add the "
                "image record or drop the annotation."
            )
        if ann.get("category_id") not in cat_ids:
            raise LTDetError(
                f"{where} has category_id {ann.get('category_id')}, which is not in 'categories'."
            )
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise LTDetError(
                f"{where} (image {img_id}) has bbox {box!r}; boxes are [x, y, width, height] "
                "with 4 finite numbers."
            )
        if box[2] < 0 or box[3] < 0:
            raise LTDetError(
                f"{where} (image {img_id}) has a box with negative size {box}; boxes are "
                "[x, y, width, height]. Fix or drop it."
            )
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], where)
        if ann.get("iscrowd", 0) not in (0, 1):
            raise LTDetError(f"{where} has iscrowd {ann.get('iscrowd')!r}; it must be 0 or 1.")
