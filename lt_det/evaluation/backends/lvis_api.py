"""``"lvis"`` backend: the official lvis-api (``LVISEval``), the reference.

lvis-api builds one Python dict per (image, class, area range); the caller bounds its memory by
evaluating class chunks on the images where those classes are positive or negative. lvis-api
(and the matplotlib it imports) is loaded when the backend is first selected, not at registration.

lvis-api is optional (``pip install 'lt_det[lvis]'``), and its last release (0.5.3) accumulates
with ``np.float``, which numpy 1.24 removed. :func:`check_lvis_api` (run when the backend is
selected: ``get_lvis_backend("lvis")``) evaluates a one-box case with it and turns either failure
into one line naming the fix, before anything is trained or written.
"""
import logging
import re
from typing import Dict, List, Tuple

import numpy as np

from ...errors import LTDetError
from .common import empty_tables, gt_ann_copies
from .registry import LT_LVIS_EVAL_BACKEND_REGISTRY

__all__ = ["lvis", "check_lvis_api", "LVIS_API_FIX"]

#: What to do when lvis-api cannot evaluate here.
LVIS_API_FIX = (
    "pip install 'lt_det[lvis]' (lvis and numpy<1.24), or use the 'fast' backend "
    "(TEST.LVIS.BACKEND fast; tools/lvis_eval.py --backend fast), which needs neither"
)
_LVIS_API_WORKS = []  # [True] once check_lvis_api passed in this process


def _lvis_from_dict(dataset: Dict):
    """An ``LVIS`` ground truth built from a dict (lvis-api's constructor only reads files)."""
    from lvis import LVIS

    api = LVIS.__new__(LVIS)  # the same index LVIS.__init__ builds, without reading a file
    api.logger = logging.getLogger("lvis.lvis")
    api.dataset = dataset
    api._create_index()
    return api


def check_lvis_api() -> None:
    """lvis-api imports and evaluates with the installed numpy (once per process).

    Evaluates one detection of one box (AP 1) with ``LVISEval``, so a removed numpy name is found
    however lvis-api uses it.

    Raises:
        LTDetError: lvis-api does not import, or its evaluation fails on a name numpy removed
            (``np.float`` in lvis 0.5.3 with numpy >= 1.24); the message names the fix.
    """
    if _LVIS_API_WORKS:
        return
    try:
        from lvis import LVISEval, LVISResults
    except ImportError as e:
        raise LTDetError(
            f"the 'lvis' evaluation backend needs lvis-api, which does not import here ({e}); "
            f"{LVIS_API_FIX}."
        ) from None
    box = [0.0, 0.0, 4.0, 4.0]
    gt = _lvis_from_dict({
        "images": [{"id": 1, "height": 8, "width": 8, "neg_category_ids": [],
                    "not_exhaustive_category_ids": []}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 16.0,
                         "iscrowd": 0}],
        "categories": [{"id": 1, "name": "probe", "frequency": "r"}],
    })
    logger = logging.getLogger("lvis")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the probe's own progress lines
    try:
        dt = LVISResults(gt, [{"image_id": 1, "category_id": 1, "bbox": box, "score": 1.0}])
        ev = LVISEval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    except AttributeError as e:
        if "numpy" not in str(e):
            raise
        found = re.search(r"has no attribute '(\w+)'", str(e))
        name = f"np.{found.group(1)}" if found else str(e).splitlines()[0]
        raise LTDetError(
            f"the 'lvis' evaluation backend cannot run: lvis-api uses {name}, which numpy "
            f"{np.__version__} no longer has (np.float was removed in numpy 1.24); "
            f"{LVIS_API_FIX}."
        ) from None
    finally:
        logger.setLevel(level)
    _LVIS_API_WORKS.append(True)


@LT_LVIS_EVAL_BACKEND_REGISTRY.register("lvis")
def lvis(
    gt, dets, *, iou_type: str, cat_ids: np.ndarray, img_ids: np.ndarray, max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """LVIS precision/recall of ``cat_ids`` with lvis-api (see the registry for args)."""
    check_lvis_api()
    if len(dets) == 0 or len(img_ids) == 0:
        # lvis-api cannot load an empty result list; the tables are known in closed form.
        return empty_tables(gt, cat_ids)
    images: List[Dict] = [gt.image_by_id[i] for i in img_ids.tolist()]
    cats = [gt.categories[k] for k in np.searchsorted(gt.cat_ids, cat_ids).tolist()]
    from lvis import LVISEval, LVISResults

    lvis_gt = _lvis_from_dict(
        {"images": images, "annotations": gt_ann_copies(gt, cat_ids, iou_type), "categories": cats}
    )
    res_logger = logging.getLogger("lvis.results")
    level = res_logger.level
    res_logger.setLevel(logging.ERROR)  # silences "Assuming user provided the results ..."
    try:
        # The caller already applied the per-image (or AP-fixed per-class) cut.
        lvis_dt = LVISResults(lvis_gt, dets.to_results(iou_type), max_dets=-1)
    finally:
        res_logger.setLevel(level)
    ev = LVISEval(lvis_gt, lvis_dt, iou_type)
    ev.params.img_ids = img_ids.tolist()
    ev.params.cat_ids = cat_ids.tolist()
    ev.evaluate()
    ev.accumulate()
    return np.array(ev.eval["precision"], np.float64), np.array(ev.eval["recall"], np.float64)


lvis.check_ready = check_lvis_api  # run by get_lvis_backend("lvis")
