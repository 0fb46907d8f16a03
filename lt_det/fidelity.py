"""Rank agreement between the synthetic benchmark and published LVIS results.

A synthetic benchmark is useful only if what wins on it wins on real LVIS. This module compares
the order of methods in benchmark outputs (``results.json`` of ``tools/lt_benchmark.py``) with the
order in published single-codebase LVIS tables (a json file, ``PUBLISHED_LVIS``; sources in
docs/synthetic.md), by Kendall's tau over the methods both have, per seed and per metric.

Kendall's tau-b (Kendall 1945, ties in either ranking handled)::

    tau_b = (n_c - n_d) / sqrt((n_0 - n_1) (n_0 - n_2))

with n_c / n_d the concordant / discordant pairs, n_0 = n (n - 1) / 2, and n_1, n_2 the sums of
t (t - 1) / 2 over the groups of t tied values in either ranking. It is 1 for the same order,
-1 for the reversed order, and about 0 for unrelated orders; with n methods it moves in steps
of 2 / n_0 (n = 3: -1, -1/3, 1/3, 1), so a table of few methods says little on its own.
"""
import json
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import LTDetError

__all__ = [
    "PUBLISHED_LVIS",
    "kendall_tau",
    "load_published",
    "TABLE_TASKS",
    "load_runs",
    "settings_of",
    "SUMMARY_SETTINGS",
    "rank_agreement",
    "format_agreement",
]

