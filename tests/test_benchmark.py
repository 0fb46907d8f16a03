"""The synthetic benchmark (lt_det.benchmark, tools/lt_benchmark.py): a seconds-long run in which
every default method runs and the outputs are complete and finite; the table, the summary over
seeds, the stage-1 cache, stopping and resuming, and the ETA estimator."""
import json
import math
import os
import shutil
import subprocess
import sys

import torch

from lt_det.benchmark import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_end_to_end_tiny(tmp_path):
    # Run from a folder other than the repo, with a relative --out: paths resolve against it.
    out = tmp_path / "bench"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lt_benchmark.py"), "--preset", "tiny",
           "--iters", "4", "--stage2-iters", "2", "--stage1-cache", "stage1_cache"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run(cmd + ["--out", "bench"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "ETA" in proc.stdout
    for name in ("results.json", "results.md", "ap_vs_frequency.png", "classifier_norms.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    defaults = {m for m in METHODS if METHODS[m].default}
    assert set(rows) == defaults
    for name, row in rows.items():
        # Mask R-CNN: mask AP and box AP, each also under AP-fixed
        for task in ("segm", "bbox", "segm-fixed", "bbox-fixed"):
            for key in ("AP", "APr", "APc"):
                assert math.isfinite(row[task][key]), (name, task, key)
        assert math.isfinite(row["bbox-fixed"]["APpool"]), name  # box AP-pool beside AP-fixed
        assert row["wall_s"] > 0 and row["cached"] is False
        assert row["stage1"] == ("rfs" if METHODS[name].stage == 2 else None)
    table = (out / "results.md").read_text()
    assert all(METHODS[m].label in table for m in defaults)
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert header[2:9] == ["mask AP", "APr", "APc", "APf", "AP-fixed", "box AP", "APr"]
    # a finished benchmark is never silently overwritten
    again = subprocess.run(cmd + ["--out", "bench"], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=1800)
    assert again.returncode == 2 and "already holds a benchmark" in again.stderr
    # another benchmark on the same data and settings reuses the stage-1 run from the cache
    other = tmp_path / "bench2"
    reuse = subprocess.run(cmd + ["--out", str(other), "--data-dir", str(out / "data"),
                                  "--methods", "crt"],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=1800)
    assert reuse.returncode == 0, (reuse.stdout + reuse.stderr)[-3000:]
    assert "reusing stage-1 run" in reuse.stdout
    rows2 = {r["method"]: r for r in json.loads((other / "results.json").read_text())["methods"]}
    assert rows2["rfs"]["cached"] is True and rows2["crt"]["cached"] is False
    assert rows2["rfs"]["segm"] == rows["rfs"]["segm"]
    assert (other / "runs" / "rfs" / "model_final.pth").read_bytes() == \
        (out / "runs" / "rfs" / "model_final.pth").read_bytes()
    assert "(cached)" in (other / "results.md").read_text()


def test_format_table_columns():
    from lt_det.benchmark import format_table

    rows = [{"method": "a", "label": "A", "stage": 1, "stage1": None, "wall_s": 3.0,
             "segm": {"AP": 10.0, "APr": 1.0, "APc": 2.0, "APf": 3.0}, "segm-fixed": {"AP": 11.0},
             "bbox": {"AP": 20.0, "APr": 4.0, "APc": 5.0, "APf": 6.0}, "cached": True}]
    text = format_table(rows)
    cells = [c.strip() for c in text.splitlines()[2].strip("|").split("|")]
    assert cells == ["A", "1", "10.0", "1.0", "2.0", "3.0", "11.0", "20.0", "4.0", "5.0", "6.0",
                     "-", "3 (cached)"]
    box_only = [{k: v for k, v in rows[0].items() if not k.startswith("segm")}]
    assert "mask AP" not in format_table(box_only)
    # AP-pool (bbox) follows the box AP-fixed column when the runs have it
    pooled = [dict(rows[0], **{"bbox-fixed": {"AP": 21.0, "APpool": 17.5}})]
    lines = format_table(pooled).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header[-3:] == ["AP-fixed", "AP-pool", "wall (s)"]
    assert cells[-3:] == ["21.0", "17.5", "3 (cached)"]


def test_seeds_are_checked_before_anything_runs(tmp_path):
    import pytest

    from lt_det.benchmark import run_benchmark_seeds
    from lt_det.errors import LTDetError

    with pytest.raises(LTDetError, match="distinct"):
        run_benchmark_seeds(str(tmp_path / "b"), [1, 1], preset="tiny")
    with pytest.raises(LTDetError, match="data_dir is one dataset"):
        run_benchmark_seeds(str(tmp_path / "b"), [0, 1], data_dir=str(tmp_path))
    (tmp_path / "b" / "seed1").mkdir(parents=True)
    (tmp_path / "b" / "seed1" / "results.json").write_text("{}")
    with pytest.raises(LTDetError, match="already holds a benchmark"):
        run_benchmark_seeds(str(tmp_path / "b"), [0, 1], preset="tiny")
    assert not (tmp_path / "b" / "seed0").exists()


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


def test_stage1_must_be_a_stage1_method(tmp_path):
    import pytest

    from lt_det.benchmark import run_benchmark
    from lt_det.errors import LTDetError

    with pytest.raises(LTDetError, match="stage1='crt' is not a stage-1 benchmark method"):
        run_benchmark(str(tmp_path / "b"), methods=["crt"], stage1="crt", preset="tiny")
    assert not (tmp_path / "b").exists()


def test_stage2_runs_start_from_the_chosen_stage1(tmp_path):
    from lt_det.benchmark import _Job, _job_command

    data = {"train_json": "t.json", "val_json": "v.json", "train_image_root": "t",
            "val_image_root": "v", "num_classes": 3}
    jobs = {"softmax": _Job(METHODS["softmax"], str(tmp_path / "softmax"), 4),
            "crt": _Job(METHODS["crt"], str(tmp_path / "crt"), 2, stage1="softmax")}
    cmd = _job_command(jobs["crt"], data, 0, jobs)
    assert cmd[cmd.index("MODEL.WEIGHTS") + 1] == str(tmp_path / "softmax" / "model_final.pth")
    assert "MODEL.WEIGHTS" not in _job_command(jobs["softmax"], data, 0, jobs)


def test_summarize_runs_means_and_margins(tmp_path):
    from lt_det.benchmark import summarize_runs

    def run(seed, soft, rfs, crt):
        rows = [{"method": n, "label": n, "stage": s, "bbox": dict(zip(("AP", "APr"), v))}
                for n, s, v in (("softmax", 1, soft), ("rfs", 1, rfs), ("crt", 2, crt))]
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"seed": seed, "methods": rows}))
        return str(d)

    text = summarize_runs([run(1, (40, 10), (50, 20), (55, 30)), run(2, (42, 12), (52, 22),
                                                                        (53, 23))])
    # AP-fixed and AP-pool columns: mean (min-max) of what the runs hold
    one = json.loads((tmp_path / "s1" / "results.json").read_text())
    for i, m in enumerate(one["methods"]):
        m["bbox-fixed"] = {"AP": 30.0 + i, "APpool": 20.0 + i}
    (tmp_path / "s1" / "results.json").write_text(json.dumps(one))
    pooled = summarize_runs([str(tmp_path / "s1")])
    assert "| AP | APr | APc | APf | AP-fixed | AP-pool |" in pooled
    assert "| crt | 55.0 (55.0-55.0) | 30.0 (30.0-30.0) | - | - | 32.0 (32.0-32.0) | " \
           "22.0 (22.0-22.0) |" in pooled
    # a column only some runs hold (an older version's results) says over how many runs
    both = summarize_runs([str(tmp_path / "s1"), str(tmp_path / "s2")])
    assert "| crt | 54.0 (53.0-55.0) | 26.5 (23.0-30.0) | - | - | 32.0 (32.0-32.0; 1 of 2 " \
           "runs) | 22.0 (22.0-22.0; 1 of 2 runs) |" in both
    assert "| crt | 54.0 (53.0-55.0) | 26.5 (23.0-30.0) | - | - |" in text
    assert "seeds 1, 2; box AP" in text
    assert "seed 1: best stage 2 by APr = crt (55.0 AP / 30.0 APr): vs softmax CE +20.0 APr " \
           "+15.0 AP; vs RFS +10.0 APr +5.0 AP" in text
    assert "seed 2: best stage 2 by APr = crt (53.0 AP / 23.0 APr): vs softmax CE +11.0 APr " \
           "+11.0 AP; vs RFS +1.0 APr +1.0 AP" in text


