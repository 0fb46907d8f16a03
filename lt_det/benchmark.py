"""The synthetic long-tailed benchmark: every method from the same stage-1 model, one table.

A method is a :class:`MethodSpec` registered in :data:`METHODS` (a config under ``configs/synthetic``
plus overrides). :func:`run_benchmark` generates the data, runs each method as a
``tools/train_net.py`` process (every stage-2 method starts from the ``model_final.pth`` of one
stage-1 method, ``stage1``, RFS by default), at most ``parallel`` at a time with one torch thread
each, and collects ``eval_results.json`` of every run into ``results.json``, ``results.md`` and
two plots.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import LTDetError
from .registry import Registry

__all__ = ["MethodSpec", "METHODS", "BENCHMARK_METHODS", "register_method", "run_benchmark",
           "format_table", "summarize_runs"]


def _checkout_paths(configs_dir: Optional[str], train_net: Optional[str]) -> Tuple[str, str]:
    """The configs folder and tools/train_net.py of an lt_det checkout, resolved once against
    the caller's working directory (defaults: ./configs and ./tools/train_net.py)."""
    configs_dir = os.path.abspath(configs_dir or "configs")
    train_net = os.path.abspath(train_net or os.path.join("tools", "train_net.py"))
    for path, what, arg in ((configs_dir, "configs folder", "configs_dir"),
                            (train_net, "training entry point", "train_net")):
        if not os.path.exists(path):
            raise LTDetError(f"the benchmark's {what} '{path}' does not exist; run from the root "
                             f"of an lt_det checkout or pass {arg} (--configs-dir / --train-net).")
    return configs_dir, train_net


@dataclass(frozen=True)
class MethodSpec:
    """One row of the benchmark table.

    Args:
        name: key used on the command line (``--methods``) and in results.json.
        config: yaml under the repo's ``configs/`` folder.
        stage: 1 (trains a detector) or 2 (starts from the final checkpoint of the run's
            stage-1 model, ``run_benchmark(stage1=...)``, the same for every stage-2 method).
        eval_only: no training (e.g. tau-normalisation of the stage-1 classifier).
        opts: extra ``KEY VALUE`` overrides.
        label: text in the table.
        default: part of the default method list (others run only when named in ``methods``).
    """

    name: str
    config: str
    stage: int = 1
    eval_only: bool = False
    opts: Tuple[str, ...] = ()
    label: str = ""
    default: bool = True


