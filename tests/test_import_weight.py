"""What importing lt_det loads: the offline evaluator (``lt_det.evaluation``'s offline API and
``tools/lvis_eval.py``) runs without torch and detectron2, while every way of reaching the model
side still registers lt_det's components; JSON parsing gives the same results with orjson and
with the standard library."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

import lt_det.evaluation._json as json_io
from lt_det.evaluation import DetectionTable, LVISGroundTruth, evaluate_lvis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _tiny_files(tmp_path):
    """A 2-image LVIS-format ground truth and 3 results (one true positive per class)."""
    gt = {
        "images": [
            {"id": i, "height": 50, "width": 50, "neg_category_ids": [2] if i == 1 else [],
             "not_exhaustive_category_ids": []}
            for i in (1, 2)
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400.0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 20], "area": 600.0},
        ],
        "categories": [{"id": c, "name": f"c{c}", "frequency": "f"} for c in (1, 2)],
    }
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.5},
        {"image_id": 2, "category_id": 2, "bbox": [10, 10, 30, 20], "score": 0.7},
    ]
    gt_path, dt_path = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_path.write_text(json.dumps(gt))
    dt_path.write_text(json.dumps(results))
    return str(gt_path), str(dt_path)


def test_offline_evaluation_imports_neither_torch_nor_detectron2(tmp_path):
    gt_path, dt_path = _tiny_files(tmp_path)
    out = _run(
        """
        import sys
        import lt_det
        from lt_det.evaluation import (
            DetectionTable, LVISGroundTruth, evaluate_lvis, read_per_class, write_per_class,
        )
        r = evaluate_lvis(sys.argv[1], sys.argv[2], backend="fast")
        heavy = sorted(m for m in ("torch", "detectron2") if m in sys.modules)
        print("AP", r.metrics["AP"], "heavy", heavy)
        """,
        gt_path,
        dt_path,
    )
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    # lvis-api's precision is tp / (tp + fp + eps): a perfect detector scores 1 - 2e-16.
    assert words[0] == "AP" and float(words[1]) == pytest.approx(1.0, abs=1e-12)
    assert words[2:] == ["heavy", "[]"]


def test_lvis_eval_tool_imports_neither_torch_nor_detectron2(tmp_path):
    gt_path, dt_path = _tiny_files(tmp_path)
    code = """
        import runpy, sys
        sys.argv = ["tools/lvis_eval.py"] + sys.argv[1:]
        try:
            runpy.run_path("tools/lvis_eval.py", run_name="__main__")
        except SystemExit as e:
            assert not e.code, e.code
        print("heavy", sorted(m for m in ("torch", "detectron2") if m in sys.modules))
        """
    out = _run(code, "--help")
    assert out.returncode == 0, out.stderr
    assert "--class-chunk" in out.stdout and out.stdout.strip().endswith("heavy []")
    out = _run(code, "--gt", gt_path, "--results", dt_path, "--iou-type", "bbox")
    assert out.returncode == 0, out.stderr
    assert "  AP       100.000" in out.stdout and out.stdout.strip().endswith("heavy []")


REGISTERED = """
    from detectron2.modeling import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
    from lt_det.decouple.registry import LT_DECOUPLE_REGISTRY
    from lt_det.modeling.losses import LT_CLS_LOSS_REGISTRY
    names = {n for n, _ in LT_CLS_LOSS_REGISTRY}
    assert {"softmax_ce", "balanced_softmax", "balanced_sigmoid"} <= names, names
    assert "LTStandardROIHeads" in ROI_HEADS_REGISTRY and "LTCascadeROIHeads" in ROI_HEADS_REGISTRY
    assert "build_mnv2_fpn_backbone" in BACKBONE_REGISTRY
    assert "crt" in {n for n, _ in LT_DECOUPLE_REGISTRY}
    print("registered")
"""


@pytest.mark.parametrize(
    "entry",
    [
        "import lt_det\nadd = lt_det.add_lt_config",
        "from lt_det import add_lt_config",
        "from lt_det import balanced_softmax_loss",
        "import lt_det.modeling",
        "from lt_det.engine.defaults import load_config",
    ],
)
def test_model_side_registers_however_it_is_reached(entry):
    out = _run(entry + "\n" + textwrap.dedent(REGISTERED))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "registered"


def test_orjson_and_stdlib_json_give_the_same_tables(tmp_path, monkeypatch):
    gt_path, dt_path = _tiny_files(tmp_path)
    fast = (LVISGroundTruth(gt_path), DetectionTable.from_results(dt_path))
    metrics = evaluate_lvis(gt_path, dt_path).metrics
    monkeypatch.setattr(json_io, "orjson", None)
    assert json_io.json_backend() == "json"
    plain = (LVISGroundTruth(gt_path), DetectionTable.from_results(dt_path))
    assert fast[0].images == plain[0].images and fast[0].categories == plain[0].categories
    for field in ("image_id", "category_id", "score", "bbox"):
        assert (getattr(fast[1], field) == getattr(plain[1], field)).all()
    assert evaluate_lvis(gt_path, dt_path).metrics == metrics
