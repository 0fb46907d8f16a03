"""The rules every LVIS-format json and every results file must follow, checked once for every
path that reads one.

Training (``lt_det.data.register_lvis_format`` / ``load_lvis_format_json``) and evaluation
(``lt_det.evaluation.LVISGroundTruth``, the detectron2 evaluator, ``tools/lvis_eval.py``) call
:func:`check_lvis_records` on a ground truth and :func:`id_column` on the ids of a results file,
so a file is either accepted by every path or refused by all of them with the same message (file,
record, key, value and what to do). Plain Python and numpy (no torch), so the offline evaluator
can use it.

Ground-truth rules:
    - ``categories`` is a list of records whose ids are unique integers in 1 .. 2**63 - 1
      (detectron2 maps them to contiguous ids; the evaluators hold them as int64);
    - image ids and annotation ids are integers in the int64 range, unique within their list;
      annotation id 0 is refused: lvis-api marks "no match" with id 0, so a ground truth of id 0
      that is matched would still count as missed and its detection as a false positive;
    - images have positive ``height`` and ``width``; their ``neg_category_ids`` and
      ``not_exhaustive_category_ids``, when present, are lists of category ids of the file;
    - an annotation's ``image_id`` is the (integer) id of an image of the file;
    - an annotation's ``category_id`` is the id of a category of the file;
    - ``bbox`` is ``[x, y, width, height]`` with finite numbers and width, height >= 0;
    - ``area``, when present, is a finite number >= 0 (0 is allowed: evaluation leaves such
      ground truth out, as lvis-api does);
    - ``segmentation``, when present, is a list of polygons with at least 3 points each
      (an even number >= 6 of coordinates) or an RLE dict (``size``, ``counts``); detectron2's
      own LVIS loader refuses polygons with fewer points too;
    - ``iscrowd``, when present, is the number 0 or 1 (not ``true`` / ``false``). Crowd regions
      (``iscrowd`` 1) are not objects: the training mapper drops them from the targets and
      evaluation leaves them out of the ground truth (docs/robustness.md).

Results rules (:func:`id_column`): ``image_id`` and ``category_id`` are JSON numbers holding an
integer in the int64 range (1 and 1.0 are the same id, as in lvis-api's dict lookups); strings
("1", "000001", "img_1"), booleans, fractions (1.5, 2.7), null and lists are refused. lvis-api
refuses such an ``image_id`` (no image has it) and drops such a ``category_id`` without a word;
lt_det refuses both, naming the file, the field and the value.
"""
import math
import json
from itertools import chain, repeat
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .errors import LTDetError

__all__ = [
    "check_json_sections",
    "check_lvis_records",
    "id_column",
    "json_shown",
    "json_text",
    "INT64_MAX",
    "INT64_MIN",
]

#: The largest / smallest id the evaluators can hold (numpy int64).
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int64(x: Any) -> bool:
    return _is_int(x) and INT64_MIN <= x <= INT64_MAX


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


def _check_categories(categories: Any, source: str) -> set:
    if not isinstance(categories, list):
        raise LTDetError(
            f"'{source}': 'categories' is a {type(categories).__name__}; it must be a list of "
            "category records {'id': ..., 'name': ...}."
        )
    cat_ids = set()
    for cat in categories:
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not (_is_int(cid) and 1 <= cid <= INT64_MAX):
            raise LTDetError(
                f"'{source}': category record {str(cat)[:80]} has id {cid!r}; category ids are "
                f"integers from 1 to 2**63 - 1 ({INT64_MAX}). Renumber the category (and its "
                "annotations)."
            )
        if cid in cat_ids:
            raise LTDetError(
                f"'{source}': category id {cid} appears twice in 'categories'; category ids must "
                "be unique (lvis-api would keep one record and score both classes' detections "
                "as that one). Remove or renumber the duplicate."
            )
        cat_ids.add(cid)
    return cat_ids


SECTIONS = ("images", "annotations", "categories")


def check_json_sections(
    data: Any, source: str, *, kind: str = "an LVIS-format json", hint: str = ""
) -> None:
    """``data`` (a parsed json) is an object with the three sections of an LVIS / COCO instances
    json: ``images``, ``annotations`` and ``categories``.

    Args:
        data: the parsed file.
        source: the file's path (or a description), for the message.
        kind: what the file should be, for the message ("a COCO instances json").
        hint: appended to the message (e.g. the expected folder layout).

    Raises:
        LTDetError: ``data`` is not an object, or lacks sections (named).
    """
    if not isinstance(data, dict):
        raise LTDetError(
            f"'{source}': top level is a {type(data).__name__}; {kind} is an object with "
            f"'images', 'annotations' and 'categories'.{hint}"
        )
    missing = [k for k in SECTIONS if k not in data]
    if missing:
        raise LTDetError(
            f"'{source}' has no key(s) {missing}; {kind} has 'images', 'annotations' and "
            f"'categories'.{hint}"
        )