BENCHMARK_METHODS = Registry("LT_BENCHMARK_METHOD", config_key="--methods", what="benchmark method")
#: Read-only ``{name: MethodSpec}`` of the registered methods, in registration (table) order.
METHODS: Mapping[str, MethodSpec] = BENCHMARK_METHODS.mapping()


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method to the benchmark.

    Raises:
        LTDetError: the name is already registered.
    """
    return BENCHMARK_METHODS.register(spec.name)(spec)


for _spec in (
    MethodSpec("softmax", "synthetic/softmax.yaml", label="softmax CE (stage 1)"),
    MethodSpec("rfs", "synthetic/rfs.yaml", label="repeat-factor sampling (stage 1)"),
    # Other stage-1 samplers, measured on demand.
    MethodSpec("class_balanced", "synthetic/class_balanced.yaml",
               label="class-balanced sampling (stage 1)", default=False),
    MethodSpec("sqrt_sampling", "synthetic/sqrt_sampling.yaml",
               label="square-root sampling (stage 1)", default=False),
    MethodSpec("crt", "synthetic/stage2_crt.yaml", stage=2, label="cRT"),
    MethodSpec("tau_norm", "synthetic/stage2_tau_norm.yaml", stage=2, eval_only=True,
               label="tau-norm"),
    MethodSpec("lws", "synthetic/stage2_lws.yaml", stage=2, label="LWS"),
    MethodSpec("balanced_softmax", "synthetic/stage2_balanced_softmax.yaml", stage=2,
               label="Balanced Softmax"),
    MethodSpec("balanced_sigmoid", "synthetic/stage2_balanced_sigmoid.yaml", stage=2,
               label="Balanced Sigmoid"),
    MethodSpec("balms", "synthetic/stage2_balms.yaml", stage=2,
               label="BALMS (Balanced Softmax + Meta Sampler)"),
    # The background-logit design choice of Balanced Softmax (docs/heads.md), measured on demand.
    MethodSpec("balanced_softmax_unshifted", "synthetic/stage2_balanced_softmax.yaml", stage=2,
               opts=("MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG", "unshifted"),
               label="Balanced Softmax, background unshifted", default=False),
    # End-to-end long-tail training (docs/e2e.md): stage-1 rows from the same initialisation,
    # measured on demand.
    MethodSpec("e2e_whitening", "synthetic/e2e_whitening.yaml",
               label="end-to-end: whitening + LDAM-DRW + GRBS/BET (stage 1)", default=False),
    MethodSpec("e2e_no_whitening", "synthetic/e2e_no_whitening.yaml",
               label="end-to-end without whitening: LDAM-DRW + GRBS/BET (stage 1)", default=False),
    MethodSpec("whitening", "synthetic/whitening.yaml",
               label="Channel Whitening, softmax CE (stage 1)", default=False),
    MethodSpec("ldam_drw", "synthetic/ldam_drw.yaml", label="LDAM-DRW (stage 1)", default=False),
    MethodSpec("logit_adjusted", "synthetic/logit_adjusted.yaml",
               label="logit-adjusted softmax, tau 1 (stage 1)", default=False),
    MethodSpec("class_balanced_softmax", "synthetic/class_balanced_softmax.yaml",
               label="class-balanced softmax, beta 0.999 (stage 1)", default=False),
    MethodSpec("class_balanced_focal", "synthetic/class_balanced_focal.yaml",
               label="class-balanced focal, beta 0.999 (stage 1)", default=False),
    MethodSpec("grbs", "synthetic/grbs.yaml", label="GRBS + BET sampling (stage 1)",
               default=False),
    MethodSpec("progressive", "synthetic/progressive.yaml",
               label="progressively-balanced sampling (stage 1)", default=False),
):
    register_method(_spec)


@dataclass
class _Paths:
    configs_dir: str
    train_net: str


@dataclass
class _Job:
    spec: MethodSpec
    out_dir: str
    iters: int
    stage1: Optional[str] = None  # the stage-1 run a stage-2 run starts from
    proc: Optional[subprocess.Popen] = None
    start: float = 0.0
    wall: float = 0.0
    done: bool = False
    log_path: str = ""
    results: Dict = field(default_factory=dict)


def _schedule_opts(iters: int) -> List[str]:
    # LR drops at 70% and 90% of the run; warm-up over the first 10% (at most 50 iterations).
    steps = sorted({s for s in (int(iters * 0.7), int(iters * 0.9)) if 0 < s < iters})
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(tuple(steps)),
            "SOLVER.WARMUP_ITERS", str(min(50, iters // 10))]


def _dataset_opts(data: Dict[str, str]) -> List[str]:
    entries = [["lt_synth_train", data["train_json"], data["train_image_root"]],
               ["lt_synth_val", data["val_json"], data["val_image_root"]]]
    return ["DATASETS.LVIS_FORMAT", repr(entries)]


def _job_command(job: _Job, data: Dict[str, str], seed: int, jobs: Dict[str, _Job],
                 paths: Optional[_Paths] = None) -> List[str]:
    spec = job.spec
    paths = paths or _Paths("configs", os.path.join("tools", "train_net.py"))
    cmd = [sys.executable, paths.train_net,
           "--config-file", os.path.join(paths.configs_dir, spec.config)]
    if spec.eval_only:
        cmd.append("--eval-only")
    cmd += ["OUTPUT_DIR", job.out_dir, "SEED", str(seed), "DATALOADER.NUM_WORKERS", "0"]
    cmd += _dataset_opts(data)
    cmd += ["MODEL.ROI_HEADS.NUM_CLASSES", str(data["num_classes"])]
    if job.stage1 is not None:
        cmd += ["MODEL.WEIGHTS", os.path.join(jobs[job.stage1].out_dir, "model_final.pth")]
    if not spec.eval_only:
        cmd += _schedule_opts(job.iters)
    cmd += list(spec.opts)
    return cmd


def _progress(job: _Job) -> int:
    """Last iteration recorded in the job's metrics.json (0 if none yet)."""
    path = os.path.join(job.out_dir, "metrics.json")
    last = 0
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    last = max(last, int(json.loads(line).get("iteration", 0)) + 1)
                except (ValueError, json.JSONDecodeError):
                    pass  # a line being written
    return min(last, job.iters)


