#!/usr/bin/env bash
# GPU checks and figures in one run, printed as one table (within 8 minutes on one H100):
#
#   1. box-classification losses, forward + backward on CUDA (tools/bench_heads.py --devices cuda:
#      512 x 1204 and 8192 x 1204 columns, float32 and bf16 autocast, every registered loss
#      against softmax CE / sigmoid BCE);
#   2. Channel Whitening in the box predictor on CUDA (tools/bench_heads.py --whitening);
#   3. box post-processing and the mask head at LVIS / COCO test settings on CUDA, detectron2's
#      against lt_det's (tools/bench_infer.py --devices cuda);
#   4. a few training iterations on CUDA of the end-to-end recipe (Channel Whitening + LDAM-DRW +
#      GRBS/BET, Mask R-CNN MobileNetV2-FPN, configs/synthetic/e2e_whitening.yaml) on synthetic
#      data with LVIS v1's long tail (tools/make_synthetic_lvis.py --preset lvis_like), evaluated
#      at LVIS's test settings (300 detections per image, score threshold 1e-4);
#   5. NCCL: one process per GPU (lt_det.engine.launch; world size = number of GPUs), one
#      all_reduce whose sum is checked.
#
# Usage: tools/bench_gpu.sh [--out DIR] [--iters N] [--budget SECONDS] [--dry-run | --table DIR]
#   --out DIR       where the reports go (absent or empty; default: a new folder under $TMPDIR)
#   --iters N       training iterations of step 4 (default 100)
#   --budget S      wall-clock budget of the whole run (default 470); each step is stopped at its
#                   own limit or when the budget is spent, and the table says so
#   --dry-run       print the steps' commands and exit (no GPU needed)
#   --table DIR     print the table of an earlier run's reports folder again (no GPU needed)
# Environment: PYTHON (default: .venv/bin/python when present, else python).
# Exit status: 0 all steps passed, 1 a step failed or was stopped, 2 bad arguments or no CUDA.
set -u -o pipefail
cd "$(dirname "$0")/.."

die() { echo "bench_gpu.sh: error: $*" >&2; exit 2; }

OUT="" ITERS=100 BUDGET=470 DRY=0 TABLE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT="$2"; shift 2 ;;
    --iters) [ $# -ge 2 ] || die "--iters needs a number"; ITERS="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a number of seconds"; BUDGET="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --table) [ $# -ge 2 ] || die "--table needs a reports folder"; TABLE="$2"; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; see tools/bench_gpu.sh --help" ;;
  esac
done
case "$ITERS" in ''|*[!0-9]*) die "--iters '$ITERS' must be a positive integer" ;; esac
case "$BUDGET" in ''|*[!0-9]*) die "--budget '$BUDGET' must be a positive integer (seconds)" ;; esac
[ "$ITERS" -ge 1 ] || die "--iters must be at least 1"
[ "$BUDGET" -ge 60 ] || die "--budget $BUDGET is too short; give at least 60 seconds"
if [ -n "$OUT" ] && [ -e "$OUT" ] && { [ ! -d "$OUT" ] || [ -n "$(ls -A "$OUT")" ]; }; then
  die "--out $OUT exists and is not an empty folder; give a new one (nothing there is replaced)"
fi

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON '$PYTHON' not found; set PYTHON or run make setup"

