"""The README runs as written: its examples, its snippets, and its commands in order (tiny data).

The command walk takes every line of the README's ```bash blocks, in order, and runs it in a
fresh folder (tools/, configs/ and examples/ linked in), with the sizes turned down through the
flags and config keys the README itself documents: ``--preset tiny`` for the data,
``SOLVER.MAX_ITER 2 SOLVER.IMS_PER_BATCH 2 MODEL.ROI_HEADS.NUM_CLASSES k`` after training
commands, ``--preset tiny --iters 2 --stage2-iters 1`` for the benchmark (one method). Commands
that need real LVIS or set up the environment are checked for the files they name instead.
"""
import contextlib
import io
import json
import math
import os
import re
import runpy
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
EXAMPLES = os.path.join(ROOT, "examples")


def _run_script(path: str, args, cwd: str) -> str:
    """Run a tool / example as ``python path args`` would, in this process; returns stdout."""
    argv, old_cwd = sys.argv, os.getcwd()
    out = io.StringIO()
    try:
        os.chdir(cwd)
        sys.argv = [path, *args]
        with contextlib.redirect_stdout(out):
            try:
                runpy.run_path(path, run_name="__main__")
            except SystemExit as e:
                assert e.code in (None, 0), f"{path} {args} exited with {e.code}:\n{out.getvalue()}"
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
    return out.getvalue()


def _blocks(lang: str):
    with open(README) as f:
        return re.findall(rf"```{lang}\n(.*?)```", f.read(), re.S)


def _losses(text: str):
    m = re.search(r"losses: (\{.*\})", text)
    return {k: float(v) for k, v in re.findall(r"'(\w+)': ([-\d.e]+)", m.group(1))}


def test_examples_run(tmp_path):
    out = _run_script(os.path.join(EXAMPLES, "custom_detector.py"), [], str(tmp_path))
    assert set(_losses(out)) == {"loss_cls", "loss_box_reg"}
    assert all(math.isfinite(v) for v in _losses(out).values())
    assert re.search(r"detections per image: \[\d+, \d+\]", out)

    out = _run_script(os.path.join(EXAMPLES, "torchvision_adapter.py"), [], str(tmp_path))
    assert "loss_classifier" in _losses(out)
    assert all(math.isfinite(v) for v in _losses(out).values())

    out = _run_script(
        os.path.join(EXAMPLES, "register_dataset.py"), ["--out", "toy"], str(tmp_path)
    )
    # three images hold class 1, one holds class 2: both rare (<= 10 training images)
    assert "training images per class: [3, 1]" in out
    assert "frequency groups: ['r', 'r']" in out
    assert (tmp_path / "toy" / "train.json").is_file()


def test_readme_python_snippets_are_the_examples():
    """Every line of a README python snippet is a line of a runnable file under examples/."""
    lines = set()
    for name in os.listdir(EXAMPLES):
        if name.endswith(".py"):
            with open(os.path.join(EXAMPLES, name)) as f:
                lines |= {re.sub(r"\s+# noqa.*$", "", line).strip() for line in f}
    snippets = _blocks("python")
    assert len(snippets) >= 3
    for block in snippets:
        for line in block.splitlines():
            if line.strip():
                assert line.strip() in lines, f"README snippet line not in examples/: {line!r}"


def _commands():
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                yield words


def _check_files_named(words, cwd):
    from lt_det.engine import load_config

    for w in words:
        if w.endswith(".yaml"):
            load_config(os.path.join(ROOT, w))  # exists and parses
        elif w.endswith(".py") and w.startswith("configs/"):
            from detectron2.config import LazyConfig

            LazyConfig.load(os.path.join(ROOT, w))  # a LazyConfig recipe: exists and loads


def test_readme_commands_run_in_order_on_tiny_data(tmp_path):
    for name in ("tools", "configs", "examples"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    num_classes = None
    ran = []
    for words in _commands():
        if words[0] in ("make", "source", "pip") or words[0].startswith("VENV="):
            continue  # environment set-up: what `make test` itself runs under
        if words[0] == "export":
            assert words[1].startswith("DETECTRON2_DATASETS="), words
            continue
        assert words[0] == "python", f"the walk does not know how to run {words}"
        script, args = words[1], words[2:]
        if any(w.startswith(("configs/lvis", "configs/lazy/")) for w in args):
            _check_files_named(args, tmp_path)  # needs real LVIS: its config must load
            continue
        tool = os.path.basename(script)
        if tool == "make_synthetic_lvis.py":
            args = args + ["--preset", "tiny"]
        elif tool == "train_net.py":
            assert num_classes, "a training command comes before the data command"
            args = args + ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
            if "--eval-only" not in args:
                args += ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2"]
        elif tool == "predict.py":
            assert "--opts" in args, "predict.py takes its overrides after --opts"
            args = args + ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
        elif tool == "tau_sweep.py":
            args = args + ["MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]
        elif tool == "lt_benchmark.py":
            if "--methods" in args:  # drop the README's method list: one method is enough
                i = args.index("--methods")
                j = i + 1
                while j < len(args) and not args[j].startswith("--"):
                    j += 1
                args = args[:i] + args[j:]
            args = args + [
                "--preset",
                "tiny",
                "--iters",
                "2",
                "--stage2-iters",
                "1",
                "--methods",
                "softmax",
            ]
        _run_script(os.path.join(str(tmp_path), script), args, str(tmp_path))
        ran.append(tool)
        if tool == "make_synthetic_lvis.py":
            out = args[args.index("--out") + 1]
            with open(tmp_path / out / "lvis_v1_train.json") as f:
                num_classes = len(json.load(f)["categories"])
    # The step-by-step section and the benchmark section were walked in full.
    assert ran.count("train_net.py") >= 5 and ran.count("lt_benchmark.py") == 2
    for tool in (
        "tau_sweep.py",
        "plot_classifier_norms.py",
        "lvis_eval.py",
        "plot_ap_vs_frequency.py",
        "benchmark_summary.py",
        "predict.py",
    ):
        assert tool in ran, tool
    assert (tmp_path / "output" / "synthetic" / "stage2_balms" / "model_final.pth").is_file()
    assert (tmp_path / "output" / "synthetic" / "ap_vs_frequency.png").is_file()
    assert os.listdir(tmp_path / "output" / "synthetic" / "drawn")  # predict.py drew the images


@pytest.mark.parametrize(
    "tool",
    ["train_net.py", "lt_benchmark.py", "lvis_eval.py", "plot_classifier_norms.py", "tau_sweep.py"],
)
def test_tool_help_names_outputs_and_defaults(tool, tmp_path):
    out = _run_script(os.path.join(ROOT, "tools", tool), ["--help"], str(tmp_path))
    if tool != "train_net.py":  # the docstring's examples, on their own lines
        assert f"\n    python tools/{tool}" in out
    if tool in ("lvis_eval.py", "plot_classifier_norms.py", "tau_sweep.py"):
        assert " \\\n        --" in out  # continued command lines are not run together
    if tool == "train_net.py":
        assert "MODEL.DEVICE cpu" in out and "inference/" in out
    if tool == "lt_benchmark.py":
        assert "(default 400)" in out and "(default rfs)" in out
