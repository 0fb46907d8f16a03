"""Kendall tau against hand-worked cases, and the agreement between benchmark runs and published
tables."""
import json
import math
import os
import subprocess
import sys

import pytest

from lt_det.errors import LTDetError
from lt_det.fidelity import (
    PUBLISHED_LVIS,
    TABLE_TASKS,
    format_agreement,
    kendall_tau,
    load_published,
    rank_agreement,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kendall_tau_hand_cases():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # pairs (0,1) and (0,2) agree, (1,2) disagrees: (2 - 1) / 3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # a tie in x: pair (0,1) counts for neither side; n0 = 3, ties_x = 1, ties_y = 0:
    # (2 - 0) / sqrt((3 - 1) * (3 - 0))
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))
    # one tie on each side, 4 items: concordant 4, discordant 0, n0 = 6:
    # pairs: (0,1) tie x; (2,3) tie y; the other 4 concordant -> 4 / sqrt(5 * 5)
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 3]) == pytest.approx(4 / 5)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(LTDetError, match="equal length >= 2"):
        kendall_tau([1], [1])


def _run(seed, values, task="segm"):
    return {"seed": seed, "preset": "default",
            "methods": [{"method": m, "label": m, "stage": 1, task: {"AP": ap, "APr": apr}}
                        for m, (ap, apr) in values.items()]}


TABLE = {"name": "t", "source": "hand", "dataset": "d",
         "rows": {"a": {"AP": 10.0, "APr": 1.0}, "b": {"AP": 20.0, "APr": 2.0},
                  "c": {"AP": 30.0, "APr": 3.0}, "z": {"AP": 5.0, "APr": 0.5}}}


def test_rank_agreement_over_common_methods():
    run = _run(0, {"a": (1, 3), "b": (2, 2), "c": (3, 1), "extra": (9, 9)})
    agr = rank_agreement(TABLE, run)
    assert agr["methods"] == ["a", "b", "c"]  # "z" not in the run, "extra" not published
    assert agr["AP"]["tau"] == 1.0 and agr["APr"]["tau"] == -1.0
    assert rank_agreement(TABLE, run, task="bbox")["AP"]["tau"] is None  # no box AP in the run
    text = format_agreement([TABLE], [run, _run(1, {"a": (1, 1), "b": (3, 2), "c": (2, 3)})])
    assert "| seed 0 | default | segm | -1.00 | +1.00 | a > b > c |" in text
    # seed 1: APr in the published order (+1); AP one swap of three: +1/3; mean APr 0, AP +0.67
    assert "| seed 1 | default | segm | +1.00 | +0.33 | c > b > a |" in text
    assert "| mean |  |  | +0.00 | +0.67 |  |" in text
    assert "published order by APr (d): c > b > a" in text
    # every APr 0 in a run (no order to compare): tau undefined, printed "-", left out of the mean
    text = format_agreement([TABLE], [run, _run(2, {"a": (1, 0), "b": (3, 0), "c": (2, 0)})])
    assert "| seed 2 | default | segm | - | +0.33 | a > b > c |" in text
    assert "| mean |  |  | -1.00 | +0.67 |  |" in text


ROW_KEYS = {"label", "AP", "APr", "APc", "APf", "APbbox"}


def test_shipped_tables_well_formed():
    from lt_det.benchmark import METHODS

    tables = load_published()
    assert len(tables) >= 2
    names = [t["name"] for t in tables]
    assert len(set(names)) == len(names), names
    for t in tables:
        where = t["name"]
        src = t["source"]  # repository + file (+ commit), or paper + table number
        assert (src.startswith("https://github.com/") and ".md" in src
                or src.startswith("https://arxiv.org/") and "Table" in src), where
        for k in ("dataset", "metric", "notes"):
            assert isinstance(t.get(k), str) and t[k].strip(), (where, k)
        assert t.get("task", "segm") in TABLE_TASKS, where
        for method, row in t["rows"].items():
            assert method in METHODS, (where, method)  # a benchmark method lt_det has
            assert set(row) <= ROW_KEYS and "AP" in row, (where, method, sorted(row))
            assert isinstance(row["label"], str) and row["label"].strip(), (where, method)
            for k, v in row.items():
                if k != "label":
                    assert isinstance(v, (int, float)) and 0.0 <= v <= 100.0, (where, method, k)
        assert len(t["rows"]) >= 2, where  # tau needs two common methods
        assert any(m in METHODS for m in t["rows"]), where


