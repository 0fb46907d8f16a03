"""tools/train_net.py trains a few iterations on CPU and prints a real LVIS evaluation."""
import json
import math
import os
import subprocess
import sys

from conftest import tiny_data_opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _not_json(token):
    raise AssertionError(f"{token} is not JSON (undefined metrics are written as null)")


def test_eval_results_are_strict_json_with_null_for_undefined_metrics(tmp_path):
    from lt_det.evaluation import write_json

    path = tmp_path / "eval_results.json"
    path.write_text("old")
    write_json(str(path), {"bbox": {"AP": 0.5, "APr": float("nan"), "APf": float("inf")}})
    assert json.loads(path.read_text(), parse_constant=_not_json) == {
        "bbox": {"AP": 0.5, "APr": None, "APf": None}
    }
    assert os.listdir(tmp_path) == ["eval_results.json"]  # no temporary file left


def test_train_net_trains_and_prints_lvis_metrics(tiny_lvis, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
           "--config-file", os.path.join(ROOT, "configs", "synthetic", "softmax.yaml"),
           *tiny_data_opts(tiny_lvis), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "3",
           "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # detectron2 prints the results table: the LVIS metrics must be in it
    for key in ("APr", "APc", "APf", "AR@100"):  # synthetic configs keep 100 detections/image
        assert key in log, key
    results = json.loads((out / "eval_results.json").read_text(), parse_constant=_not_json)
    assert set(results) == {"bbox", "segm"}  # Mask R-CNN: box and mask AP
    for task in ("bbox", "segm"):
        for key in ("AP", "APr", "APc"):
            assert math.isfinite(results[task][key])
    assert (out / "model_final.pth").is_file()
    assert (out / "inference" / tiny_lvis["val"] / "per_class_ap_bbox.csv").is_file()
    # Everything the user reads after the run is in log.txt, including lt_det's own logger
    # (the sampler in use, the evaluator's table); nothing is coloured off a terminal; the
    # torch.jit deprecation of detectron2's imports is not shown.
    text = (out / "log.txt").read_text()
    assert "Using training sampler" in text and "lt_det.data.samplers" in text
    assert "LVIS bbox (fast backend" in text
    assert "\x1b[" not in text and "\x1b[" not in log
    assert "torch.jit.script" not in proc.stderr

    # --eval-only into the training folder leaves that run's files as they are and writes its
    # own config, log and results under inference/.
    before = {n: (out / n).read_bytes() for n in ("config.yaml", "eval_results.json", "log.txt")}
    cmd_eval = cmd + ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    cmd_eval.insert(cmd_eval.index("--config-file"), "--eval-only")
    proc = subprocess.run(cmd_eval, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, data in before.items():
        assert (out / name).read_bytes() == data, name
    again = json.loads((out / "inference" / "eval_results.json").read_text())
    assert again["bbox"]["AP"] == results["bbox"]["AP"]
    assert "LVIS bbox (fast backend" in (out / "inference" / "log.txt").read_text()
    assert (out / "inference" / "config.yaml").is_file()


def test_two_stage_config_trains_both_stages_and_resumes_across_them(tiny_lvis, tmp_path):
    """configs/synthetic/rfs_then_crt.yaml: stage 1 (RFS) into OUTPUT_DIR/stage1, then cRT
    from its final checkpoint into OUTPUT_DIR; --resume skips a finished stage 1."""
    out = tmp_path / "two"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"),
           "--config-file", os.path.join(ROOT, "configs", "synthetic", "rfs_then_crt.yaml"),
           *tiny_data_opts(tiny_lvis), "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2",
           "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def run(*extra):
        return subprocess.run(cmd[:4] + list(extra) + cmd[4:], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=3600)

    proc = run()
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stage1, stage2 = out / "stage1", out
    for d in (stage1, stage2):
        for name in ("model_final.pth", "metrics.json", "eval_results.json", "config.yaml"):
            assert (d / name).is_file(), (d, name)
    cfg1, cfg2 = (stage1 / "config.yaml").read_text(), (stage2 / "config.yaml").read_text()
    assert "METHOD: none" in cfg1 and "RepeatFactorTrainingSampler" in cfg1
    assert "METHOD: crt" in cfg2 and "ClassBalancedSampler" in cfg2
    assert f"WEIGHTS: {stage1 / 'model_final.pth'}" in cfg2
    # each stage logs once to the console and only into its own log.txt
    assert proc.stdout.count("Command line arguments:") == 2, proc.stdout[-3000:]
    log1, log2 = (stage1 / "log.txt").read_text(), (stage2 / "log.txt").read_text()
    assert "rfs_then_crt.yaml" not in log1 and "rfs_then_crt.yaml" in log2
    assert log1.count("Command line arguments:") == log2.count("Command line arguments:") == 1
    # a new command in the same OUTPUT_DIR is refused before anything trains
    again = run()
    assert again.returncode == 2 and "already holds" in again.stderr
    # stage 2 lost (interrupted before it wrote anything): --resume keeps stage 1 as it is
    stamp = (stage1 / "model_final.pth").stat().st_mtime_ns
    for name in ("model_final.pth", "last_checkpoint", "eval_results.json", "metrics.json"):
        (stage2 / name).unlink()
    resumed = run("--resume")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert (stage1 / "model_final.pth").stat().st_mtime_ns == stamp
    assert f"stage 1 is finished ({stage1}/model_final.pth)" in resumed.stdout
    assert (stage2 / "model_final.pth").is_file() and (stage2 / "eval_results.json").is_file()