#: The published LVIS tables shipped with lt_det (see docs/synthetic.md for the sources).
PUBLISHED_LVIS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                              "published_lvis.json")


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b between two paired sequences (closed form in the module docstring).

    Args:
        x, y: paired values, same length n >= 2.

    Returns:
        tau-b in [-1, 1]; NaN when either sequence is constant (no order to compare).

    Raises:
        LTDetError: lengths differ or n < 2.
    """
    if len(x) != len(y) or len(x) < 2:
        raise LTDetError(f"kendall_tau needs two sequences of equal length >= 2, got "
                         f"{len(x)} and {len(y)} values.")
    n = len(x)
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0:
                ties_x += 1
            if dy == 0:
                ties_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    n0 = n * (n - 1) // 2
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    return (concordant - discordant) / denom if denom > 0 else float("nan")


#: What a table's AP values measure: "segm" (mask AP, the default) or "bbox" (box AP only).
TABLE_TASKS = ("segm", "bbox")


def load_published(path: str = PUBLISHED_LVIS) -> List[Dict]:
    """Published tables from a json file ``{"tables": [{"name", "source", "dataset", "metric",
    "task", "rows": {method: {"label", "AP", "APr", ...}}}, ...]}``.

    ``method`` is a benchmark method name; names not registered (yet) are kept, since only the
    methods a run and a table share are compared. ``task`` (optional, one of
    :data:`TABLE_TASKS`, default "segm") says what the table's AP values measure: a table of a
    box-only detector is "bbox" and is compared with the benchmark's box AP.

    Raises:
        LTDetError: the file is missing or not in that form.
    """
    if not os.path.isfile(path):
        raise LTDetError(f"published-results file '{path}' not found.")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise LTDetError(f"'{path}' is not valid json: {e}") from None
    tables = data.get("tables") if isinstance(data, dict) else None
    if not isinstance(tables, list) or not tables:
        raise LTDetError(f"'{path}': expected {{\"tables\": [...]}} with at least one table.")
    for i, t in enumerate(tables):
        missing = [k for k in ("name", "source", "rows") if k not in t]
        if missing or not isinstance(t["rows"], dict):
            raise LTDetError(f"'{path}': table {i} lacks {missing or ['rows as a dict']}.")
        if t.get("task", "segm") not in TABLE_TASKS:
            raise LTDetError(f"'{path}': table '{t['name']}': task {t['task']!r} is not one of "
                             f"{list(TABLE_TASKS)}.")
        for method, row in t["rows"].items():
            bad = [k for k, v in row.items() if k.startswith("AP") and
                   not isinstance(v, (int, float))]
            if bad:
                raise LTDetError(f"'{path}': table '{t['name']}', method '{method}': {bad} "
                                 "must be numbers.")
    return tables


#: results.json keys that must agree for runs to be averaged (the seed may differ).
SUMMARY_SETTINGS = ("preset", "iters", "stage2_iters", "stage1")


def settings_of(run: Dict) -> Tuple:
    """The :data:`SUMMARY_SETTINGS` values of one loaded ``results.json``."""
    return tuple(run.get(k) for k in SUMMARY_SETTINGS)


def load_runs(out_dirs: Sequence[str]) -> List[Dict]:
    """The ``results.json`` of benchmark output folders, one run per seed and setting.

    Folders of one seed made with the same :data:`SUMMARY_SETTINGS` (a benchmark split over
    several ``--out`` folders, e.g. methods added later with ``--stage1-cache``) are merged into
    one run: their method rows in folder order, ``"_paths"`` listing the folders. A folder may be
    given as its ``results.json``.

    Raises:
        LTDetError: a folder has no results.json or an unreadable one, or one method has
            different results in two folders of the same seed and settings (which row to use
            would be a guess). The same results twice (a stage-1 run both folders took from
            ``--stage1-cache``) count once.
    """
    merged: Dict[Tuple, Dict] = {}
    seen: Dict[Tuple, Dict[str, Tuple[Dict, str]]] = {}  # per run: method -> (row, its folder)
    for d in out_dirs:
        path = d if os.path.isfile(d) else os.path.join(d, "results.json")
        if not os.path.isfile(path):
            raise LTDetError(f"'{path}' does not exist; pass folders written by lt_benchmark.py "
                             "(each holds results.json)")
        try:
            with open(path) as f:
                run = json.load(f)
            rows = run["methods"]
        except (ValueError, KeyError, TypeError) as e:
            raise LTDetError(f"'{path}' is not a results.json of lt_benchmark.py ({e}); rerun "
                             "that benchmark or leave the folder out") from None
        key = (run.get("seed"),) + settings_of(run)
        if key not in merged:
            merged[key] = dict(run, methods=[], _paths=[])
            seen[key] = {}
        for m in rows:
            if m["method"] in seen[key]:
                first, where = seen[key][m["method"]]
                if _metrics(first) == _metrics(m):  # one run listed twice (a cached stage 1)
                    continue
                raise LTDetError(
                    f"method '{m['method']}' of seed {run.get('seed')} has different results in "
                    f"'{where}' and '{path}'; pass only one of them")
            seen[key][m["method"]] = (m, path)
            merged[key]["methods"].append(m)
        merged[key]["_paths"].append(path)
    return list(merged.values())


def _metrics(row: Mapping) -> Dict:
    """A results.json method row without its run facts (wall time, whether it was cached)."""
    return {k: v for k, v in row.items() if k not in ("wall_s", "cached")}


def rank_agreement(
    table: Mapping,
    run: Mapping,
    *,
    task: str = "segm",
    metrics: Sequence[str] = ("APr", "AP"),
) -> Dict:
    """Kendall tau between one published table and one benchmark run, per metric.

    Args:
        table: one entry of :func:`load_published`.
        run: one loaded ``results.json``.
        task: "segm" (mask AP) or "bbox" (box AP) of the benchmark run; a table with its own
            ``task`` (a box-only table: "bbox") is compared on that one instead.
        metrics: metric names present in both.

    Returns:
        ``{"methods": [common method names], "task": the task compared, metric: {"tau": float
        or None, "published": [values], "synthetic": [values]}}``; tau is None with fewer than
        2 common methods.
    """
    task = table.get("task", task)
    synth = {m["method"]: m.get(task, {}) for m in run["methods"]}
    common = [m for m in table["rows"] if m in synth]
    out: Dict = {"methods": common, "task": task}
    for k in metrics:
        names = [m for m in common if k in table["rows"][m] and k in synth[m]]
        pub = [float(table["rows"][m][k]) for m in names]
        syn = [float(synth[m][k]) for m in names]
        tau = kendall_tau(pub, syn) if len(names) >= 2 else None
        out[k] = {"methods": names, "tau": tau, "published": pub, "synthetic": syn}
    return out


def _order(names: Sequence[str], values: Sequence[float]) -> str:
    ranked = sorted(zip(values, names), key=lambda t: -t[0])
    return " > ".join(n for _, n in ranked)


def format_agreement(
    tables: Sequence[Mapping],
    runs: Sequence[Mapping],
    *,
    task: str = "segm",
    metrics: Sequence[str] = ("APr", "AP"),
    label: Optional[str] = None,
) -> str:
    """Markdown: per published table, the published order, each run's order and Kendall tau per
    metric, and the mean tau over the runs. ``task`` as in :func:`rank_agreement` (a table's own
    ``task`` wins; the task column says which was compared). Orders are by the first of
    ``metrics`` that the table gives (AP where a table has no APr)."""
    lines = []
    for t in tables:
        by = next((k for k in metrics if any(k in row for row in t["rows"].values())),
                  metrics[0])
        lines.append(f"### {t['name']}" + (f" ({label})" if label else ""))
        lines.append("")
        header = ["run", "preset", "task"] + [f"tau {k}" for k in metrics] + [f"order by {by}"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        taus: Dict[str, List[float]] = {k: [] for k in metrics}
        first = None
        for r in runs:
            agr = rank_agreement(t, r, task=task, metrics=metrics)
            first = first or agr
            cells = [f"seed {r.get('seed', '?')}", str(r.get("preset", "?")), agr["task"]]
            for k in metrics:
                tau = agr[k]["tau"]
                if tau is not None and not math.isnan(tau):
                    taus[k].append(tau)
                # undefined (fewer than 2 methods, or one side all ties, e.g. every APr 0)
                cells.append("-" if tau is None or math.isnan(tau) else f"{tau:+.2f}")
            a = agr[by]
            cells.append(_order(a["methods"], a["synthetic"]) or "-")
            lines.append("| " + " | ".join(cells) + " |")
        mean_cells = ["mean", "", ""] + [
            f"{sum(v) / len(v):+.2f}" if v else "-" for v in taus.values()] + [""]
        lines.append("| " + " | ".join(mean_cells) + " |")
        if first is not None:
            a = first[by]
            lines.append("")
            lines.append(f"published order by {by} ({t.get('dataset', '')}): "
                         f"{_order(a['methods'], a['published']) or '-'}")
        lines.append("")
    return "\n".join(lines)
