"""The synthetic long-tailed benchmark: every method from the same stage-1 model, one table.

A method is a :class:`MethodSpec` registered in :data:`METHODS` (a config under
``configs/synthetic`` plus overrides). :func:`run_benchmark` generates the data, runs each method
as a ``python -m lt_det.tools.train_net`` process (every stage-2 method starts from the
``model_final.pth`` of one stage-1 method, ``stage1``, RFS by default), at most ``parallel`` at a
time with one torch thread each, and collects ``eval_results.json`` of every run into ``results.json``, ``results.md`` and
two plots. The detector is Mask R-CNN: mask AP is the headline number (LVIS's), box AP is reported
beside it, and each is also scored under the AP-fixed protocol. Configs come from
:mod:`lt_det.model_zoo` and runs from the packaged entry point, so an installed lt_det needs no
checkout.

Stage-1 models are shared: with ``stage1_cache`` a stage-1 run is stored under a key made of its
merged config, seed, iterations and the dataset's bytes, and any later benchmark (another method
list, another output folder) with the same key reuses it instead of training again.
"""
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .engine.signals import StopSignals, signal_name
from .errors import LTDetError, RunStopped
from .fidelity import SUMMARY_SETTINGS, load_runs, settings_of
from .registry import Registry

__all__ = ["MethodSpec", "METHODS", "BENCHMARK_METHODS", "register_method", "run_benchmark",
           "run_benchmark_seeds", "format_table", "summarize_runs", "TASKS", "EtaEstimator", "Eta",
           "TRAIN_NET_MODULE"]

# Progress, the table and where files went: INFO records (tools/lt_benchmark.py shows them).
logger = logging.getLogger(__name__)

#: The training entry point every run starts (``python -m lt_det.tools.train_net``), part of
#: the installed package.
TRAIN_NET_MODULE = "lt_det.tools.train_net"

#: Evaluated tasks, headline first: mask AP (LVIS's headline), then box AP.
TASKS = ("segm", "bbox")


