"""LVIS ground truth as the evaluators need it: validated, indexed by class, with r/c/f groups.

An LVIS-format ground truth is a json (or dict) with ``images`` (each with ``neg_category_ids`` and
``not_exhaustive_category_ids``), ``annotations`` and ``categories``. lvis-api refuses an image
without the two id lists; so does :class:`LVISGroundTruth`, naming the file, the image and the key.
"""
import logging
import os
from collections import defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

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
                        "every image (lvis-api refuses such ground truth too); add them, as empty "
                        "lists if the dataset is exhaustively annotated."
                    )
        check_lvis_records(data, self.source)  # the rules training applies too
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
                "counts, not the training set's (pass frequency= to override)."
            )
        self.frequency = np.array([c["frequency"] for c in self.categories])

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