def test_summarize_runs_refuses_or_groups_different_settings(tmp_path):
    import pytest

    from lt_det.benchmark import summarize_runs
    from lt_det.errors import LTDetError

    def run(name, iters, ap):
        d = tmp_path / name
        d.mkdir()
        rows = [{"method": "rfs", "label": "rfs", "stage": 1, "bbox": {"AP": ap, "APr": ap}}]
        (d / "results.json").write_text(json.dumps(
            {"seed": 0, "preset": "default", "iters": iters, "stage2_iters": 200,
             "stage1": "rfs", "methods": rows}))
        return str(d)

    short, long_ = run("short", 20, 0.1), run("long", 500, 63.7)
    with pytest.raises(LTDetError, match="different settings.*iters=20.*iters=500"):
        summarize_runs([short, long_])
    text = summarize_runs([short, long_], group=True)
    assert "### preset=default, iters=20" in text and "### preset=default, iters=500" in text
    assert "| rfs | 0.1 (0.1-0.1) |" in text and "| rfs | 63.7 (63.7-63.7) |" in text
    assert "0.1-63.7" not in text


def test_ap_fixed_file_of_an_older_version_is_recomputed(tmp_path):
    # A cached stage-1 run may hold eval_results_ap_fixed.json from before AP-pool existed: it is
    # recomputed from the run's detections; a complete file is reused as it is.
    from lt_det.benchmark import AP_FIXED_FILE, _evaluate_ap_fixed
    from test_ap_pool import DETS, GT

    val = tmp_path / "val.json"
    val.write_text(json.dumps(GT))
    inf = tmp_path / "run" / "inference" / "lt_synth_val"
    inf.mkdir(parents=True)
    (inf / "lvis_instances_results.json").write_text(json.dumps(
        [{"image_id": i, "category_id": c, "bbox": list(b), "score": s} for i, c, b, s in DETS]))
    stored = tmp_path / "run" / AP_FIXED_FILE
    stored.write_text(json.dumps({"bbox-fixed": {"AP": 1.0}}))
    got = _evaluate_ap_fixed(str(tmp_path / "run"), str(val), {"bbox": {"AP": 0.0}})
    assert 0 <= got["bbox-fixed"]["APpool"] <= 100 and got["bbox-fixed"]["AP"] != 1.0
    assert json.loads(stored.read_text()) == got
    complete = {"bbox-fixed": {"AP": 2.0, "APpool": 3.0}}
    stored.write_text(json.dumps(complete))
    assert _evaluate_ap_fixed(str(tmp_path / "run"), str(val), {"bbox": {"AP": 0.0}}) == complete