def _fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def run_benchmark(
    out_dir: str,
    *,
    seed: int = 0,
    methods: Optional[Sequence[str]] = None,
    iters: int = 500,
    stage2_iters: int = 200,
    preset: str = "default",
    parallel: int = 2,
    stage1: str = "rfs",
    data_dir: Optional[str] = None,
    progress_every: float = 10.0,
    overwrite: bool = False,
    configs_dir: Optional[str] = None,
    train_net: Optional[str] = None,
) -> Dict:
    """Run the benchmark and write results.json, results.md and the plots into ``out_dir``.

    Args:
        out_dir: output folder; it and ``data_dir`` are resolved against the current working
            directory once, before anything runs.
        methods: names from :data:`METHODS` (default: those with ``default=True``).
        iters / stage2_iters: training iterations of stage-1 / stage-2 methods.
        preset: synthetic data preset (see :func:`lt_det.data.synthetic.generate_synthetic_lvis`).
        parallel: runs at a time, each with one torch thread.
        stage1: the stage-1 method every stage-2 method starts from (added to ``methods``).
        data_dir: where the dataset is generated (default ``out_dir/data``); reused if present.
        overwrite: replace an earlier benchmark in ``out_dir`` (its results.json and runs under
            ``runs/``); without it an earlier benchmark is an error and nothing is changed.
        configs_dir / train_net: the ``configs`` folder and ``tools/train_net.py`` of an lt_det
            checkout (default: ``./configs`` and ``./tools/train_net.py`` of the working
            directory).
    """
    from .data.synthetic import TRAIN_JSON, VAL_JSON, generate_synthetic_lvis

    names = list(methods or [n for n, m in METHODS.items() if m.default])
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise LTDetError(f"unknown benchmark method(s) {unknown}; choose from {sorted(METHODS)}")
    if stage1 not in METHODS or METHODS[stage1].stage != 1:
        raise LTDetError(f"stage1={stage1!r} is not a stage-1 benchmark method; choose from "
                         f"{sorted(n for n, m in METHODS.items() if m.stage == 1)}")
    if any(METHODS[m].stage == 2 for m in names) and stage1 not in names:
        names.insert(0, stage1)
    names = sorted(set(names), key=lambda n: (METHODS[n].stage, list(METHODS).index(n)))

    paths = _Paths(*_checkout_paths(configs_dir, train_net))
    out_dir = os.path.abspath(out_dir)  # the runs start in other working directories' terms
    data_dir = os.path.abspath(data_dir) if data_dir else None
    _refuse_earlier_benchmark(out_dir, overwrite)
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    data_dir = data_dir or os.path.join(out_dir, "data")
    data = {"train_json": os.path.join(data_dir, TRAIN_JSON),
            "val_json": os.path.join(data_dir, VAL_JSON),
            "train_image_root": os.path.join(data_dir, "train"),
            "val_image_root": os.path.join(data_dir, "val")}
    if all(os.path.exists(p) for p in data.values()):
        print(f"[lt_benchmark] reusing the dataset in {data_dir}", flush=True)
    else:
        data = generate_synthetic_lvis(data_dir, seed=seed, preset=preset)
        s = data["summary"]
        print(f"[lt_benchmark] generated {data_dir}: {s['num_classes']} classes "
              f"(r/c/f {s['groups']}), {_fmt_s(time.time() - t0)}", flush=True)
    with open(data["train_json"]) as f:
        data["num_classes"] = len(json.load(f)["categories"])

    jobs = {
        n: _Job(METHODS[n], os.path.join(out_dir, "runs", n),
                0 if METHODS[n].eval_only else (iters if METHODS[n].stage == 1 else stage2_iters),
                stage1 if METHODS[n].stage == 2 else None)
        for n in names
    }
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # Rough seconds per iteration used for the ETA until runs report their own pace.
    pace = {1: 0.6, 2: 0.15}
    eval_cost = 20.0
    try:
        _run_jobs(jobs, data, seed, parallel, env, pace, eval_cost, t0, progress_every, paths)
    finally:  # never leave runs behind when one fails or the user is interrupted
        for j in jobs.values():
            if j.proc is not None and j.proc.poll() is None:
                j.proc.kill()

    rows = []
    for n in names:
        j = jobs[n]
        row = {"method": n, "label": j.spec.label or n, "stage": j.spec.stage,
               "stage1": j.stage1, "iters": j.iters, "wall_s": round(j.wall, 1)}
        for task, metrics in j.results.items():
            row[task] = {k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and math.isfinite(float(v))}
        rows.append(row)
    summary = {"seed": seed, "preset": preset, "stage1": stage1, "iters": iters,
               "stage2_iters": stage2_iters,
               "parallel": parallel, "total_wall_s": round(time.time() - t0, 1),
               "load_avg": os.getloadavg(), "methods": rows}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = format_table(rows)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    _plots(out_dir, data, jobs, paths)
    print(table, flush=True)
    print(f"[lt_benchmark] wrote {out_dir}/results.json, results.md, ap_vs_frequency.png, "
          f"classifier_norms.png in {_fmt_s(time.time() - t0)}", flush=True)
    return summary