def test_unregistered_method_names_are_kept_and_skipped(tmp_path):
    pub = tmp_path / "pub.json"
    pub.write_text(json.dumps({"tables": [{"name": "t", "source": "s", "rows": {
        "softmax": {"AP": 10.0}, "rfs": {"AP": 20.0}, "not_registered_yet": {"AP": 30.0}}}]}))
    (table,) = load_published(str(pub))
    assert "not_registered_yet" in table["rows"]
    run = _run(0, {"softmax": (1, 0), "rfs": (2, 0)})
    agr = rank_agreement(table, run, metrics=("AP",))
    assert agr["methods"] == ["softmax", "rfs"] and agr["AP"]["tau"] == 1.0


def test_table_task_box_ap(tmp_path):
    """A table of box AP only ("task": "bbox") is compared with the run's box AP whatever --task
    says; the task column shows which one."""
    run = _run(0, {"a": (1, 1), "b": (2, 2), "c": (3, 3)})  # segm: a < b < c
    for m, ap in zip(run["methods"], (3.0, 2.0, 1.0)):  # bbox: the reverse
        m["bbox"] = {"AP": ap, "APr": ap}
    box_table = dict(TABLE, task="bbox")
    assert rank_agreement(TABLE, run)["AP"]["tau"] == 1.0
    agr = rank_agreement(box_table, run)
    assert agr["task"] == "bbox" and agr["AP"]["tau"] == -1.0
    assert rank_agreement(box_table, run, task="segm")["AP"]["tau"] == -1.0
    text = format_agreement([TABLE, box_table], [run])
    assert "| seed 0 | default | segm | +1.00 | +1.00 | c > b > a |" in text
    assert "| seed 0 | default | bbox | -1.00 | -1.00 | a > b > c |" in text
    pub = tmp_path / "pub.json"
    pub.write_text(json.dumps({"tables": [dict(TABLE, task="mask")]}))
    with pytest.raises(LTDetError, match="task 'mask' is not one of"):
        load_published(str(pub))


def test_cli_prints_every_shipped_table(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    run = _run(1, {"softmax": (16.0, 0.5), "rfs": (22.0, 11.0), "bags": (23.0, 13.0)})
    for m in run["methods"]:
        m["bbox"] = dict(m["segm"])
    (d / "results.json").write_text(json.dumps(run))
    tool = os.path.join(ROOT, "tools", "lt_fidelity.py")
    out = subprocess.run([sys.executable, tool, str(d)], capture_output=True, text=True,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    for t in load_published():
        assert f"### {t['name']}" in out.stdout, t["name"]
    # the BAGS Faster R-CNN table: box AP only (no APr), compared on the run's bbox, ordered by AP
    assert "| seed 1 | default | bbox | - | +1.00 | bags > rfs > softmax |" in out.stdout
    assert "published order by AP (LVIS v0.5 val): bags > rfs > softmax" in out.stdout


def test_cli_and_bad_input(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(_run(3, {"a": (1, 1), "b": (2, 2)})))
    pub = tmp_path / "pub.json"
    pub.write_text(json.dumps({"tables": [TABLE]}))
    tool = os.path.join(ROOT, "tools", "lt_fidelity.py")
    ok = subprocess.run([sys.executable, tool, "--published", str(pub), str(d)],
                        capture_output=True, text=True, cwd=str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert "| seed 3 | default | segm | +1.00 | +1.00 | b > a |" in ok.stdout
    pub.write_text(json.dumps({"tables": [{"name": "x", "source": "s",
                                           "rows": {"a": {"AP": "high"}}}]}))
    bad = subprocess.run([sys.executable, tool, "--published", str(pub), str(d)],
                         capture_output=True, text=True, cwd=str(tmp_path))
    assert bad.returncode == 2
    assert bad.stderr.startswith("lt_det: error: ") and "['AP'] must be numbers" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = subprocess.run([sys.executable, tool, str(tmp_path / "nope")], capture_output=True,
                             text=True, cwd=str(tmp_path))
    assert missing.returncode == 2 and "results.json" in missing.stderr
    assert os.path.isfile(PUBLISHED_LVIS)