def _resolve_paths(configs_dir: Optional[str], train_net: Optional[str]) -> "_Paths":
    """The configs folder and the training script, resolved once against the caller's working
    directory. Defaults: the configs lt_det ships (:func:`lt_det.model_zoo.configs_dir`, also in
    an installed package) and the packaged entry point :data:`TRAIN_NET_MODULE` (``train_net``
    None); ``train_net`` names a script to run instead (e.g. a checkout's tools/train_net.py)."""
    if configs_dir is None:
        from .model_zoo import configs_dir as shipped_configs

        configs_dir = shipped_configs()
    configs_dir = os.path.abspath(configs_dir)
    train_net = os.path.abspath(train_net) if train_net else None
    for path, what, arg in ((configs_dir, "configs folder", "configs_dir"),
                            (train_net, "training entry point", "train_net")):
        if path is not None and not os.path.exists(path):
            raise LTDetError(f"the benchmark's {what} '{path}' does not exist; pass an existing "
                             f"one ({arg}, --{arg.replace('_', '-')}) or leave it out for the "
                             "one lt_det ships.")
    return _Paths(configs_dir, train_net)


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
               label="tau-norm", default=False),
    MethodSpec("lws", "synthetic/stage2_lws.yaml", stage=2, label="LWS", default=False),
    MethodSpec("disalign", "synthetic/stage2_disalign.yaml", stage=2,
               label="DisAlign (calibration + GRW)", default=False),
    MethodSpec("balanced_softmax", "synthetic/stage2_balanced_softmax.yaml", stage=2,
               label="Balanced Softmax", default=False),
    MethodSpec("balanced_sigmoid", "synthetic/stage2_balanced_sigmoid.yaml", stage=2,
               label="Balanced Sigmoid", default=False),
    MethodSpec("balms", "synthetic/stage2_balms.yaml", stage=2,
               label="BALMS (Balanced Softmax + Meta Sampler)"),
    # The background-logit design choice of Balanced Softmax (docs/heads.md), measured on demand.
    MethodSpec("balanced_softmax_unshifted", "synthetic/stage2_balanced_softmax.yaml", stage=2,
               opts=("MODEL.ROI_BOX_HEAD.BALANCED_SOFTMAX_BG", "unshifted"),
               label="Balanced Softmax, background unshifted", default=False),
    # The methods users pick instead (docs/peers.md), measured on demand: stage-1 losses as their
    # papers train them, BAGS as a decoupled stage 2, calibration eval-only on the stage-1 model.
    MethodSpec("eql", "synthetic/eql.yaml", label="EQL (stage 1)", default=False),
    MethodSpec("eqlv2", "synthetic/eqlv2.yaml", label="EQLv2 (stage 1)", default=False),
    MethodSpec("seesaw", "synthetic/seesaw.yaml", label="Seesaw + cosine classifier (stage 1)",
               default=False),
    MethodSpec("federated", "synthetic/federated.yaml", label="federated loss + RFS (stage 1)",
               default=False),
    MethodSpec("ecm", "synthetic/ecm.yaml", label="ECM + cosine classifier (stage 1)",
               default=False),
    MethodSpec("acsl", "synthetic/acsl.yaml", label="ACSL (stage 1)", default=False),
    MethodSpec("pcb", "synthetic/pcb.yaml", label="PCB + RFS (stage 1)", default=False),
    MethodSpec("bags", "synthetic/stage2_bags.yaml", stage=2, label="BAGS", default=False),
    MethodSpec("cbd", "synthetic/stage2_cbd.yaml", stage=2,
               label="CBD (class-balanced distillation)", default=False),
    MethodSpec("norcal", "synthetic/norcal.yaml", stage=2, eval_only=True,
               label="NorCal (post-hoc)", default=False),
    MethodSpec("logit_adjustment", "synthetic/logit_adjustment.yaml", stage=2, eval_only=True,
               label="logit adjustment (post-hoc)", default=False),
    MethodSpec("gol", "synthetic/gol.yaml", label="GOL, Gumbel BCE (stage 1)", default=False),
    MethodSpec("fracal", "synthetic/fracal.yaml", stage=2, eval_only=True,
               label="FRACAL (post-hoc)", default=False),
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
    train_net: Optional[str] = None  # a script; None: the packaged TRAIN_NET_MODULE


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
    cache_entry: Optional[str] = None  # stage-1 cache folder of this run (stage-1 runs only)
    cached: bool = False  # reused from the stage-1 cache, not trained here
    wall_before: float = 0.0  # seconds of the earlier (interrupted) parts of this run


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
                 paths: Optional[_Paths] = None, resume: bool = False) -> List[str]:
    spec = job.spec
    if paths is None:
        from .model_zoo import configs_dir

        paths = _Paths(configs_dir())
    entry = [paths.train_net] if paths.train_net else ["-m", TRAIN_NET_MODULE]
    cmd = [sys.executable, *entry, "--config-file", os.path.join(paths.configs_dir, spec.config)]
    if spec.eval_only:
        cmd.append("--eval-only")
    elif resume:
        cmd.append("--resume")
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
    iters: int = 400,
    stage2_iters: int = 200,
    preset: str = "default",
    parallel: int = 2,
    stage1: str = "rfs",
    data_dir: Optional[str] = None,
    progress_every: float = 10.0,
    overwrite: bool = False,
    configs_dir: Optional[str] = None,
    train_net: Optional[str] = None,
    stage1_cache: Optional[str] = None,
    resume: bool = False,
) -> Dict:
    """Run the benchmark and write results.json, results.md and the plots into ``out_dir``.

    Progress (runs done, iterations, elapsed time, ETA from :class:`EtaEstimator`) is logged at
    INFO by the logger ``lt_det.benchmark`` every ``progress_every`` seconds.

    SIGTERM / SIGINT (Ctrl-C) stop it the way ``lt_det.tools.train_net`` stops: the runs in
    progress get SIGTERM, save a checkpoint and stop; the benchmark waits for them and ends
    with :class:`~lt_det.errors.RunStopped` (one line naming the runs and their iterations,
    exit status 128 + signal). ``resume=True`` (``--resume``) continues it: finished runs are
    kept, stopped ones continue from their checkpoint, the others start.

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
            ``runs/``); without it (or ``resume``) an earlier benchmark is an error and nothing
            is changed.
        resume: continue the benchmark in ``out_dir`` (made with the same seed, preset,
            iterations and stage-1 method; other settings are refused).
        configs_dir / train_net: the configs folder (default: the configs lt_det ships,
            :func:`lt_det.model_zoo.configs_dir`, also from an installed package) and a training
            script each run starts (default: the packaged ``python -m lt_det.tools.train_net``).
        stage1_cache: folder of stage-1 runs shared across benchmarks (None = no sharing). A
            stage-1 run whose key (merged config, seed, iterations, dataset bytes) is there is
            reused; a new one is stored there when it finishes.
    """
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

    paths = _resolve_paths(configs_dir, train_net)
    out_dir = os.path.abspath(out_dir)  # the runs start in other working directories' terms
    data_dir = os.path.abspath(data_dir) if data_dir else None
    _refuse_earlier_benchmark(out_dir, overwrite, resume)
    settings = {"seed": seed, "preset": preset, "iters": iters, "stage2_iters": stage2_iters,
                "stage1": stage1}
    _check_settings(out_dir, settings, resume)
    os.makedirs(out_dir, exist_ok=True)
    _write_json_atomic(os.path.join(out_dir, SETTINGS_FILE), settings)
    with StopSignals(where="while the benchmark prepared or scored its runs") as stop:
        return _run_benchmark(out_dir, names, seed, iters, stage2_iters, preset, parallel, stage1,
                              data_dir, progress_every, paths, stage1_cache, resume, stop)