OUT_SHOWN="${OUT:-<new folder under ${TMPDIR:-/tmp}>}"
HALF=$(( ITERS / 2 ))
DRW=$(( ITERS * 7 / 8 ))
# Step commands ($OUT is substituted when they run).
heads_cmd() {
  echo "$PYTHON tools/bench_heads.py --devices cuda --sizes 512x1203 8192x1203" \
       "--dtypes float32 bfloat16 --allocators default --repeats 20 --output $1/bench_heads.json"
}
whitening_cmd() {
  echo "$PYTHON tools/bench_heads.py --whitening --devices cuda --agnostic-box" \
       "--group-sizes 64 0 --repeats 20 --warmup 3 --output $1/bench_whitening.json"
}
infer_cmd() {
  echo "$PYTHON tools/bench_infer.py --devices cuda --repeats 10 --ref-repeats 3" \
       "--output $1/bench_infer.json"
}
data_cmd() {
  echo "$PYTHON tools/make_synthetic_lvis.py --preset lvis_like --out $1/data"
}
train_cmd() {
  local d="$1/data"
  echo "$PYTHON tools/train_net.py --config-file configs/synthetic/e2e_whitening.yaml" \
       "MODEL.DEVICE cuda MODEL.MNV2.PRETRAINED_PATH '' SOLVER.MAX_ITER $ITERS" \
       "SOLVER.STEPS '($HALF,)' MODEL.ROI_BOX_HEAD.LDAM.DRW_START $DRW" \
       "SOLVER.CHECKPOINT_PERIOD 1000000 TEST.EVAL_PERIOD 0 TEST.DETECTIONS_PER_IMAGE 300" \
       "DATALOADER.NUM_WORKERS 4" \
       "DATASETS.LVIS_FORMAT \"[['lt_synth_train','$d/lvis_v1_train.json','$d/train']," \
       "['lt_synth_val','$d/lvis_v1_val.json','$d/val']]\" OUTPUT_DIR $1/train"
}
nccl_cmd() {
  echo "$PYTHON $1/nccl_check.py"
}
STEPS="heads whitening infer data train nccl"
# Per-step limits in seconds (the remaining budget caps each one).
limit_of() {
  case "$1" in heads) echo 90 ;; whitening) echo 60 ;; infer) echo 120 ;; data) echo 60 ;;
               train) echo 180 ;; nccl) echo 60 ;; esac
}

print_table() {
"$PYTHON" - "$1" <<'PYEOF'
"""The table: one row per figure, from the steps' json / log files."""
import json
import os
import re
import sys

out = sys.argv[1]
steps = {}
for line in open(os.path.join(out, "steps.tsv")):
    name, status, seconds = line.rstrip("\n").split("\t")
    steps[name] = (status, int(seconds))
rows = []  # (step, what, figure)


def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


heads = load("bench_heads.json") or []
for r in heads:
    for n in ("softmax CE (reference)", "sigmoid BCE (reference)", "balanced_softmax", "ldam",
              "class_balanced_focal", "eqlv2", "seesaw"):
        if n in r["rows"]:
            x = r["rows"][n]
            rows.append(("heads", f"{n}, {r['rois']} x {r['columns']}, {r['dtype']}",
                         f"{x['median_ms']:.2f} ms ({x['ratio']:.2f}x)"))
for r in load("bench_whitening.json") or []:
    for n, x in r["rows"].items():
        rows.append(("whitening", f"{n}, {r['rois']} x {r['features']}, {r['device']}",
                     f"{x['median_ms']:.2f} ms ({x['ratio']:.2f}x)"))
infer = load("bench_infer.json") or {}
for r in infer.get("boxes", []):
    rows.append(("infer", f"{r['setting']} {r['device']}, {r['candidates']} candidates",
                 f"detectron2 {r['detectron2_s'] * 1e3:.1f} ms, lt_det {r['lt_det_s'] * 1e3:.1f} ms"
                 f" ({r['ratio']:.1f}x), equal {r['equal']}"))
for m in infer.get("masks", []):
    rows.append(("infer", f"mask head + paste, {m['detections']} dets, {m['device']}",
                 f"{m['mask_head_s'] * 1e3:.1f} + {m['paste_s'] * 1e3:.1f} ms"))
log = os.path.join(out, "train", "log.txt")
if os.path.exists(log):
    text = open(log).read()
    speed = re.search(r"Overall training speed: (\d+) iterations in \S+ \(([\d.]+) s / it\)", text)
    if speed:
        rows.append(("train", f"{speed.group(1)} iterations, e2e_whitening on CUDA",
                     f"{float(speed.group(2)):.3f} s / iteration"))
    res = load(os.path.join("train", "eval_results.json"))
    for task, metrics in (res or {}).items():
        if isinstance(metrics, dict) and "AP" in metrics:
            rows.append(("train", f"{task} after training (300 dets, score 1e-4)",
                         f"AP {metrics['AP']:.2f}" if metrics["AP"] is not None else "AP null"))
nccl = os.path.join(out, "nccl.log")
if os.path.exists(nccl):
    m = re.search(r"NCCL_OK (.*)", open(nccl).read())
    if m:
        rows.append(("nccl", "all_reduce of 4 MB, checked", m.group(1)))
print()
print("| step | status | s | what | figure |")
print("|---|---|---|---|---|")
for name, (status, seconds) in steps.items():
    mine = [r for r in rows if r[0] == name] or [(name, "-", "-")]
    for i, (_, what, fig) in enumerate(mine):
        head = f"| {name} | {status} | {seconds} |" if i == 0 else "| | | |"
        print(f"{head} {what} | {fig} |")
print(f"\nreports: {out}")
bad = [n for n, (s, _) in steps.items() if s != "ok"]
sys.exit(1 if bad else 0)
PYEOF
}