def _refuse_earlier_benchmark(out_dir: str, overwrite: bool) -> None:
    """An earlier benchmark in ``out_dir`` (results.json or runs/*) is kept unless ``overwrite``."""
    runs_dir = os.path.join(out_dir, "runs")
    runs = []
    if os.path.isdir(runs_dir):
        runs = sorted(n for n in os.listdir(runs_dir) if os.listdir(os.path.join(runs_dir, n)))
    done = os.path.isfile(os.path.join(out_dir, "results.json"))
    if overwrite or not (runs or done):
        return
    held = ["results.json"] * done + ([f"it already holds runs of {runs}"] if runs else [])
    raise LTDetError(
        f"'{out_dir}' already holds a benchmark ({'; '.join(held)}); nothing was changed. Choose "
        "another output folder or pass overwrite=True (lt_benchmark.py --force) to replace it."
    )


def _run_jobs(jobs, data, seed, parallel, env, pace, eval_cost, t0, progress_every,
              paths: _Paths) -> None:
    """Start runs as their stage-1 run finishes, `parallel` at a time; print progress + ETA."""
    last_print = 0.0
    while not all(j.done for j in jobs.values()):
        running = [j for j in jobs.values() if j.proc is not None and not j.done]
        for j in running:
            rc = j.proc.poll()
            if rc is None:
                continue
            j.wall = time.time() - j.start
            j.done = True
            if rc != 0:
                tail = open(j.log_path).read()[-1500:]
                raise LTDetError(f"benchmark run '{j.spec.name}' failed (exit {rc}); log "
                                 f"{j.log_path}:\n{tail}")
            # --eval-only runs write their results under inference/ (tools/train_net.py)
            folder = os.path.join(j.out_dir, "inference") if j.spec.eval_only else j.out_dir
            with open(os.path.join(folder, "eval_results.json")) as f:
                j.results = json.load(f)
            if j.iters:
                pace[j.spec.stage] = max(1e-3, (j.wall - eval_cost) / j.iters)
        ready = [j for j in jobs.values() if j.proc is None and
                 (j.stage1 is None or jobs[j.stage1].done)]
        free = parallel - sum(1 for j in jobs.values() if j.proc is not None and not j.done)
        for j in ready[:max(0, free)]:
            shutil.rmtree(j.out_dir, ignore_errors=True)  # only with overwrite (checked above)
            os.makedirs(j.out_dir)
            j.log_path = os.path.join(j.out_dir, "stdout.txt")  # detectron2 itself writes log.txt
            j.start = time.time()
            j.proc = subprocess.Popen(_job_command(j, data, seed, jobs, paths), env=env,
                                      stdout=open(j.log_path, "w"), stderr=subprocess.STDOUT)
        now = time.time()
        if now - last_print >= progress_every or all(j.done for j in jobs.values()):
            last_print = now
            remaining = sum(
                (j.iters - (_progress(j) if j.proc else 0)) * pace[j.spec.stage] + eval_cost
                for j in jobs.values() if not j.done
            )
            active = ", ".join(f"{j.spec.name} {_progress(j)}/{j.iters}" for j in jobs.values()
                               if j.proc is not None and not j.done)
            n_done = sum(j.done for j in jobs.values())
            print(f"[lt_benchmark] {n_done}/{len(jobs)} runs done | {active or '-'} | elapsed "
                  f"{_fmt_s(now - t0)} | ETA {_fmt_s(remaining / parallel)}", flush=True)
        time.sleep(0.5)