def _run_benchmark(out_dir, names, seed, iters, stage2_iters, preset, parallel, stage1, data_dir,
                   progress_every, paths, stage1_cache, resume, stop) -> Dict:
    from .data.synthetic import TRAIN_JSON, VAL_JSON, generate_synthetic_lvis

    t0 = time.time()
    own_data = data_dir is None  # OUT/data: generated whole, then renamed into place
    data_dir = data_dir or os.path.join(out_dir, "data")
    data = {"train_json": os.path.join(data_dir, TRAIN_JSON),
            "val_json": os.path.join(data_dir, VAL_JSON),
            "train_image_root": os.path.join(data_dir, "train"),
            "val_image_root": os.path.join(data_dir, "val")}
    if all(os.path.exists(p) for p in data.values()):
        logger.info("reusing the dataset in %s", data_dir)
    elif own_data:  # an interruption leaves data.partial, never a half-written data/
        partial = data_dir + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        s = generate_synthetic_lvis(partial, seed=seed, preset=preset)["summary"]
        os.replace(partial, data_dir)
        logger.info("generated %s: %d classes (r/c/f %s), %s", data_dir, s["num_classes"],
                    s["groups"], _fmt_s(time.time() - t0))
    else:
        data = generate_synthetic_lvis(data_dir, seed=seed, preset=preset)
        s = data["summary"]
        logger.info("generated %s: %d classes (r/c/f %s), %s", data_dir, s["num_classes"],
                    s["groups"], _fmt_s(time.time() - t0))
    with open(data["train_json"]) as f:
        data["num_classes"] = len(json.load(f)["categories"])

    jobs = {
        n: _Job(METHODS[n], os.path.join(out_dir, "runs", n),
                0 if METHODS[n].eval_only else (iters if METHODS[n].stage == 1 else stage2_iters),
                stage1 if METHODS[n].stage == 2 else None)
        for n in names
    }
    if stage1_cache:
        stage1_cache = os.path.abspath(stage1_cache)
        for j in jobs.values():
            if j.spec.stage == 1 and not j.spec.eval_only:
                j.cache_entry = _stage1_cache_entry(stage1_cache, j, data, seed, paths)
                if _load_cached_stage1(j, data["val_json"]):
                    logger.info("%s: reusing stage-1 run %s", j.spec.name, j.cache_entry)
    if resume:
        for j in jobs.values():
            if not j.done:
                _load_finished_run(j, data["val_json"])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stop.deferred, stop.on_signal = True, lambda signum: _stop_runs(jobs)
    try:
        _run_jobs(jobs, data, seed, parallel, env, t0, progress_every, paths, resume, stop)
    finally:  # never leave runs behind when one fails
        for j in jobs.values():
            if j.proc is not None and j.proc.poll() is None:
                j.proc.kill()
    stop.deferred, stop.on_signal = False, None
    if stop.signum is not None:
        raise _stopped(stop.signum, jobs)

    rows = []
    for n in names:
        j = jobs[n]
        row = {"method": n, "label": j.spec.label or n, "stage": j.spec.stage,
               "stage1": j.stage1, "iters": j.iters, "wall_s": round(j.wall, 1),
               "cached": j.cached}
        for task, metrics in j.results.items():
            row[task] = {k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and math.isfinite(float(v))}
        rows.append(row)
    summary = {"seed": seed, "preset": preset, "stage1": stage1, "iters": iters,
               "stage2_iters": stage2_iters,
               "parallel": parallel, "total_wall_s": round(time.time() - t0, 1),
               "load_avg": os.getloadavg(), "methods": rows}
    table = format_table(rows)
    _write_json_atomic(os.path.join(out_dir, "results.json"), summary)
    _write_text_atomic(os.path.join(out_dir, "results.md"), table + "\n")
    _plots(out_dir, data, jobs, paths)
    logger.info("results:\n%s", table)
    logger.info("wrote %s/results.json, results.md, ap_vs_frequency.png, classifier_norms.png "
                "in %s", out_dir, _fmt_s(time.time() - t0))
    return summary


def run_benchmark_seeds(out_dir: str, seeds: Sequence[int], **kwargs) -> str:
    """:func:`run_benchmark` once per seed into ``out_dir/seed<N>``, then the mean and spread over
    the seeds (mask AP, then box AP) into ``out_dir/summary.md``; returns that text.

    ``kwargs`` go to :func:`run_benchmark` (``data_dir`` is per seed, so it is refused).
    """
    if kwargs.get("data_dir"):
        raise LTDetError("data_dir is one dataset, but several seeds each generate their own; "
                         "leave it out (each seed's data goes to OUT/seed<N>/data).")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise LTDetError(f"seeds must be distinct and at least one, got {list(seeds)}.")
    t0 = time.time()
    dirs = [os.path.join(out_dir, f"seed{s}") for s in seeds]
    for d in dirs:  # check every folder before the first run starts
        _refuse_earlier_benchmark(d, kwargs.get("overwrite", False), kwargs.get("resume", False))
    for seed, d in zip(seeds, dirs):
        run_benchmark(d, seed=seed, **kwargs)
    wall = time.time() - t0
    tasks = set(TASKS)
    for d in dirs:
        with open(os.path.join(d, "results.json")) as f:
            tasks &= {t for m in json.load(f)["methods"] for t in TASKS if t in m}
    text = "\n\n".join(summarize_runs(dirs, task=t) for t in TASKS if t in tasks)
    text += (f"\n\n{len(seeds)} seeds, wall {_fmt_s(wall)} (load average "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())})\n")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(text)
    logger.info("summary over seeds:\n%s", text)
    return text


