"""A seconds-long version of the main job (tools/lt_benchmark.py): every method runs, outputs are
complete and finite."""
import json
import math
import os
import subprocess
import sys

from lt_det.benchmark import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_end_to_end_tiny(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lt_benchmark.py"), "--preset", "tiny",
           "--iters", "4", "--stage2-iters", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "ETA" in proc.stdout
    for name in ("results.json", "results.md", "ap_vs_frequency.png", "classifier_norms.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    defaults = {m for m in METHODS if METHODS[m].default}
    assert set(rows) == defaults
    for name, row in rows.items():
        for key in ("AP", "APr", "APc"):
            assert math.isfinite(row["bbox"][key]), (name, key)
        assert row["wall_s"] > 0
    table = (out / "results.md").read_text()
    assert all(METHODS[m].label in table for m in defaults)
    # a finished benchmark is never silently overwritten
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and "already holds a benchmark" in again.stderr


def test_earlier_runs_are_kept_without_overwrite(tmp_path):
    import pytest

    from lt_det.benchmark import run_benchmark
    from lt_det.errors import LTDetError

    run = tmp_path / "runs" / "softmax"
    run.mkdir(parents=True)
    (run / "model_final.pth").write_text("earlier run")
    with pytest.raises(LTDetError, match="already holds runs of \\['softmax'\\]"):
        run_benchmark(str(tmp_path), methods=["softmax"], preset="tiny")
    assert (run / "model_final.pth").read_text() == "earlier run"
    assert not (tmp_path / "data").exists()  # failed before doing anything