if [ -n "$TABLE" ]; then
  [ -f "$TABLE/steps.tsv" ] || die "--table $TABLE: no steps.tsv there (not a bench_gpu.sh reports folder)"
  print_table "$TABLE"
  exit $?
fi

if [ "$DRY" = 1 ]; then
  echo "bench_gpu.sh --dry-run: reports in $OUT_SHOWN, budget ${BUDGET} s"
  for s in $STEPS; do
    printf '%-10s (limit %3s s)  %s\n' "$s" "$(limit_of "$s")" "$("${s}_cmd" "$OUT_SHOWN")"
  done
  exit 0
fi

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null \
  || die "no CUDA device (torch.cuda.is_available() is False); run it on a machine with a GPU"

if [ -z "$OUT" ]; then
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/lt_det_bench_gpu.XXXXXX")"
else
  mkdir -p "$OUT" || die "cannot create --out $OUT"
fi
OUT="$(cd "$OUT" && pwd)"

cat > "$OUT/nccl_check.py" <<'PYEOF'
"""One process per GPU through lt_det's launcher, NCCL backend, one all_reduce checked."""
import sys
import time

import torch
import torch.distributed as dist

from lt_det.engine.launch import launch


def work(world_size: int) -> None:
    rank = dist.get_rank()
    x = torch.full((1 << 20,), float(rank + 1), device="cuda")
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    dist.all_reduce(x)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    want = world_size * (world_size + 1) / 2
    if not bool((x == want).all()):
        raise SystemExit(f"rank {rank}: all_reduce gave {x[0].item()}, expected {want}")
    if rank == 0:
        print(f"NCCL_OK world_size={world_size} backend={dist.get_backend()} sum={want:g} "
              f"all_reduce_ms={dt * 1e3:.2f}", flush=True)


def single() -> None:  # one GPU: lt_det's launch runs in-process, so make the group here
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29533", world_size=1, rank=0)
    torch.cuda.set_device(0)
    try:
        work(1)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    n = torch.cuda.device_count()
    if n == 1:
        single()
    else:
        launch(work, n, dist_url="auto", args=(n,), backend="nccl")
    sys.exit(0)
PYEOF

START=$(date +%s)
: > "$OUT/steps.tsv"
echo "bench_gpu.sh: reports in $OUT; $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | tr -s ' ' | paste -sd, -)"
for s in $STEPS; do
  left=$(( BUDGET - ($(date +%s) - START) ))
  lim=$(limit_of "$s")
  [ "$lim" -gt "$left" ] && lim=$left
  if [ "$lim" -lt 5 ]; then
    printf '%s\t%s\t%s\n' "$s" "skipped (budget spent)" 0 >> "$OUT/steps.tsv"
    continue
  fi
  cmd="$("${s}_cmd" "$OUT")"
  echo "== $s (limit $lim s): $cmd"
  t0=$(date +%s)
  timeout --kill-after=10 "$lim" bash -c "$cmd" > "$OUT/$s.log" 2>&1
  rc=$?
  dt=$(( $(date +%s) - t0 ))
  case $rc in
    0) status=ok ;;
    124|137) status="stopped at ${lim} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ $rc -eq 0 ] || tail -n 5 "$OUT/$s.log" | sed 's/^/    /'
  printf '%s\t%s\t%s\n' "$s" "$status" "$dt" >> "$OUT/steps.tsv"
done

print_table "$OUT"