def test_cached_stage1_run_of_an_older_version_gets_ap_pool(tmp_path):
    # A stage-1 cache entry written before AP-pool existed: reusing it completes its AP-fixed
    # file from its detections (the row has the columns of a trained one); the entry's files,
    # hard-linked from the run that filled it, are replaced, not rewritten in place.
    from lt_det.benchmark import AP_FIXED_FILE, METHODS, _Job, _load_cached_stage1
    from test_ap_pool import DETS, GT

    val = tmp_path / "val.json"
    val.write_text(json.dumps(GT))
    origin, entry = tmp_path / "origin", tmp_path / "cache" / "softmax-seed0-key"
    inf = origin / "inference" / "lt_synth_val"
    inf.mkdir(parents=True)
    (inf / "lvis_instances_results.json").write_text(json.dumps(
        [{"image_id": i, "category_id": c, "bbox": list(b), "score": s} for i, c, b, s in DETS]))
    (origin / "eval_results.json").write_text(json.dumps({"bbox": {"AP": 1.0}}))
    old = {"bbox-fixed": {"AP": 1.0}}
    (origin / AP_FIXED_FILE).write_text(json.dumps(old))
    shutil.copytree(origin, entry, copy_function=os.link)
    (entry / "cache_info.json").write_text(json.dumps({"method": "softmax", "wall_s": 5.0}))
    job = _Job(spec=METHODS["softmax"], out_dir=str(tmp_path / "out"), iters=2,
               cache_entry=str(entry))
    assert _load_cached_stage1(job, str(val))
    assert job.cached and job.done and job.wall == 5.0
    assert 0 <= job.results["bbox-fixed"]["APpool"] <= 100 and job.results["bbox"]["AP"] == 1.0
    for d in (entry, tmp_path / "out"):
        assert json.loads((d / AP_FIXED_FILE).read_text()) == {
            "bbox-fixed": job.results["bbox-fixed"]}
    assert json.loads((origin / AP_FIXED_FILE).read_text()) == old
    # no entry: the run trains
    assert not _load_cached_stage1(_Job(spec=METHODS["softmax"], out_dir=str(tmp_path / "o2"),
                                        iters=2, cache_entry=str(tmp_path / "none")), str(val))