def _refuse_earlier_benchmark(out_dir: str, overwrite: bool, resume: bool = False) -> None:
    """An earlier benchmark in ``out_dir`` (results.json or runs/*) is kept unless ``overwrite``
    (start over) or ``resume`` (continue it)."""
    runs_dir = os.path.join(out_dir, "runs")
    runs = []
    if os.path.isdir(runs_dir):
        runs = sorted(n for n in os.listdir(runs_dir) if os.listdir(os.path.join(runs_dir, n)))
    done = os.path.isfile(os.path.join(out_dir, "results.json"))
    if overwrite or resume or not (runs or done):
        return
    if done:
        raise LTDetError(
            f"'{out_dir}' already holds a benchmark (results.json); nothing was changed. Choose "
            "another output folder or pass --force (overwrite=True from Python) to replace it."
        )
    raise LTDetError(
        f"'{out_dir}' already holds runs of {runs} of a benchmark that did not finish; nothing "
        f"was changed. Continue it with --resume ({RESUME_WITH_MAKE}), choose another output "
        "folder, or pass --force to start over (its runs are replaced)."
    )


#: How ``--resume`` reaches the benchmark through the Makefile's targets.
RESUME_WITH_MAKE = "make demo DEMO_ARGS=--resume, make benchmark BENCH_ARGS=--resume"

#: The settings a benchmark folder was made with (``--resume`` must match them).
SETTINGS_FILE = "benchmark_settings.json"


def _check_settings(out_dir: str, settings: Dict, resume: bool) -> None:
    """``resume`` continues only a benchmark of the same settings (else one line, exit 2)."""
    path = os.path.join(out_dir, SETTINGS_FILE)
    if not resume or not os.path.isfile(path):
        return
    with open(path) as f:
        try:
            earlier = json.load(f)
        except json.JSONDecodeError:
            return  # written atomically; unreadable only if edited: the runs decide
    differ = {k: (earlier.get(k), v) for k, v in settings.items() if earlier.get(k) != v}
    if differ:
        listed = ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
        raise LTDetError(
            f"--resume: '{out_dir}' holds a benchmark made with other settings ({listed}); "
            "nothing was changed. Resume with the same --seed, --preset, --iters, --stage2-iters "
            "and --stage1, or choose another output folder."
        )


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json_atomic(path: str, obj) -> None:
    _write_text_atomic(path, json.dumps(obj, indent=2))


# A run's seconds so far, over its interrupted parts (resume).
_WALL_FILE = "benchmark_wall.json"


def _result_folder(job: _Job) -> str:
    # --eval-only runs write their results under inference/ (tools/train_net.py)
    return os.path.join(job.out_dir, "inference") if job.spec.eval_only else job.out_dir


def _load_finished_run(job: _Job, val_json: str) -> None:
    """With ``resume``: a run that finished before the interruption is kept (its results read,
    AP-fixed completed); a stopped one keeps the seconds it ran."""
    wall = os.path.join(job.out_dir, _WALL_FILE)
    if os.path.isfile(wall):
        with open(wall) as f:
            job.wall_before = float(json.load(f).get("wall_s", 0.0))
    results = os.path.join(_result_folder(job), "eval_results.json")
    if not os.path.isfile(results):
        return
    with open(results) as f:
        job.results = json.load(f)
    job.results.update(_evaluate_ap_fixed(job.out_dir, val_json, job.results))
    job.wall, job.done = job.wall_before, True
    if job.cache_entry and not os.path.isfile(os.path.join(job.cache_entry, "cache_info.json")):
        _store_stage1(job)
    logger.info("%s: finished before, kept", job.spec.name)


def _stop_runs(jobs: Dict[str, _Job]) -> None:
    """SIGTERM to every run in progress: each saves a checkpoint and stops (train_net)."""
    for j in jobs.values():
        if j.proc is not None and not j.done and j.proc.poll() is None:
            try:
                j.proc.send_signal(signal.SIGTERM)
            except OSError:  # already gone
                pass


def _stopped(signum: int, jobs: Dict[str, _Job]) -> RunStopped:
    """The benchmark's one line after a signal: which runs stopped where, how to continue."""
    saved, anew = [], []
    for j in jobs.values():
        if j.done or j.proc is None:
            continue
        pointer = os.path.join(j.out_dir, "last_checkpoint")
        name = open(pointer).read().strip() if os.path.isfile(pointer) else ""
        m = re.fullmatch(r"model_(\d+)\.pth", name)
        if m:
            saved.append(f"{j.spec.name} at iteration {int(m.group(1))}")
        elif name:
            saved.append(f"{j.spec.name} ({name})")
        else:
            anew.append(j.spec.name)
    parts = []
    if saved:
        parts.append(f"runs stopped with a checkpoint: {', '.join(saved)}")
    if anew:
        parts.append(f"runs that start anew: {', '.join(anew)}")
    done = [j.spec.name for j in jobs.values() if j.done]
    if done:
        parts.append(f"finished runs kept: {', '.join(done)}")
    return RunStopped(
        f"benchmark stopped by {signal_name(signum)} ({'; '.join(parts) or 'no run had started'}"
        f"). Continue it with the same command and --resume ({RESUME_WITH_MAKE}).",
        exit_code=128 + signum,
    )


AP_FIXED_FILE = "eval_results_ap_fixed.json"


