"""Detections in columns: what the LVIS evaluators keep in memory instead of one dict per box.

A list of result dicts costs ~0.7 kB per box; at LVIS v1 val scale (~19.8k images x 300 boxes)
that alone is ~4 GB. :class:`DetectionTable` keeps ids, scores and boxes as arrays (40 bytes per
box, plus the RLE of a mask) and builds dicts only for the classes being evaluated.

Shape shorthand: N = number of detections.
"""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..errors import LTDetError
from ._json import load_json

__all__ = ["DetectionTable", "top_k_per_group"]


@dataclass
class DetectionTable:
    """Detections of a whole dataset, one row per box, in the order they were given.

    Attributes:
        image_id: (N,) int64.
        category_id: (N,) int64 dataset (LVIS) category ids.
        score: (N,) float64.
        bbox: (N, 4) float64 XYWH_ABS boxes, or None when the results have no boxes.
        segmentation: N RLE dicts ({"size", "counts"}), or None when there are no masks.
    """

    image_id: np.ndarray
    category_id: np.ndarray
    score: np.ndarray
    bbox: Optional[np.ndarray] = None
    segmentation: Optional[List[Dict[str, Any]]] = None

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def from_results(
        cls, results: Union[str, os.PathLike, Sequence[Dict[str, Any]]]
    ) -> "DetectionTable":
        """Build from an LVIS results list (or the path of its json): dicts with ``image_id``,
        ``category_id``, ``score`` and ``bbox`` (XYWH) and/or ``segmentation`` (RLE)."""
        source = "<results list>"
        if isinstance(results, (str, os.PathLike)):
            source = os.fspath(results)
            if not os.path.isfile(source):
                raise LTDetError(f"results json not found: '{source}'.")
            results = load_json(source)
        if not isinstance(results, (list, tuple)):
            raise LTDetError(f"'{source}': results must be a list of dicts, got {type(results)}.")
        n = len(results)
        try:
            image_id = np.fromiter((r["image_id"] for r in results), np.int64, n)
            category_id = np.fromiter((r["category_id"] for r in results), np.int64, n)
            score = np.fromiter((r["score"] for r in results), np.float64, n)
        except KeyError as e:
            raise LTDetError(
                f"'{source}': a result has no {e.args[0]!r}; each result needs 'image_id', "
                "'category_id', 'score' and 'bbox' and/or 'segmentation'."
            ) from None
        has_box = n > 0 and all("bbox" in r for r in results)
        has_mask = n > 0 and all("segmentation" in r for r in results)
        bbox = (
            np.array([r["bbox"] for r in results], np.float64).reshape(-1, 4) if has_box else None
        )
        segm = [r["segmentation"] for r in results] if has_mask else None
        table = cls(image_id, category_id, score, bbox, segm)
        table.check(source)
        return table

    def check(self, source: str = "<detections>") -> None:
        """The rules results must follow for either backend to score them the same way.

        Scores and boxes are finite numbers; masks are compressed RLE dicts (``size`` = [height,
        width], ``counts`` a string, as ``pycocotools.mask.encode`` writes them). Polygons and
        uncompressed RLE (``counts`` a list) are refused: lvis-api and faster-coco-eval treat
        them differently.

        Raises:
            LTDetError: naming ``source``, the first offending result (index) and the value.
        """
        bad = np.flatnonzero(~np.isfinite(self.score))
        if bad.size:
            i = int(bad[0])
            raise LTDetError(
                f"'{source}': {bad.size} results have a score that is not a finite number (e.g. "
                f"result {i}: image {int(self.image_id[i])}, category {int(self.category_id[i])}, "
                f"score {self.score[i]}). Scores must be finite; a model that outputs NaN has "
                "diverged (see the training log)."
            )
        if self.bbox is not None:
            bad = np.flatnonzero(~np.isfinite(self.bbox).all(axis=1))
            if bad.size:
                raise LTDetError(
                    f"'{source}': {bad.size} results have a box with a non-finite coordinate "
                    f"(e.g. result {int(bad[0])}: {self.bbox[bad[0]].tolist()})."
                )
        for i, m in enumerate(self.segmentation or ()):
            ok = (
                isinstance(m, dict)
                and isinstance(m.get("counts"), (str, bytes))
                and isinstance(m.get("size"), (list, tuple))
                and len(m["size"]) == 2
            )
            if not ok:
                kind = "a polygon list" if isinstance(m, list) else repr(m)[:60]
                raise LTDetError(
                    f"'{source}': result {i} has segmentation {kind}; results need compressed RLE "
                    "masks {'size': [height, width], 'counts': '<string>'} (pycocotools.mask."
                    "encode, counts decoded to str). Convert polygons / uncompressed RLE with "
                    "pycocotools.mask.frPyObjects and mask.merge first."
                )

    @classmethod
    def concatenate(cls, tables: Iterable["DetectionTable"]) -> "DetectionTable":
        """Rows of ``tables`` one after the other (boxes/masks kept if all tables have them)."""
        tables = list(tables)
        if not tables:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
        bbox = None
        if all(t.bbox is not None for t in tables):
            bbox = np.concatenate([t.bbox for t in tables]).reshape(-1, 4)
        segm = None
        if all(t.segmentation is not None for t in tables):
            segm = [s for t in tables for s in t.segmentation]
        return cls(
            np.concatenate([t.image_id for t in tables]).astype(np.int64),
            np.concatenate([t.category_id for t in tables]).astype(np.int64),
            np.concatenate([t.score for t in tables]).astype(np.float64),
            bbox,
            segm,
        )

    def take(self, index: np.ndarray) -> "DetectionTable":
        """Rows ``index`` (an int array), in that order."""
        index = np.asarray(index, dtype=np.int64)
        return DetectionTable(
            self.image_id[index],
            self.category_id[index],
            self.score[index],
            None if self.bbox is None else self.bbox[index],
            None if self.segmentation is None else [self.segmentation[i] for i in index.tolist()],
        )

    def to_results(self, iou_type: str, index: Optional[np.ndarray] = None) -> List[Dict]:
        """LVIS results dicts of rows ``index`` (all by default) for ``iou_type``.

        For "segm" no "bbox" is written, so that the area ranges use the mask area (lvis-api
        would otherwise take the box area).
        """
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        img = self.image_id[index].tolist()
        cat = self.category_id[index].tolist()
        score = self.score[index].tolist()
        if iou_type == "bbox":
            self._require("bbox", iou_type)
            boxes = self.bbox[index].tolist()
            return [
                {"image_id": i, "category_id": c, "bbox": b, "score": s}
                for i, c, b, s in zip(img, cat, boxes, score)
            ]
        if iou_type == "segm":
            self._require("segmentation", iou_type)
            segm = [self.segmentation[i] for i in index.tolist()]
            return [
                {"image_id": i, "category_id": c, "segmentation": m, "score": s}
                for i, c, m, s in zip(img, cat, segm, score)
            ]
        raise LTDetError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}.")

    def _require(self, field: str, iou_type: str) -> None:
        if getattr(self, field) is None and len(self) > 0:
            raise LTDetError(
                f"'{iou_type}' evaluation needs '{field}' in every result; these results lack it."
            )

    def write_json(self, path: str, *, chunk: int = 100_000) -> None:
        """Write the LVIS results json (boxes and masks as available) without building all dicts."""
        with open(path, "w") as f:
            f.write("[")
            for start in range(0, len(self), chunk):
                rows = []
                for k in range(start, min(start + chunk, len(self))):
                    r = {
                        "image_id": int(self.image_id[k]),
                        "category_id": int(self.category_id[k]),
                        "score": float(self.score[k]),
                    }
                    if self.bbox is not None:
                        r["bbox"] = self.bbox[k].tolist()
                    if self.segmentation is not None:
                        m = self.segmentation[k]
                        counts = m["counts"]
                        if isinstance(counts, bytes):
                            counts = counts.decode("utf-8")
                        r["segmentation"] = {"size": list(m["size"]), "counts": counts}
                    rows.append(json.dumps(r))
                f.write((", " if start else "") + ", ".join(rows))
            f.write("]")


def top_k_per_group(group: np.ndarray, score: np.ndarray, k: int) -> np.ndarray:
    """Indices (increasing) of the ``k`` highest-scoring rows of every group.

    Ties are broken by row order, as Python's stable ``sorted(..., reverse=True)`` in lvis-api
    does, so the same rows are kept.

    Args:
        group: (N,) int group key per row (image id for the per-image cap, class id for AP-fixed).
        score: (N,) scores.
        k: rows kept per group; k < 0 keeps everything.
    """
    n = len(score)
    if k < 0 or n == 0:
        return np.arange(n)
    # Sort by group, then score descending, then row index (stable tie-break).
    order = np.lexsort((np.arange(n), -score, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.arange(n) - first
    return np.sort(order[rank < k])