def test_folders_of_one_seed_are_one_run(tmp_path):
    # A benchmark split over several --out folders (methods added later with --stage1-cache) is
    # one run per seed for the summary and the fidelity tool; a method in two folders is refused.
    import pytest

    from lt_det.benchmark import summarize_runs
    from lt_det.errors import LTDetError
    from lt_det.fidelity import load_runs

    def out(name, seed, rows):
        d = tmp_path / name
        d.mkdir()
        methods = [{"method": n, "label": n, "stage": 1, "segm": {"AP": ap, "APr": ap / 2}}
                   for n, ap in rows]
        (d / "results.json").write_text(json.dumps(
            {"seed": seed, "preset": "default", "iters": 400, "stage2_iters": 200,
             "stage1": "rfs", "methods": methods}))
        return str(d)

    a = out("s0", 0, [("softmax", 40.0), ("rfs", 50.0)])
    b = out("s0_more", 0, [("eql", 44.0)])
    c = out("s1", 1, [("softmax", 42.0), ("rfs", 54.0), ("eql", 46.0)])
    runs = load_runs([a, b, c])
    assert [r["seed"] for r in runs] == [0, 1]
    assert [m["method"] for m in runs[0]["methods"]] == ["softmax", "rfs", "eql"]
    text = summarize_runs([a, b, c])
    assert "(2 runs, seeds 0, 1; mask AP)" in text
    assert "| eql | 45.0 (44.0-46.0) | 22.5 (22.0-23.0) |" in text
    assert "of 2 runs" not in text
    # the same stage-1 run in two folders (from --stage1-cache) counts once; a different one
    # is refused
    same = out("s0_cached", 0, [("rfs", 50.0)])
    assert [m["method"] for m in load_runs([a, same])[0]["methods"]] == ["softmax", "rfs"]
    dup = out("s0_again", 0, [("rfs", 51.0)])
    with pytest.raises(LTDetError, match="'rfs' of seed 0 has different results in .*s0.*s0_again"):
        summarize_runs([a, dup])
    broken = tmp_path / "s0_broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"seed": 0, "meth')
    with pytest.raises(LTDetError, match="s0_broken.*is not a results.json of lt_benchmark"):
        load_runs([a, str(broken)])