def _evaluate_ap_fixed(run_dir: str, val_json: str, results: Dict) -> Dict[str, Dict]:
    """The run's detections scored under the AP-fixed protocol (Dave et al. 2021: no per-image
    cap, top 10,000 detections per class), for every task the run was evaluated on, with AP-pool
    (``APpool``, ``APpool_r/c/f``: all classes' detections on one precision-recall curve) for
    bbox.

    The detections are those the model wrote (at most ``TEST.DETECTIONS_PER_IMAGE`` per image,
    so on this small validation set no class reaches the 10,000 cap and AP-fixed equals AP);
    results go to ``run_dir/eval_results_ap_fixed.json`` and are returned as
    ``{"<task>-fixed": {metric: percent}}``.
    """
    from .evaluation import LVISGroundTruth, evaluate_lvis

    path = os.path.join(run_dir, AP_FIXED_FILE)
    tasks = [t for t in TASKS if t in results]
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f)
        # a file of an older version (a cached stage-1 run) may lack a task or AP-pool
        if all(f"{t}-fixed" in stored for t in tasks) and (
            "bbox" not in tasks or "APpool" in stored["bbox-fixed"]
        ):
            return stored
    dets = os.path.join(run_dir, "inference", "lt_synth_val", "lvis_instances_results.json")
    if not tasks or not os.path.isfile(dets):
        return {}
    gt = LVISGroundTruth(val_json)
    out = {}
    for task in tasks:
        res = evaluate_lvis(gt, dets, iou_type=task, ap_fixed=True, ap_pool=task == "bbox")
        out[f"{task}-fixed"] = {k: v for k, v in res.metrics_percent().items() if math.isfinite(v)}
    # a new file (temporary + rename), not a rewrite: run folders share files by hard links
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f, indent=2)
    os.replace(tmp, path)
    return out


