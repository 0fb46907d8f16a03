"""tools/bench_gpu.sh without a GPU: it parses, refuses cleanly (one line, exit 2) where CUDA is
missing or an argument is bad, lists its steps with --dry-run, and builds its table from the
reports that tools/bench_heads.py writes."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "bench_gpu.sh")
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, **env):
    return subprocess.run(
        ["bash", SCRIPT, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable, **env),
        timeout=120,
    )


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_refuses_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "reports"
    r = _run("--out", str(out))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no CUDA device" in r.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["--iters", "x"], "--iters 'x'"),
        (["--iters", "0"], "--iters must be at least 1"),
        (["--budget", "10"], "--budget 10 is too short"),
        (["--frobnicate"], "unknown argument '--frobnicate'"),
        (["--out"], "--out needs a folder"),
        (["--table", "."], "no steps.tsv"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, words):
    r = _run(*args)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


def test_an_existing_folder_is_refused_and_left_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    r = _run("--out", str(tmp_path), "--dry-run")
    assert r.returncode == 2 and "not an empty folder" in r.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_dry_run_lists_every_step_with_existing_tools_and_a_budget_under_8_minutes(tmp_path):
    r = _run("--dry-run", "--out", str(tmp_path / "r"), "--iters", "40")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines()[1:] if line.strip()]
    steps = [line.split()[0] for line in lines]
    assert steps == ["heads", "whitening", "infer", "data", "train", "nccl"]
    for line in lines:
        for word in line.split():
            if word.startswith("tools/"):
                assert os.path.exists(os.path.join(ROOT, word)), word
    train = lines[steps.index("train")]
    assert "MODEL.DEVICE cuda" in train and "SOLVER.MAX_ITER 40" in train
    assert "--devices cuda" in lines[0] and "--devices cuda" in lines[2]
    assert "budget 470 s" in r.stdout  # 8 minutes = 480 s, with room for the table
    assert not (tmp_path / "r").exists()


def _bench_heads():
    spec = importlib.util.spec_from_file_location(
        "bench_heads", os.path.join(ROOT, "tools", "bench_heads.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_is_built_from_the_reports_and_a_failed_step_fails_the_run(tmp_path):
    bh = _bench_heads()
    regime = bh.time_regime(rois=16, classes=5, dtype="float32", device="cpu", repeats=1, warmup=0)
    regime["allocator"] = "default"
    (tmp_path / "bench_heads.json").write_text(json.dumps([regime]))
    whitening = bh.bench_whitening(
        rois=16, features=8, classes=5, group_sizes=[4], repeats=1, warmup=0
    )
    (tmp_path / "bench_whitening.json").write_text(json.dumps([whitening]))
    (tmp_path / "nccl.log").write_text("NCCL_OK world_size=2 backend=nccl sum=3\n")
    steps = ["heads\tok\t3", "whitening\tok\t1", "nccl\tok\t2"]
    (tmp_path / "steps.tsv").write_text("\n".join(steps) + "\n")
    r = _run("--table", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "| heads | ok | 3 | softmax CE (reference), 16 x 6, float32 |" in r.stdout
    assert "ldam, 16 x 6, float32" in r.stdout
    assert "| whitening | ok | 1 | plain head, 16 x 8, cpu |" in r.stdout
    assert "whitening, groups of 4, 16 x 8, cpu" in r.stdout
    assert "world_size=2 backend=nccl" in r.stdout
    (tmp_path / "steps.tsv").write_text("\n".join(steps + ["train\tstopped at 180 s\t180"]) + "\n")
    r = _run("--table", str(tmp_path))
    assert r.returncode == 1 and "| train | stopped at 180 s | 180 | - | - |" in r.stdout