# tools/train_net.py with a hook that marks iteration 1 of a run and holds it there until the run
# gets its signal (so the signal arrives inside the training iterations, whatever the speed).
HOLD_DRIVER = '''
import os, sys, time
from detectron2.engine import HookBase
from lt_det.engine import LTTrainer


class HoldAtOne(HookBase):
    def after_step(self):
        if self.trainer.iter == 1:
            name = os.path.basename(self.trainer.cfg.OUTPUT_DIR)
            with open(os.path.join(os.environ["LT_TEST_MARKS"], name), "w") as f:
                f.write(str(os.getpid()))
            while self.trainer._stop_on_signal.signum is None:
                time.sleep(0.1)


build_hooks = LTTrainer.build_hooks
LTTrainer.build_hooks = lambda self: [HoldAtOne()] + build_hooks(self)
sys.argv = [os.environ["LT_TEST_TRAIN_NET"]] + sys.argv[1:]
exec(compile(open(sys.argv[0]).read(), sys.argv[0], "exec"), {"__name__": "__main__"})
'''


def test_ctrl_c_stops_the_benchmark_runs_with_a_checkpoint_and_resume_continues(tmp_path):
    import signal
    import time

    driver = tmp_path / "train_net_driver.py"
    driver.write_text(HOLD_DRIVER)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "bench"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "lt_benchmark.py"), "--preset", "tiny",
           "--iters", "4", "--methods", "softmax", "--parallel", "1", "--out", str(out),
           "--train-net", str(driver), "--configs-dir", os.path.join(ROOT, "configs")]
    env = dict(os.environ, PYTHONPATH=ROOT, LT_TEST_MARKS=str(marks),
               LT_TEST_TRAIN_NET=os.path.join(ROOT, "tools", "train_net.py"))
    bench = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=str(tmp_path), start_new_session=True)
    try:
        deadline = time.monotonic() + 1800  # a hang guard only
        while not (marks / "softmax").exists():
            assert bench.poll() is None, bench.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never reached iteration 1"
            time.sleep(0.2)
        os.killpg(bench.pid, signal.SIGINT)  # Ctrl-C in the terminal of `make demo`
        stdout, stderr = bench.communicate(timeout=1800)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 128 + signal.SIGINT, stderr[-3000:]
    run = out / "runs" / "softmax"
    run_log = (run / "stdout.txt").read_text()
    for text in (stdout + stderr, run_log):
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    lines = [x for x in stderr.splitlines() if x.startswith("lt_det: error:")]
    assert lines == [
        "lt_det: error: benchmark stopped by SIGINT (runs stopped with a checkpoint: softmax at "
        "iteration 1). Continue it with the same command and --resume (make demo "
        "DEMO_ARGS=--resume, make benchmark BENCH_ARGS=--resume)."], stderr[-3000:]
    assert [x for x in run_log.splitlines() if x.startswith("lt_det: error:")] == [
        f"lt_det: error: stopped by SIGINT at iteration 1; checkpoint "
        f"'{run / 'model_0000001.pth'}' was saved. --resume continues from it."]
    assert (run / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "results.json").exists()

    # the next run without --resume keeps the folder and names --resume
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                           timeout=1800)
    assert again.returncode == 2, again.stderr[-3000:]
    assert "already holds runs of ['softmax'] of a benchmark that did not finish" in again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert (run / "last_checkpoint").read_text() == "model_0000001.pth"

    # --resume continues the stopped run from its checkpoint and finishes the benchmark
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "softmax: continuing from its checkpoint" in done.stdout
    log = (run / "log.txt").read_text()
    assert "Starting training from iteration 0" in log
    assert "Starting training from iteration 2" in log
    final = torch.load(str(run / "model_final.pth"), weights_only=False, map_location="cpu")
    assert final["iteration"] == 3
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())["methods"]}
    assert math.isfinite(rows["softmax"]["segm"]["AP"]) and rows["softmax"]["wall_s"] > 0
    # another --resume with other settings is refused
    other_iters = ["8" if x == "4" else x for x in cmd] + ["--resume"]
    other = subprocess.run(other_iters, capture_output=True, text=True, env=env,
                           cwd=str(tmp_path), timeout=1800)
    assert other.returncode == 2 and "other settings (iters 4 there, 8 now)" in other.stderr


