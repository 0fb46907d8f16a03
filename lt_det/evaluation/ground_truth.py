"""LVIS ground truth as the evaluators need it: validated, indexed by class, with r/c/f groups.

An LVIS-format ground truth is a json (or dict) with ``images`` (each with ``neg_category_ids`` and
``not_exhaustive_category_ids``), ``annotations`` and ``categories``. lvis-api refuses an image
without the two id lists; so does :class:`LVISGroundTruth`, naming the file, the image and the key.
"""
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..class_stats import frequency_group
from ..errors import LTDetError
from ._json import gc_paused, load_json
from ..lvis_json import check_json_sections, check_lvis_records

__all__ = ["LVISGroundTruth"]

logger = logging.getLogger(__name__)

_REQUIRED_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


class LVISGroundTruth:
    """Validated, indexed LVIS ground truth.

    Attributes:
        source: the file name (or "<dict>") used in error messages.
        images: list of image dicts (as loaded, not copied).
        img_ids: (I,) sorted image ids.
        categories: list of category dicts sorted by id, each with a "frequency" (r/c/f).
        cat_ids: (K,) sorted category ids.
        anns_by_cat: {category id: list of annotation dicts}.
        pos_images / neg_images: {category id: set of image ids} where the class is
            annotated (has a gt instance) / listed in ``neg_category_ids``.
        not_exhaustive: {image id: list of category ids}.
        num_crowd: crowd annotations (``iscrowd`` 1) left out of the ground truth: they are not
            objects (training drops them as well), so they neither count as instances nor make
            their class positive in the image, for both backends.
        num_zero_area: annotations of ``area`` 0 left out of the ground truth, as lvis-api leaves
            them out (``LVIS.get_ann_ids`` keeps 0 < area < inf; the rules of
            :mod:`lt_det.lvis_json` refuse a negative or non-finite area): they are not counted
            and do not make their class positive in the image. The area is the json's ``area``
            for bbox and segm alike (a box of width 0 with a positive ``area`` stays).
    """

    @gc_paused()  # see lt_det.evaluation._json
    def __init__(
        self,
        gt: Union[str, os.PathLike, Dict[str, Any]],
        *,
        frequency: Optional[Mapping[int, str]] = None,
        image_count: Optional[Mapping[int, int]] = None,
    ):
        """
        Args:
            gt: path of an LVIS-format json, or the loaded dict (not modified).
            frequency: optional {category id: "r"|"c"|"f"} overriding the json's ``frequency``
                (e.g. the training set's groups). Categories lacking both get the group of
                their ``image_count`` (json, else ``image_count`` arg, else counted from ``gt``).
            image_count: optional {category id: training image count} for per-class reports.
        """
        if isinstance(gt, (str, os.PathLike)):
            self.source = os.fspath(gt)
            if not os.path.isfile(self.source):
                raise LTDetError(f"LVIS ground-truth json not found: '{self.source}'.")
            data = load_json(self.source, "ground-truth json")
        elif isinstance(gt, dict):
            self.source = "<ground-truth dict>"
            data = gt
        else:
            raise LTDetError(
                f"ground truth must be a json path or a dict, got {type(gt).__name__}."
            )
        check_json_sections(data, self.source)
        self.images: List[Dict[str, Any]] = data["images"]
        for img in self.images:
            for key in _REQUIRED_IMAGE_KEYS:
                if key not in img:
                    raise LTDetError(
                        f"'{self.source}': image id {img.get('id')} has no '{key}'. LVIS "
                        "evaluation needs 'neg_category_ids' and 'not_exhaustive_category_ids' on "
                        "every image (lvis-api refuses such ground truth too). For a COCO-style, "
                        "exhaustively labelled json, tools/coco_to_lvis.py adds them (every class "
                        "absent from an image a negative there); other data: docs/own_data.md."
                    )
        check_lvis_records(data, self.source)  # the rules training applies too
        self._evaluated_table: Optional[np.ndarray] = None
        self._image_sizes: Optional[np.ndarray] = None
        self.img_ids = np.array(sorted(img["id"] for img in self.images), dtype=np.int64)
        self.image_by_id = {img["id"]: img for img in self.images}

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
        cat_set = set(self.cat_ids.tolist())
        self.anns_by_cat: Dict[int, List[Dict[str, Any]]] = defaultdict(list)
        self.num_crowd = 0
        self.num_zero_area = 0
        for ann in data["annotations"]:
            if "area" not in ann:
                raise LTDetError(
                    f"'{self.source}': annotation {ann.get('id')} has no 'area' (LVIS uses it for "
                    "the small/medium/large ranges)."
                )
            if ann.get("iscrowd", 0):
                # Crowd regions are not objects (training drops them too): not ground truth,
                # in both backends alike.
                self.num_crowd += 1
                continue
            if not ann["area"] > 0:
                # lvis-api's rule (LVIS.get_ann_ids keeps 0 < area < inf): left out of the
                # ground truth, so the class is not positive in the image on its account.
                self.num_zero_area += 1
                continue
            self.anns_by_cat[ann["category_id"]].append(ann)
        self.pos_images = {c: {a["image_id"] for a in self.anns_by_cat.get(c, [])} for c in cat_set}
        self.neg_images: Dict[int, set] = defaultdict(set)
        self.not_exhaustive: Dict[int, List[int]] = {}
        for img in self.images:
            for c in img["neg_category_ids"]:
                self.neg_images[c].add(img["id"])
            self.not_exhaustive[img["id"]] = img["not_exhaustive_category_ids"]

        # Frequency groups (APr/APc/APf) and training image counts of the per-class report.
        self.categories: List[Dict[str, Any]] = []
        derived = []
        for c in cats:
            cid = c["id"]
            n = c.get("image_count")
            if image_count is not None and cid in image_count:
                n = int(image_count[cid])
            group = (frequency or {}).get(cid) or c.get("frequency")
            if group is None:
                if n is None:
                    n = len(self.pos_images[cid])
                    derived.append(cid)
                group = frequency_group(n)
            if group not in ("r", "c", "f"):
                raise LTDetError(
                    f"'{self.source}': category {cid} has frequency {group!r}; expected 'r', 'c' "
                    "or 'f'."
                )
            self.categories.append(
                {"id": cid, "name": c.get("name", str(cid)), "frequency": group, "image_count": n}
            )
        if derived:
            logger.warning(
                f"{len(derived)} categories of '{self.source}' have neither 'frequency' nor "
                "'image_count'; their r/c/f group was derived from the ground truth's own image "
                "counts, not the training set's. Give the categories the training set's "
                "'image_count' (tools/coco_to_lvis.py --counts-from TRAIN_JSON) or pass "
                "frequency= to LVISGroundTruth / evaluate_lvis."
            )
        self.frequency = np.array([c["frequency"] for c in self.categories])

    def image_sizes(self) -> np.ndarray:
        """(I, 2) int64 ``[height, width]`` of each image of :attr:`img_ids` (in pixels; the
        rules of :mod:`lt_det.lvis_json` make both positive)."""
        if self._image_sizes is None:
            self._image_sizes = np.array(
                [[self.image_by_id[i]["height"], self.image_by_id[i]["width"]]
                 for i in self.img_ids.tolist()],
                dtype=np.int64,
            ).reshape(-1, 2)
        return self._image_sizes

    def relevant_images(self, cat_ids: Sequence[int]) -> np.ndarray:
        """Sorted ids of images where any of ``cat_ids`` is positive or negative.

        Only there can a class's detections be evaluated (LVIS drops the others), so restricting
        an evaluation of ``cat_ids`` to these images changes no number.
        """
        ids = set()
        for c in cat_ids:
            ids |= self.pos_images.get(int(c), set())
            ids |= self.neg_images.get(int(c), set())
        return np.array(sorted(ids), dtype=np.int64)

    def image_index(self, image_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Positions of ``image_ids`` in :attr:`img_ids` and whether each is there.

        Returns:
            (N,) int64 positions (0 where not found) and (N,) bool found.
        """
        return positions(self.img_ids, image_ids)

    def category_index(self, category_ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Positions of ``category_ids`` in :attr:`cat_ids` and whether each is there (as
        :meth:`image_index`)."""
        return positions(self.cat_ids, category_ids)

    def is_evaluated(self, img_index: np.ndarray, cat_index: np.ndarray) -> np.ndarray:
        """(N,) bool: whether LVIS evaluates class ``cat_ids[cat_index]`` in image
        ``img_ids[img_index]`` (positive or negative there), for index arrays of one length.

        A lookup in an (images x classes) bool table (24 MB at LVIS v1 val: 19,809 x 1203) when
        it holds at most :data:`EVALUATED_TABLE_CELLS` cells; a sorted search of
        :meth:`evaluated_pairs` beyond.
        """
        K = len(self.cat_ids)
        keys = np.asarray(img_index, np.int64) * K + np.asarray(cat_index, np.int64)
        if len(self.img_ids) * K > EVALUATED_TABLE_CELLS:
            return np.isin(keys, self.evaluated_pairs())
        if self._evaluated_table is None:
            table = np.zeros(len(self.img_ids) * K, dtype=bool)
            table[self.evaluated_pairs()] = True
            self._evaluated_table = table
        return self._evaluated_table[keys]

    def evaluated_pairs(self) -> np.ndarray:
        """Sorted int64 keys ``image_index * K + category_index`` of the (image, class) pairs LVIS
        evaluates: the class is positive or negative in the image."""
        img_index = {int(i): k for k, i in enumerate(self.img_ids)}
        K = len(self.cat_ids)
        keys = []
        for ci, c in enumerate(self.cat_ids.tolist()):
            for i in self.pos_images.get(c, ()):
                keys.append(img_index[i] * K + ci)
            for i in self.neg_images.get(c, ()):
                if i in img_index:
                    keys.append(img_index[i] * K + ci)
        return np.unique(np.array(keys, dtype=np.int64))

    def num_gt(self, cat_id: int) -> int:
        """Number of gt instances of a class."""
        return len(self.anns_by_cat.get(int(cat_id), []))

    def subset(self, img_ids: Sequence[int]) -> "LVISGroundTruth":
        """The ground truth of ``img_ids`` only (their images and annotations; every category,
        with its r/c/f group and image count kept): what a run that predicted on those images
        is scored against.

        Raises:
            LTDetError: an id is not an image of this ground truth.
        """
        keep = {int(i) for i in img_ids}
        unknown = sorted(keep - set(self.image_by_id))
        if unknown:
            raise LTDetError(f"image ids {unknown[:5]} are not in '{self.source}'.")
        data = {
            "images": [img for img in self.images if img["id"] in keep],
            "annotations": [
                a for anns in self.anns_by_cat.values() for a in anns if a["image_id"] in keep
            ],
            "categories": self.categories,
        }
        sub = LVISGroundTruth(data)
        sub.source = f"{self.source} ({len(keep)} of {len(self.img_ids)} images)"
        return sub


#: Largest (images x classes) table of :meth:`LVISGroundTruth.is_evaluated` (128 MB of bools).
EVALUATED_TABLE_CELLS = 2**27

#: Largest id range (max - min + 1) that :func:`positions` looks up in a table (4M entries,
#: 32 MB); wider ranges are searched.
POSITION_TABLE_SIZE = 2**22


def positions(sorted_ids: np.ndarray, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Positions of ``values`` in the sorted unique ``sorted_ids`` and whether each is there.

    Where the ids span at most :data:`POSITION_TABLE_SIZE` integers (LVIS: image ids up to
    ~600k, category ids 1..1203), one gather from a table indexed by id; otherwise
    ``np.searchsorted``. The same answer either way.

    Args:
        sorted_ids: (M,) int64, increasing.
        values: (N,) int64.

    Returns:
        (N,) int64 positions (0 where not found) and (N,) bool found.
    """
    values = np.asarray(values, dtype=np.int64)
    if len(sorted_ids) == 0 or len(values) == 0:
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo < POSITION_TABLE_SIZE:
        table = np.full(hi - lo + 1, -1, dtype=np.int64)
        table[sorted_ids - lo] = np.arange(len(sorted_ids))
        inside = (values >= lo) & (values <= hi)
        pos = np.where(inside, table[np.clip(values, lo, hi) - lo], -1)
        found = pos >= 0
        return np.maximum(pos, 0), found
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    found = sorted_ids[pos] == values
    return np.where(found, pos, 0), found
