"""The ground-truth rules of lt_det.lvis_json: the column-by-column pass accepts exactly what the
record-by-record checks accept.

``check_lvis_records`` first checks whole columns (one pass in C or numpy per rule) and runs the
record-by-record checks, which name the first bad record, only when a column fails. Each case
below breaks one rule (the pass must fail and the file be refused) or bends one without breaking
it (the pass must hold and the file be accepted), so the fast pass can neither let a bad file
through nor send every good file down the slow path.
"""
import copy

import pytest

from lt_det.errors import LTDetError
from lt_det.lvis_json import _records_pass, check_lvis_records


def good():
    return {
        "categories": [{"id": 1, "name": "a"}, {"id": 7, "name": "b"}],
        "images": [
            {"id": 10, "height": 40, "width": 60.5, "neg_category_ids": [7],
             "not_exhaustive_category_ids": []},
            {"id": -3, "height": 8, "width": 8},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "bbox": [1, 2.5, 3, 4], "area": 12,
             "segmentation": [[1, 2, 4, 2, 4, 6.5]], "iscrowd": 0},
            {"id": 2**63 - 1, "image_id": -3, "category_id": 7, "bbox": [0, 0, 0, 0], "area": 0.0,
             "segmentation": {"size": [8, 8], "counts": "34"}, "iscrowd": 1},
            {"id": -5, "image_id": 10, "category_id": 7, "bbox": [0.0, 0.0, 2.0, 2.0]},
        ],
    }


def _set(path, value):
    def change(d):
        *keys, last = path
        for k in keys:
            d = d[k]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return change


BREAKS = {
    "image id string": _set(("images", 0, "id"), "10"),
    "image id bool": _set(("images", 1, "id"), True),
    "image id beyond int64": _set(("images", 1, "id"), 2**63),
    "image id twice": _set(("images", 1, "id"), 10),
    "image without height": _set(("images", 0, "height"), KeyError),
    "image height 0": _set(("images", 0, "height"), 0),
    "image width 0.0": _set(("images", 1, "width"), 0.0),
    "image width negative": _set(("images", 1, "width"), -1),
    "image width nan": _set(("images", 1, "width"), float("nan")),
    "neg ids not a list": _set(("images", 0, "neg_category_ids"), 7),
    "neg id unknown": _set(("images", 0, "neg_category_ids"), [3]),
    "not exhaustive id string": _set(("images", 0, "not_exhaustive_category_ids"), ["7"]),
    "image not a dict": _set(("images", 1), [1, 2]),
    "annotation id 0": _set(("annotations", 0, "id"), 0),
    "annotation id missing": _set(("annotations", 0, "id"), KeyError),
    "annotation id float": _set(("annotations", 0, "id"), 1.0),
    "annotation id twice": _set(("annotations", 2, "id"), 1),
    "annotation id below int64": _set(("annotations", 2, "id"), -(2**63) - 1),
    "annotation image unknown": _set(("annotations", 0, "image_id"), 11),
    "annotation image float": _set(("annotations", 0, "image_id"), 10.0),
    "annotation category unknown": _set(("annotations", 0, "category_id"), 2),
    "annotation category missing": _set(("annotations", 1, "category_id"), KeyError),
    "bbox missing": _set(("annotations", 2, "bbox"), KeyError),
    "bbox of 3": _set(("annotations", 2, "bbox"), [0, 0, 1]),
    "bbox string value": _set(("annotations", 2, "bbox"), [0, 0, "1", 1]),
    "bbox bool value": _set(("annotations", 2, "bbox"), [0, 0, True, 1]),
    "bbox inf": _set(("annotations", 2, "bbox"), [0, 0, float("inf"), 1]),
    "bbox negative width": _set(("annotations", 0, "bbox"), [0, 0, -1, 1]),
    "bbox negative height": _set(("annotations", 0, "bbox"), [0, 0, 1, -0.5]),
    "area negative": _set(("annotations", 0, "area"), -1),
    "area null": _set(("annotations", 0, "area"), None),
    "area string": _set(("annotations", 0, "area"), "12"),
    "iscrowd 2": _set(("annotations", 0, "iscrowd"), 2),
    "iscrowd null": _set(("annotations", 0, "iscrowd"), None),
    "iscrowd list": _set(("annotations", 0, "iscrowd"), [0]),
    "iscrowd true": _set(("annotations", 0, "iscrowd"), True),
    "iscrowd false": _set(("annotations", 1, "iscrowd"), False),
    "polygon of 2 points": _set(("annotations", 0, "segmentation"), [[1, 2, 3, 4]]),
    "polygon odd": _set(("annotations", 0, "segmentation"), [[1, 2, 3, 4, 5, 6, 7]]),
    "polygon nan": _set(("annotations", 0, "segmentation"), [[1, 2, 3, 4, 5, float("nan")]]),
    "polygon string": _set(("annotations", 0, "segmentation"), [[1, 2, 3, 4, 5, "6"]]),
    "no polygon": _set(("annotations", 0, "segmentation"), []),
    "polygon not a list": _set(("annotations", 0, "segmentation"), [5]),
    "segmentation string": _set(("annotations", 0, "segmentation"), "mask"),
    "rle without counts": _set(("annotations", 1, "segmentation"), {"size": [8, 8]}),
    "rle empty": _set(("annotations", 1, "segmentation"), {}),
    "annotation not a dict": _set(("annotations", 1), None),
}