def test_eta_comes_from_the_measured_pace():
    # A fake clock drives two stage-1 runs and a stage-2 run that waits for one of them, two
    # at a time; every expected value is worked out by hand from the readings.
    from lt_det.benchmark import Eta, EtaEstimator, _format_eta

    now = [0.0]
    eta = EtaEstimator({"rfs": (1, 100, None), "softmax": (1, 100, None), "crt": (2, 50, "rfs")},
                       parallel=2, clock=lambda: now[0])

    def at(t, **iterations):
        now[0] = t
        for name, it in iterations.items():
            eta.progress(name, it)

    eta.started("rfs")
    eta.started("softmax")
    at(25, rfs=20, softmax=20)
    assert eta.eta() is None  # one reading per run: no pace yet
    assert _format_eta(eta.eta()) == "ETA (measuring the pace)"
    at(45, rfs=40, softmax=40)
    # stage 1: 20 iterations in 20 s -> 1 s/it; stage 2 takes it until measured. Start-up:
    # 25 s - 20 it x 1 s = 5 s. No run has finished: evaluation unmeasured (a lower bound).
    # rfs, softmax: 60 it left -> 60 s; crt: starts after rfs at 60 s, 5 + 50 x 1 -> 115 s.
    assert eta.eta() == Eta(115.0, True)
    assert _format_eta(eta.eta()) == "ETA >=1:55"
    at(105, rfs=100, softmax=100)
    now[0] = 115.0
    eta.finished("rfs")  # tail (evaluation): 115 - 105 = 10 s
    eta.started("crt")
    # softmax evaluated for 10 s of its 10 s tail; crt: 5 s start-up + 50 x 1 + 10 s tail
    assert eta.eta() == Eta(65.0, False)
    assert _format_eta(eta.eta()) == "ETA 1:05"
    now[0] = 120.0
    eta.finished("softmax")  # tail 15 s: mean tail 12.5 s
    at(125, crt=10)
    at(130, crt=20)  # stage 2: 10 it in 5 s -> 0.5 s/it; 30 it left -> 15 s + 12.5 s
    assert eta.eta() == Eta(27.5, False)
    now[0] = 150.0
    eta.finished("crt")
    assert eta.eta() == Eta(0.0, False)


def test_eta_of_runs_reused_and_evaluation_only():
    # Runs reused from the cache count as done (no time); an evaluation-only run takes the
    # wall time of those measured, else start-up + tail.
    from lt_det.benchmark import Eta, EtaEstimator

    now = [0.0]
    eta = EtaEstimator({"rfs": (1, 10, None), "tau_norm": (2, 0, "rfs"),
                        "norcal": (2, 0, "rfs")}, parallel=1, clock=lambda: now[0])
    eta.started("rfs")
    for t, it in ((4, 2), (6, 4), (12, 10)):  # start-up 4 - 2 x 1 = 2 s, pace 1 s/it
        now[0] = t
        eta.progress("rfs", it)
    now[0] = 15.0
    eta.finished("rfs")  # tail 3 s
    eta.started("tau_norm")
    now[0] = 16.0
    assert eta.eta() == Eta((2 + 3 - 1) + (2 + 3), True)  # no eval-only run measured yet
    now[0] = 22.0
    eta.finished("tau_norm")  # 7 s
    assert eta.eta() == Eta(7.0, False)
    cached = EtaEstimator({"rfs": (1, 10, None)}, parallel=2, clock=lambda: 0.0)
    cached.finished("rfs", measured=False)
    assert cached.eta() == Eta(0.0, False)