def format_table(rows: List[Dict], task: str = "bbox") -> str:
    """Markdown table: AP, APr, APc, APf and wall time per method."""
    from tabulate import tabulate

    table = []
    for r in rows:
        m = r.get(task, {})
        cells = [f"{m[k]:.1f}" if k in m else "-" for k in ("AP", "APr", "APc", "APf")]
        stage = f"2 (from {r['stage1']})" if r.get("stage1") else str(r["stage"])
        table.append([r["label"], stage, *cells, f"{r['wall_s']:.0f}"])
    headers = ["method", "stage", "AP", "APr", "APc", "APf", "wall (s)"]
    return tabulate(table, headers, tablefmt="github", disable_numparse=True)


def _plots(out_dir: str, data: Dict[str, str], jobs: Dict[str, _Job], paths: _Paths) -> None:
    """Per-class AP vs frequency and classifier norm vs frequency, all methods overlaid."""
    from .evaluation import plot_ap_vs_frequency, plot_classifier_norms, read_per_class

    runs, labels = [], []
    for n, j in jobs.items():
        path = os.path.join(j.out_dir, "inference", "lt_synth_val", "per_class_ap_bbox.json")
        if os.path.isfile(path):
            runs.append(read_per_class(path))
            labels.append(n)
    plot_ap_vs_frequency(runs, labels, os.path.join(out_dir, "ap_vs_frequency.png"),
                         title="synthetic LVIS")
    ckpts = {}
    for n, j in jobs.items():
        if j.spec.eval_only and j.stage1 is not None:  # tau-norm: stage-1 weights at its tau
            tau = _cfg_value(j.spec, "MODEL.DECOUPLE.TAU", paths.configs_dir)
            ckpts[n] = os.path.join(jobs[j.stage1].out_dir, "model_final.pth") + f"@tau={tau}"
        elif os.path.isfile(os.path.join(j.out_dir, "model_final.pth")):
            ckpts[n] = os.path.join(j.out_dir, "model_final.pth")
    plot_classifier_norms(ckpts, data["train_json"], os.path.join(out_dir, "classifier_norms.png"))