def check_lvis_records(data: Dict[str, Any], source: str) -> None:
    """Check the categories, images and annotations of a loaded LVIS-format json (see the
    module rules).

    The rules are first checked column by column (:func:`_records_pass`: one pass in C or numpy
    per rule over all records); only a file that fails there is checked record by record, which
    finds and names the first bad record. The two accept the same files
    (``tests/test_lvis_json_rules.py``).

    Args:
        data: the loaded json, with lists ``images``, ``annotations``, ``categories``.
        source: the file name used in messages.

    Raises:
        LTDetError: naming ``source``, the record (category / image / annotation id) and the key.
    """
    cat_ids = _check_categories(data["categories"], source)
    if _records_pass(data["images"], data["annotations"], cat_ids):
        return
    # Some record breaks a rule: the loops below find the first one and name it.
    image_ids = set()
    for img in data["images"]:
        iid = img.get("id") if isinstance(img, dict) else None
        if not _is_int64(iid):
            raise LTDetError(
                f"'{source}': image record {str(img)[:80]} has id {iid!r}; image ids are "
                "integers in the int64 range (-2**63 .. 2**63 - 1)."
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
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            ids = img.get(key, [])
            if not isinstance(ids, list):
                raise LTDetError(
                    f"'{source}': image {iid} has {key} {str(ids)[:60]}; it must be a list of "
                    "category ids."
                )
            for c in ids:
                if not (_is_int(c) and c in cat_ids):
                    raise LTDetError(
                        f"'{source}': image {iid} lists {c!r} in '{key}', which is not the id of a "
                        "category of the file. Fix or remove it."
                    )
    ann_ids = set()
    for n, ann in enumerate(data["annotations"]):
        aid = ann.get("id") if isinstance(ann, dict) else None
        if not _is_int64(aid) or aid == 0:
            why = (
                "lvis-api marks an unmatched detection with id 0, so a ground truth of id 0 is "
                "never counted as found"
                if aid == 0
                else "ids are integers in the int64 range"
            )
            raise LTDetError(
                f"'{source}': annotation number {n} (0-based) has id {aid!r}; every annotation "
                f"needs a unique non-zero integer 'id' ({why}). Renumber it (e.g. from 1)."
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
        cid = ann.get("category_id")
        if not (_is_int(cid) and cid in cat_ids):
            raise LTDetError(
                f"{where} has category_id {json_text(cid)}, which is not in 'categories' (the "
                "ids of the file's categories): add that category to 'categories', or drop the "
                "annotation."
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
        if "area" in ann and not (_is_number(ann["area"]) and ann["area"] >= 0):
            raise LTDetError(
                f"{where} (image {img_id}) has area {ann['area']!r}; 'area' is the object's "
                "area in pixels, a finite number >= 0. Fix or drop it."
            )
        if "segmentation" in ann:
            _check_segmentation(ann["segmentation"], where)
        crowd = ann.get("iscrowd", 0)
        if type(crowd) is bool or crowd not in (0, 1):
            raise LTDetError(f"{where} has iscrowd {ann.get('iscrowd')!r}; it must be 0 or 1.")


_ABSENT = object()


def _column(records: List[dict], key: str, default: Any = _ABSENT) -> List[Any]:
    """``record.get(key, default)`` of every record, in one pass in C."""
    return list(map(dict.get, records, repeat(key), repeat(default)))


def _ints(values: List[Any]) -> bool:
    """Every value is an int (not a bool) in the int64 range."""
    if not set(map(type, values)) <= {int}:
        return False
    try:
        np.fromiter(values, np.int64, len(values))
    except OverflowError:
        return False
    return True


def _numbers(values) -> Optional[np.ndarray]:
    """The values as a float64 array if every one is a finite int or float (not a bool), else
    None."""
    values = list(values)
    if not set(map(type, values)) <= {int, float}:
        return None
    try:
        column = np.fromiter(values, np.float64, len(values))
    except OverflowError:  # an int beyond float range: not finite
        return None
    return column if np.isfinite(column).all() else None


def _records_pass(images: Any, anns: Any, cat_ids: set) -> bool:
    """Whether every image and annotation follows the rules, column by column (each rule one
    pass in C or numpy instead of Python code per record). Accepts only what the record-by-record
    checks of :func:`check_lvis_records` accept; anything else (including value types those
    checks would accept but this pass does not know, e.g. dict subclasses) returns False, and
    those checks then run and name the first bad record."""
    if not (isinstance(images, list) and isinstance(anns, list)):
        return False
    if not set(map(type, images)) <= {dict} or not set(map(type, anns)) <= {dict}:
        return False
    image_ids = _column(images, "id")
    if not _ints(image_ids) or len(set(image_ids)) != len(image_ids):
        return False
    sizes = _numbers(_column(images, "height") + _column(images, "width"))
    if sizes is None or not (sizes > 0).all():
        return False
    for key in ("neg_category_ids", "not_exhaustive_category_ids"):
        lists = _column(images, key, [])
        if not set(map(type, lists)) <= {list}:
            return False
        listed = list(chain.from_iterable(lists))
        if not (set(map(type, listed)) <= {int} and set(listed) <= cat_ids):
            return False
    ann_ids = _column(anns, "id")
    if not _ints(ann_ids) or len(set(ann_ids)) != len(ann_ids) or 0 in set(ann_ids):
        return False
    ann_images = _column(anns, "image_id")
    if not (set(map(type, ann_images)) <= {int} and set(ann_images) <= set(image_ids)):
        return False
    ann_cats = _column(anns, "category_id")
    if not (set(map(type, ann_cats)) <= {int} and set(ann_cats) <= cat_ids):
        return False
    boxes = _column(anns, "bbox")
    if not (set(map(type, boxes)) <= {list} and set(map(len, boxes)) <= {4}):
        return False
    coords = _numbers(chain.from_iterable(boxes))
    if coords is None or (coords.reshape(-1, 4)[:, 2:] < 0).any():
        return False
    areas = _numbers(a for a in _column(anns, "area") if a is not _ABSENT)
    if areas is None or (areas < 0).any():
        return False
    crowd = _column(anns, "iscrowd", 0)
    if not (set(map(type, crowd)) <= {int, float} and set(crowd) <= {0, 1}):
        return False  # (a list would be unhashable: the type test comes first)
    segms = [m for m in _column(anns, "segmentation") if m is not _ABSENT]
    if not set(map(type, segms)) <= {list, dict}:
        return False
    polygons = [m for m in segms if type(m) is list]
    rles = [m for m in segms if type(m) is dict]
    if not all(rles) or not all("size" in m and "counts" in m for m in rles):
        return False
    if not all(polygons):  # an empty list holds no polygon
        return False
    polys = list(chain.from_iterable(polygons))
    if not set(map(type, polys)) <= {list}:
        return False
    lengths = set(map(len, polys))
    if any(n < 6 or n % 2 for n in lengths):
        return False
    return _numbers(chain.from_iterable(polys)) is not None


def _first_bad_id(values: Sequence[Any]) -> int:
    """Index of the first value that is not an integer (or a float holding one) in int64."""
    for i, v in enumerate(values):
        if _is_int64(v):
            continue
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            if INT64_MIN <= v <= INT64_MAX:
                continue
        return i
    return -1


#: The JSON name of each type a parsed JSON value can have.
_JSON_KINDS = {bool: "boolean", type(None): "null", int: "number", float: "number",
               str: "string", list: "list", dict: "object"}


def json_text(value: Any, limit: int = 60) -> str:
    """``value`` as the JSON text it was read from (``true``, ``null``, not Python's ``True``,
    ``None``), cut to ``limit`` characters; ``str`` for what JSON cannot hold (numpy values
    from a Python caller)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = str(value)
    return text[:limit]


def json_shown(value: Any) -> str:
    """``value`` for a message: its JSON text and its JSON kind, e.g. ``true (a JSON
    boolean)``, ``"7" (a JSON string)``."""
    kind = _JSON_KINDS.get(type(value))
    return f"{json_text(value)} ({f'a JSON {kind}' if kind else type(value).__name__})"


def id_column(values: Sequence[Any], field: str, source: str) -> np.ndarray:
    """The ids ``values`` (one per result) as an int64 array, checked by the results rules.

    Costs what reading them did before any check: one pass for the set of value types, then
    ``np.fromiter``; the values are scanned one by one only to name the first bad one.

    Args:
        values: N ids as read from the results json.
        field: the key they come from ("image_id", "category_id"), for the message.
        source: the results file name, for the message.

    Returns:
        (N,) int64.

    Raises:
        LTDetError: a value is a string, a boolean, a fraction, null, a list, not finite or
            outside int64; the message names ``source``, ``field``, the result's index and the
            value.
    """
    n = len(values)
    types = set(map(type, values))
    if types <= {int}:
        try:
            return np.fromiter(values, np.int64, n)
        except OverflowError:  # beyond int64: named below
            pass
    elif types <= {int, float}:
        if _first_bad_id(values) < 0:
            return np.fromiter((int(v) for v in values), np.int64, n)
    i = _first_bad_id(values)
    v = values[i]
    raise LTDetError(
        f"'{source}': result {i} (0-based) has {field} {json_shown(v)}; {field} must be a JSON "
        "integer in the int64 range, the id as written in the ground truth (lvis-api cannot "
        "score it either). Write the integer id."
    )