def _sha1_file(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stage1_cache_entry(cache_dir: str, job: _Job, data: Dict, seed: int, paths: _Paths) -> str:
    """Cache folder of a stage-1 run: ``<method>-seed<seed>-<key>``, the key hashing the merged
    config (output and dataset paths left out), the seed, the iterations and the dataset files."""
    from .engine import load_config

    opts = list(job.spec.opts) + _schedule_opts(job.iters) + [
        "SEED", str(seed), "MODEL.ROI_HEADS.NUM_CLASSES", str(data["num_classes"])]
    cfg = load_config(os.path.join(paths.configs_dir, job.spec.config), opts)
    cfg.OUTPUT_DIR = ""
    cfg.DATASETS.LVIS_FORMAT = []
    material = json.dumps({"config": cfg.dump(), "iters": job.iters, "seed": seed,
                           "train": _sha1_file(data["train_json"]),
                           "val": _sha1_file(data["val_json"])}, sort_keys=True)
    key = hashlib.sha1(material.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{job.spec.name}-seed{seed}-{key}")


def _copy_run(src: str, dst: str) -> None:
    """Copy a run folder, hard-linking files where the file system allows it."""
    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=link_or_copy)


def _load_cached_stage1(job: _Job, val_json: str) -> bool:
    """Reuse a finished stage-1 run from the cache (True), or leave the job to run (False).

    The entry's AP-fixed / AP-pool file is completed first when an older version wrote it (a
    task or AP-pool missing: recomputed from the entry's detections, as for a new run), so a
    cached row has the same columns as a trained one."""
    entry = job.cache_entry
    info_path = os.path.join(entry, "cache_info.json") if entry else ""
    if not entry or not os.path.isfile(info_path):
        return False
    with open(info_path) as f:
        info = json.load(f)
    with open(os.path.join(entry, "eval_results.json")) as f:
        job.results = json.load(f)
    job.results.update(_evaluate_ap_fixed(entry, val_json, job.results))
    _copy_run(entry, job.out_dir)
    job.wall, job.done, job.cached = float(info["wall_s"]), True, True
    return True


def _store_stage1(job: _Job) -> None:
    """Put a finished stage-1 run into the cache (written whole, then renamed into place)."""
    tmp = job.cache_entry + ".tmp"
    _copy_run(job.out_dir, tmp)
    with open(os.path.join(tmp, "cache_info.json"), "w") as f:
        json.dump({"method": job.spec.name, "wall_s": round(job.wall, 1), "iters": job.iters,
                   "from": os.path.abspath(job.out_dir)}, f, indent=2)
    shutil.rmtree(job.cache_entry, ignore_errors=True)
    os.replace(tmp, job.cache_entry)


class Eta(NamedTuple):
    """A time-to-finish estimate: ``seconds`` left; ``lower_bound`` when a part of it was not
    measured yet (the start-up or the evaluation of a run before any run got there) and was
    counted as zero."""

    seconds: float
    lower_bound: bool


class _RunTimes:
    """What the estimator saw of one run (clock readings in seconds)."""

    def __init__(self, stage: int, iters: int, after: Optional[str]):
        self.stage, self.iters, self.after = stage, iters, after
        self.start: Optional[float] = None
        self.first: Optional[Tuple[float, int]] = None  # first (time, iteration > 0) seen
        self.last: Optional[Tuple[float, int]] = None  # latest (time, iteration)
        self.end: Optional[float] = None
        self.done = False


class EtaEstimator:
    """Time left of a set of runs, from the pace measured on the runs themselves.

    Each run is ``(stage, iterations, after)``: ``after`` names the run it starts from (a stage-2
    run waits for its stage-1 run); iterations 0 is an evaluation-only run. A run's time is
    start-up (process start to its first iteration), ``iterations x pace`` and the tail (from
    its last iteration to its exit: evaluation). Every part is measured:

    - pace (seconds per iteration) of a stage: over the runs of that stage, the clock time
      between the first and the latest iteration reported, divided by the iterations between
      them (runs in parallel share the CPU; that is in the measurement). A stage not measured
      yet takes the pace of the other stage.
    - start-up: mean over runs that reported an iteration of (time to the first report minus
      the iterations reported by then x pace).
    - tail: mean over finished training runs of (exit time minus the time their last iteration
      was seen); an evaluation-only run takes the mean wall time of finished evaluation-only
      runs, else start-up + tail.

    The time left is a list schedule of the remaining runs on ``parallel`` slots in the given
    order, each run starting when a slot is free and the run it starts from has finished (what
    :func:`run_benchmark` does).

    Args:
        runs: ``{name: (stage, iterations, after)}`` in start order.
        parallel: runs at a time.
        clock: seconds, monotonic (default :func:`time.monotonic`; tests pass a fake one).
    """

    def __init__(self, runs: Mapping[str, Tuple[int, int, Optional[str]]], parallel: int,
                 clock: Callable[[], float] = time.monotonic):
        self.runs = {n: _RunTimes(*r) for n, r in runs.items()}
        self.parallel = max(1, parallel)
        self.clock = clock

    def started(self, name: str) -> None:
        self.runs[name].start = self.clock()

    def progress(self, name: str, iteration: int) -> None:
        """The run has finished ``iteration`` iterations (read from its metrics.json)."""
        r, now = self.runs[name], self.clock()
        if iteration <= 0 or (r.last is not None and iteration <= r.last[1]):
            return
        if r.first is None:
            r.first = (now, iteration)
        r.last = (now, iteration)

    def finished(self, name: str, measured: bool = True) -> None:
        """The run ended; ``measured=False`` for one that did not run here (reused, cached)."""
        r = self.runs[name]
        r.done = True
        r.end = self.clock() if measured and r.start is not None else None

    def pace(self, stage: int) -> Optional[float]:
        """Seconds per iteration of ``stage`` (the other stage's while it has none)."""
        for want in (stage, 3 - stage):
            spans = [(r.last[0] - r.first[0], r.last[1] - r.first[1])
                     for r in self.runs.values()
                     if r.stage == want and r.first is not None and r.last[1] > r.first[1]]
            if spans:
                return sum(t for t, _ in spans) / sum(i for _, i in spans)
        return None

    def _startup(self) -> Optional[float]:
        seen = [max(0.0, r.first[0] - r.start - r.first[1] * self.pace(r.stage))
                for r in self.runs.values()
                if r.first is not None and r.start is not None and self.pace(r.stage) is not None]
        return sum(seen) / len(seen) if seen else None

    def _tail(self) -> Optional[float]:
        seen = [r.end - r.last[0] for r in self.runs.values()
                if r.end is not None and r.iters and r.last is not None and r.last[1] >= r.iters]
        return sum(seen) / len(seen) if seen else None

    def _eval_only(self) -> Optional[float]:
        seen = [r.end - r.start for r in self.runs.values() if r.end is not None and not r.iters]
        return sum(seen) / len(seen) if seen else None

    def eta(self) -> Optional[Eta]:
        """Seconds until every run has finished, or None while a run left to train has no
        measured pace (no run has reported two iterations yet)."""
        now = self.clock()
        startup, tail, eval_only = self._startup(), self._tail(), self._eval_only()
        guessed = False
        left: Dict[str, float] = {}
        for name, r in self.runs.items():
            if r.done:
                continue
            if not r.iters:  # evaluation only
                whole = eval_only
                if whole is None:
                    whole, guessed = (startup or 0.0) + (tail or 0.0), True
                spent = now - r.start if r.start is not None else 0.0
                left[name] = max(0.0, whole - spent)
                continue
            pace = self.pace(r.stage)
            if pace is None:
                return None
            guessed |= tail is None
            if r.last is not None:  # iterating (or evaluating after its last iteration)
                rest = (r.iters - r.last[1]) * pace
                end_tail = tail or 0.0
                if r.last[1] >= r.iters:
                    end_tail = max(0.0, end_tail - (now - r.last[0]))
                left[name] = rest + end_tail
                continue
            guessed |= startup is None
            spent = now - r.start if r.start is not None else 0.0
            left[name] = max(0.0, (startup or 0.0) - spent) + r.iters * pace + (tail or 0.0)
        return Eta(self._schedule(left), guessed)

    def _schedule(self, left: Dict[str, float]) -> float:
        """Finish time (from now) of the remaining runs: running ones hold their slots, waiting
        ones start in order when a slot is free and the run they start from has finished."""
        finish: Dict[str, float] = {n: 0.0 for n, r in self.runs.items() if r.done}
        slots: List[float] = []
        for name, r in self.runs.items():
            if name in left and r.start is not None:
                finish[name] = left[name]
                slots.append(left[name])
        waiting = [n for n, r in self.runs.items() if n in left and r.start is None]
        slots += [0.0] * max(0, self.parallel - len(slots))
        slots.sort()
        for name in waiting:
            after = self.runs[name].after
            ready = finish.get(after, 0.0) if after else 0.0
            slot = slots.pop(0)
            finish[name] = max(slot, ready) + left[name]
            slots.append(finish[name])
            slots.sort()
        return max(finish.values(), default=0.0)


def _format_eta(eta: Optional[Eta]) -> str:
    if eta is None:
        return "ETA (measuring the pace)"
    return f"ETA {'>=' if eta.lower_bound else ''}{_fmt_s(eta.seconds)}"


def _run_jobs(jobs, data, seed, parallel, env, t0, progress_every, paths: _Paths,
              resume: bool = False, stop=None, clock: Callable[[], float] = time.monotonic
              ) -> None:
    """Start runs as their stage-1 run finishes, ``parallel`` at a time; log progress and the
    ETA (:class:`EtaEstimator`) every ``progress_every`` seconds.

    Once ``stop`` (a deferred :class:`~lt_det.engine.signals.StopSignals`) has a signal, no run
    starts, the runs in progress are sent SIGTERM (they save a checkpoint and stop) and this
    returns when all of them have ended. With ``resume`` a run whose folder holds a checkpoint
    continues from it (``train_net --resume``)."""
    eta = EtaEstimator({n: (j.spec.stage, j.iters, j.stage1) for n, j in jobs.items()},
                       parallel, clock)
    for n, j in jobs.items():
        if j.done:  # reused from the stage-1 cache or kept from before an interruption
            eta.finished(n, measured=False)
    last_log = None
    ended = set()  # runs stopped by the signal
    while not all(j.done for j in jobs.values()):
        stopping = stop is not None and stop.signum is not None
        if stopping:
            _stop_runs(jobs)  # again: a run may have started just before the signal
        running = [j for j in jobs.values()
                   if j.proc is not None and not j.done and j.spec.name not in ended]
        for j in running:
            eta.progress(j.spec.name, _progress(j))
            rc = j.proc.poll()
            if rc is None:
                continue
            elapsed = time.time() - j.start
            _write_json_atomic(os.path.join(j.out_dir, _WALL_FILE),
                               {"wall_s": round(j.wall_before + elapsed, 1)})
            if stopping and rc != 0:
                ended.add(j.spec.name)
                continue
            j.wall = j.wall_before + elapsed
            j.done = True
            if rc != 0:
                tail = open(j.log_path).read()[-1500:]
                raise LTDetError(f"benchmark run '{j.spec.name}' failed (exit {rc}); log "
                                 f"{j.log_path}:\n{tail}")
            with open(os.path.join(_result_folder(j), "eval_results.json")) as f:
                j.results = json.load(f)
            j.results.update(_evaluate_ap_fixed(j.out_dir, data["val_json"], j.results))
            if j.cache_entry:
                _store_stage1(j)
            eta.finished(j.spec.name)
        if stopping:
            if all(j.spec.name in ended or j.done for j in running):
                return
            time.sleep(0.5)
            continue
        ready = [j for j in jobs.values() if j.proc is None and not j.done and
                 (j.stage1 is None or jobs[j.stage1].done)]
        free = parallel - sum(1 for j in jobs.values() if j.proc is not None and not j.done)
        for j in ready[:max(0, free)]:
            go_on = (resume and not j.spec.eval_only
                     and os.path.isfile(os.path.join(j.out_dir, "last_checkpoint")))
            if not go_on:  # a new run (earlier files only with overwrite / resume, see above)
                shutil.rmtree(j.out_dir, ignore_errors=True)
                os.makedirs(j.out_dir)
                j.wall_before = 0.0
            j.log_path = os.path.join(j.out_dir, "stdout.txt")  # detectron2 itself writes log.txt
            j.start = time.time()
            j.proc = subprocess.Popen(_job_command(j, data, seed, jobs, paths, resume=go_on),
                                      env=env, stdout=open(j.log_path, "a" if go_on else "w"),
                                      stderr=subprocess.STDOUT)
            eta.started(j.spec.name)
            if go_on:
                logger.info("%s: continuing from its checkpoint", j.spec.name)
        now = clock()
        if last_log is None or now - last_log >= progress_every or all(
                j.done for j in jobs.values()):
            last_log = now
            active = ", ".join(f"{j.spec.name} {_progress(j)}/{j.iters}" for j in jobs.values()
                               if j.proc is not None and not j.done)
            n_done = sum(j.done for j in jobs.values())
            logger.info("%d/%d runs done | %s | elapsed %s | %s", n_done, len(jobs),
                        active or "-", _fmt_s(time.time() - t0), _format_eta(eta.eta()))
        time.sleep(0.5)


def format_table(rows: List[Dict]) -> str:
    """Markdown table: mask AP (headline) and box AP, each with APr / APc / APf and AP-fixed,
    box AP-pool where the runs have it, and wall time per method. A task the runs lack
    (box-only runs: no mask AP) is left out."""
    from tabulate import tabulate

    tasks = [t for t in TASKS if any(t in r for r in rows)] or ["bbox"]
    names = {"segm": "mask", "bbox": "box"}
    headers = ["method", "stage"]
    pool = any("APpool" in r.get("bbox-fixed", {}) for r in rows)
    for t in tasks:
        headers += [f"{names[t]} AP", "APr", "APc", "APf", "AP-fixed"]
        if t == "bbox" and pool:
            headers.append("AP-pool")
    headers.append("wall (s)")
    table = []
    for r in rows:
        stage = f"2 (from {r['stage1']})" if r.get("stage1") else str(r["stage"])
        cells = [r["label"], stage]
        for t in tasks:
            m, fixed = r.get(t, {}), r.get(f"{t}-fixed", {})
            cells += [f"{m[k]:.1f}" if k in m else "-" for k in ("AP", "APr", "APc", "APf")]
            cells.append(f"{fixed['AP']:.1f}" if "AP" in fixed else "-")
            if t == "bbox" and pool:
                cells.append(f"{fixed['APpool']:.1f}" if "APpool" in fixed else "-")
        cells.append(f"{r['wall_s']:.0f}" + (" (cached)" if r.get("cached") else ""))
        table.append(cells)
    return tabulate(table, headers, tablefmt="github", disable_numparse=True)


def _plots(out_dir: str, data: Dict[str, str], jobs: Dict[str, _Job], paths: _Paths) -> None:
    """Per-class AP vs frequency and classifier norm vs frequency, all methods overlaid."""
    from .evaluation import plot_ap_vs_frequency, plot_classifier_norms, read_per_class

    runs, labels, task = [], [], "bbox"
    for t in TASKS:  # mask AP where the runs have it
        paths_ap = {n: os.path.join(j.out_dir, "inference", "lt_synth_val",
                                    f"per_class_ap_{t}.json") for n, j in jobs.items()}
        if any(os.path.isfile(p) for p in paths_ap.values()):
            task = t
            break
    for n, path in paths_ap.items():
        if os.path.isfile(path):
            runs.append(read_per_class(path))
            labels.append(n)
    what = {"segm": "mask", "bbox": "box"}[task]
    plot_ap_vs_frequency(runs, labels, os.path.join(out_dir, "ap_vs_frequency.png"),
                         title=f"synthetic LVIS, {what} AP")
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


def summarize_runs(
    out_dirs: Sequence[str], task: Optional[str] = None, *, group: bool = False
) -> str:
    """Markdown: per method the mean (min-max) of AP, APr, APc, APf (and AP-fixed, and for bbox
    AP-pool, where the runs have them; a cell over fewer runs than its row says "k of n runs")
    over benchmark outputs, then per run the best stage-2
    method by APr and its margins over softmax CE and RFS. Folders of one seed and setting are
    one run (:func:`load_runs`).

    ``task``: "segm" (mask AP) or "bbox" (box AP); None = mask AP when every run has it.

    Only runs with the same :data:`SUMMARY_SETTINGS` (data preset, stage-1 / stage-2 iterations,
    stage-1 method) are averaged: runs that differ raise an error naming each folder's settings,
    or, with ``group``, get one table per group of equal settings.

    Raises:
        LTDetError: a folder has no results.json, or settings differ and ``group`` is False.
    """
    runs = load_runs(out_dirs)
    if task is None:
        has_segm = all(any("segm" in m for m in r["methods"]) for r in runs)
        task = "segm" if has_segm else "bbox"
    groups: Dict[Tuple, List[Dict]] = {}
    for r in runs:
        groups.setdefault(settings_of(r), []).append(r)
    if len(groups) > 1 and not group:
        listed = "; ".join(
            f"{os.path.dirname(r['_paths'][0]) or '.'}: "
            + ", ".join(f"{k}={v}" for k, v in zip(SUMMARY_SETTINGS, settings_of(r)))
            for r in runs
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
    keys = ["AP", "APr", "APc", "APf"]
    if any(f"{task}-fixed" in m for r in runs for m in r["methods"]):
        keys.append("AP-fixed")
    if any("APpool" in m.get(f"{task}-fixed", {}) for r in runs for m in r["methods"]):
        keys.append("AP-pool")
    order: List[str] = []
    for r in runs:
        order += [m["method"] for m in r["methods"] if m["method"] not in order]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    what = {"segm": "mask", "bbox": "box"}.get(task, task)
    lines = [f"| method ({len(runs)} runs, seeds {seeds}; {what} AP) | " + " | ".join(keys) +
             " |", "|---" * (len(keys) + 1) + "|"]
    for name in order:
        rows = [m for r in runs for m in r["methods"] if m["method"] == name and task in m]
        cells = []
        for k in keys:
            if k in ("AP-fixed", "AP-pool"):
                key = "AP" if k == "AP-fixed" else "APpool"
                v = [m[f"{task}-fixed"][key] for m in rows if key in m.get(f"{task}-fixed", {})]
            else:
                v = [m[task][k] for m in rows if k in m[task]]
            cell = f"{sum(v) / len(v):.1f} ({min(v):.1f}-{max(v):.1f}" if v else "-"
            if v:  # a mean over fewer runs than the row's (older results lack the column)
                cell += f"; {len(v)} of {len(rows)} runs)" if len(v) < len(rows) else ")"
            cells.append(cell)
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