def _cfg_value(spec: MethodSpec, key: str, configs_dir: str):
    """A key's value in a method's config (after its overrides)."""
    from .engine import load_config

    cfg = load_config(os.path.join(configs_dir, spec.config), list(spec.opts))
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


#: results.json keys that must agree for runs to be averaged (the seed may differ).
SUMMARY_SETTINGS = ("preset", "iters", "stage2_iters", "stage1")


def _settings(run: Dict) -> Tuple:
    return tuple(run.get(k) for k in SUMMARY_SETTINGS)


def summarize_runs(out_dirs: Sequence[str], task: str = "bbox", *, group: bool = False) -> str:
    """Markdown: per method the mean (min-max) of AP, APr, APc, APf over benchmark outputs, then
    per run the best stage-2 method by APr and its margins over softmax CE and RFS.

    Only runs with the same :data:`SUMMARY_SETTINGS` (data preset, stage-1 / stage-2 iterations,
    stage-1 method) are averaged: runs that differ raise an error naming each folder's settings,
    or, with ``group``, get one table per group of equal settings.

    Raises:
        LTDetError: a folder has no results.json, or settings differ and ``group`` is False.
    """
    runs = []
    for d in out_dirs:
        path = os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise LTDetError(f"'{path}' does not exist; pass folders written by lt_benchmark.py")
        with open(path) as f:
            runs.append(json.load(f))
    groups: Dict[Tuple, List[Dict]] = {}
    for r in runs:
        groups.setdefault(_settings(r), []).append(r)
    if len(groups) > 1 and not group:
        listed = "; ".join(
            f"{d}: " + ", ".join(f"{k}={v}" for k, v in zip(SUMMARY_SETTINGS, _settings(r)))
            for d, r in zip(out_dirs, runs)
        )
        raise LTDetError(
            f"the runs were made with different settings ({listed}); their mean would mix them. "
            "Pass runs of one setting, or --group for one table per setting."
        )
    if len(groups) == 1:
        return _summarize_group(runs, task)
    parts = []
    for settings, members in groups.items():
        head = ", ".join(f"{k}={v}" for k, v in zip(SUMMARY_SETTINGS, settings))
        parts.append(f"### {head}\n\n" + _summarize_group(members, task))
    return "\n\n".join(parts)


def _summarize_group(runs: List[Dict], task: str) -> str:
    keys = ("AP", "APr", "APc", "APf")
    order: List[str] = []
    for r in runs:
        order += [m["method"] for m in r["methods"] if m["method"] not in order]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [f"| method ({len(runs)} runs, seeds {seeds}) | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 1) + "|"]
    for name in order:
        rows = [m for r in runs for m in r["methods"] if m["method"] == name and task in m]
        cells = []
        for k in keys:
            v = [m[task][k] for m in rows if k in m[task]]
            cells.append(f"{sum(v) / len(v):.1f} ({min(v):.1f}-{max(v):.1f})" if v else "-")
        label = rows[0]["label"] if rows else name
        if len(rows) < len(runs):
            label += f" ({len(rows)} of {len(runs)} runs)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in runs:
        by = {m["method"]: m.get(task, {}) for m in r["methods"]}
        stage2 = [m for m in r["methods"] if m["stage"] == 2 and "APr" in m.get(task, {})]
        if not stage2 or "softmax" not in by or "rfs" not in by:
            continue
        best = max(stage2, key=lambda m: m[task]["APr"])
        b = best[task]
        lines.append(
            f"seed {r['seed']}: best stage 2 by APr = {best['label']} ({b['AP']:.1f} AP / "
            f"{b['APr']:.1f} APr): vs softmax CE {b['APr'] - by['softmax']['APr']:+.1f} APr "
            f"{b['AP'] - by['softmax']['AP']:+.1f} AP; vs RFS {b['APr'] - by['rfs']['APr']:+.1f} "
            f"APr {b['AP'] - by['rfs']['AP']:+.1f} AP")
    return "\n".join(lines)