BENDS = {
    "as it is": lambda d: None,
    "no segmentation anywhere": lambda d: [a.pop("segmentation", None) for a in d["annotations"]],
    "no annotations": _set(("annotations",), []),
    "iscrowd 1.0": _set(("annotations", 0, "iscrowd"), 1.0),
    "huge int coordinate": _set(("annotations", 0, "bbox"), [10**30, 0, 1, 1]),
    "no neg ids key": _set(("images", 0, "neg_category_ids"), KeyError),
    "float height": _set(("images", 1, "height"), 7.5),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_a_broken_rule_fails_the_column_pass_and_the_file_is_refused(name):
    data = copy.deepcopy(good())
    BREAKS[name](data)
    assert not _records_pass(data["images"], data["annotations"], {1, 7})
    with pytest.raises(LTDetError):
        check_lvis_records(data, "gt.json")


@pytest.mark.parametrize("name", sorted(BENDS))
def test_a_file_within_the_rules_passes_the_column_pass(name):
    data = copy.deepcopy(good())
    BENDS[name](data)
    assert _records_pass(data["images"], data["annotations"], {1, 7})
    check_lvis_records(data, "gt.json")


def test_lvis_scale_columns_pass_and_one_bad_polygon_is_named():
    """1203 categories, 2000 images, 20k polygon annotations: the pass holds; a bad polygon in
    the last annotation sends the file to the record checks, which name that annotation."""
    cats = [{"id": c, "name": str(c)} for c in range(1, 1204)]
    images = [{"id": i, "height": 480, "width": 640, "neg_category_ids": [i % 1203 + 1]}
              for i in range(1, 2001)]
    anns = [{"id": k + 1, "image_id": k % 2000 + 1, "category_id": k % 1203 + 1,
             "bbox": [1.0, 2.0, 30.0, 40.0], "area": 1200.0,
             "segmentation": [[1.0, 2.0, 31.0, 2.0, 31.0, 42.0, 1.0, 42.0]]}
            for k in range(20000)]
    data = {"categories": cats, "images": images, "annotations": anns}
    assert _records_pass(images, anns, set(range(1, 1204)))
    check_lvis_records(data, "gt.json")
    anns[-1]["segmentation"] = [[1.0, 2.0, 31.0, 2.0]]
    with pytest.raises(LTDetError, match="annotation 20000 has a polygon with fewer than 3"):
        check_lvis_records(data, "gt.json")
