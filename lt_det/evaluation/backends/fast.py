"""``"fast"`` backend (the default): hotcoco's Rust evaluator in LVIS mode, through its public API.

hotcoco (https://github.com/derekallman/hotcoco) implements lvis-api's matching: the federated
rules (a class is evaluated only in images where it is positive or negative; unmatched
detections of a not-exhaustive class are ignored), the (T, R, K, A) precision table and LVIS's
per-image cap. Left to itself it differs from lvis-api on entries of area 0 (it evaluates empty
masks and boxes of width 0, and ground truth of ``area`` 0) and accepts ids lvis-api refuses or
misreads; here it receives only what lt_det's rules let through (:mod:`lt_det.lvis_json`, the
area-0 rule of :func:`lt_det.evaluation.drop_zero_area`, the per-image or AP-fixed cut), so its
tables equal lvis-api's (``tests/test_eval_exact.py``).

Ids are handed over as positions (image ``i`` of ``img_ids`` is ``i + 1``, likewise classes), so
any int64 id lt_det accepts is exact, and columns go in as arrays (``COCO.from_arrays``,
``COCO.load_res`` of an (N, 7) array): no Python dict per detection or annotation.
"""
from typing import Dict, List, Tuple

import numpy as np

from ...errors import LTDetError
from .common import AREA_RNGS, IOU_THRS, REC_THRS, empty_tables
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY

__all__ = ["fast", "check_hotcoco", "HOTCOCO_VERSIONS"]

#: hotcoco releases this backend was built and tested on (public API only: ``COCO.from_arrays``,
#: ``COCO.load_res``, ``COCO.update_anns``, ``COCOeval(..., lvis_style=True)``, ``Params``,
#: ``COCOeval.eval["precision"/"recall"]``).
HOTCOCO_VERSIONS = ("1.3",)
_CHECKED: List[bool] = []


def check_hotcoco() -> None:
    """hotcoco imports and is a release this backend was built for (once per process).

    Raises:
        LTDetError: hotcoco is missing, or its version is not in :data:`HOTCOCO_VERSIONS`; the
            message names the fix.
    """
    if _CHECKED:
        return
    fix = (
        "pip install 'hotcoco==1.3.0', or use the 'lvis' backend (TEST.LVIS.BACKEND lvis; "
        "tools/lvis_eval.py --backend lvis)"
    )
    try:
        import hotcoco as hc
    except ImportError as e:
        raise LTDetError(
            f"the 'fast' evaluation backend needs hotcoco, which does not import here ({e}); "
            f"{fix}."
        ) from None
    version = getattr(hc, "__version__", "?")
    if not any(version == v or version.startswith(v + ".") for v in HOTCOCO_VERSIONS):
        raise LTDetError(
            f"the 'fast' evaluation backend was built for hotcoco {', '.join(HOTCOCO_VERSIONS)}.x "
            f"and hotcoco {version} is installed; {fix}."
        )
    _CHECKED.append(True)


def _gt_columns(gt, cat_ids: np.ndarray, iou_type: str):
    """The annotations of ``cat_ids`` as columns (image id, category id, box, area, masks)."""
    anns = [a for c in cat_ids.tolist() for a in gt.anns_by_cat.get(c, ())]
    n = len(anns)
    image_id = np.fromiter((a["image_id"] for a in anns), np.int64, n)
    category_id = np.fromiter((a["category_id"] for a in anns), np.int64, n)
    area = np.fromiter((a["area"] for a in anns), np.float64, n)
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    segm = [a["segmentation"] for a in anns] if iou_type == "segm" else None
    return image_id, category_id, boxes, area, segm


@LT_LVIS_EVAL_BACKEND_REGISTRY.register("fast")
def fast(
    gt, dets, *, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS precision/recall of ``cat_ids`` with hotcoco (see the registry for args)."""
    check_hotcoco()
    if len(dets) == 0 or len(img_ids) == 0:
        return empty_tables(gt, cat_ids)
    from hotcoco import COCO, COCOeval

    # Positions as ids: image i of img_ids is i + 1, class k of cat_ids is k + 1.
    cat_pos = {c: k + 1 for k, c in enumerate(cat_ids.tolist())}
    images: List[Dict] = []
    for p, i in enumerate(img_ids.tolist()):
        src = gt.image_by_id[i]
        images.append({
            "id": p + 1,
            "height": src.get("height", 0),
            "width": src.get("width", 0),
            "neg_category_ids": [cat_pos[c] for c in src["neg_category_ids"] if c in cat_pos],
            "not_exhaustive_category_ids": [
                cat_pos[c] for c in gt.not_exhaustive.get(i, ()) if c in cat_pos
            ],
        })
    categories = [
        {"id": k + 1, "name": str(c), "frequency": "f"} for k, c in enumerate(cat_ids.tolist())
    ]
    g_img, g_cat, g_box, g_area, g_segm = _gt_columns(gt, cat_ids, iou_type)
    to_pos = np.searchsorted(img_ids, g_img) + 1
    coco_gt = COCO.from_arrays(
        images, categories, to_pos, np.searchsorted(cat_ids, g_cat) + 1, g_box,
        area=g_area, segmentation=g_segm,
    )
    table = np.empty((len(dets), 7), dtype=np.float64)
    table[:, 0] = np.searchsorted(img_ids, dets.image_id) + 1
    table[:, 5] = dets.score
    table[:, 6] = np.searchsorted(cat_ids, dets.category_id) + 1
    if iou_type == "bbox":
        table[:, 1:5] = dets.bbox
        coco_dt = coco_gt.load_res(table)
    else:
        # segm: the IoU is the masks', the area range the mask's ``area`` set below; the row's
        # box is only the default of that area (``COCO.load_res``), so it is left 0 rather than
        # computed from every mask (a second decode of each RLE string).
        table[:, 1:5] = 0.0
        coco_dt = coco_gt.load_res(table, segmentation=dets.segmentation)
        coco_dt.update_anns(ids=np.arange(1, len(dets) + 1), area=dets.area)
    # Marked as cut already (the caller applied the protocol's cut): no per-image cap of 300.
    coco_dt = coco_dt.cap_detections_per_image(None)
    ev = COCOeval(coco_gt, coco_dt, iou_type, lvis_style=True)
    p = ev.params
    p.img_ids = list(range(1, len(img_ids) + 1))
    p.cat_ids = list(range(1, len(cat_ids) + 1))
    p.max_dets = [int(max(max_dets, np.bincount(table[:, 0].astype(np.int64)).max()))]
    p.iou_thrs = IOU_THRS.tolist()
    p.rec_thrs = REC_THRS.tolist()
    p.area_rng = [list(map(float, r)) for r in AREA_RNGS]
    ev.evaluate()
    ev.accumulate()
    precision = np.asarray(ev.eval["precision"], dtype=np.float64)[..., -1]
    recall = np.asarray(ev.eval["recall"], dtype=np.float64)[..., -1]
    return precision, recall


fast.check_ready = check_hotcoco
