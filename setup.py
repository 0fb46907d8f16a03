"""lt_det: long-tailed detection and instance segmentation on Detectron2.

Install (docs/install.md): torch, torchvision and detectron2 first (detectron2 is not on PyPI
under its own name), then ``pip install .``; ``tools/setup_env.sh`` makes the pinned, tested
environment (requirements.txt) with an editable install.

install_requires holds the lower bounds lt_det's own code needs and one upper bound (hotcoco's,
whose releases the fast backend checks). The other upper pins of requirements.txt are other
packages' needs: lvis-api 0.5.3's evaluation and detectron2 0.6 use names numpy 1.24 removed;
detectron2 0.6 uses Pillow's ``Image.LINEAR``, removed in Pillow 10.

The repository's ``configs/`` folder is shipped as the package data ``lt_det/configs/`` (see
:mod:`lt_det.model_zoo`), so every config resolves from an installed wheel; in a checkout and in
an editable install the folder stays where it is.
"""
import os

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = "configs"
# Config files: detectron2 yaml configs and LazyConfigs (.py, loaded by LazyConfig.load).
CONFIG_PATTERNS = ["*.yaml", "*.yml", "*.py", "*.json"]


def config_packages():
    """``{package: folder}`` for ``configs/`` and each subfolder, as ``lt_det.configs[.sub]``."""
    packages = {}
    root = os.path.join(HERE, CONFIGS)
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(folder, root)
        parts = [] if rel == "." else rel.split(os.sep)
        packages[".".join(["lt_det", "configs"] + parts)] = "/".join([CONFIGS] + parts)
    return packages


def long_description():
    path = os.path.join(HERE, "README.md")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


CONFIG_PACKAGES = config_packages()

setup(
    name="lt_det",
    version="0.1.0",
    description="Long-tailed object detection for Detectron2: balanced heads, long-tail samplers, "
    "decoupled classifier retraining and fast LVIS evaluation",
    long_description=long_description(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    packages=find_packages(include=("lt_det", "lt_det.*")) + sorted(CONFIG_PACKAGES),
    package_dir=dict(CONFIG_PACKAGES),
    package_data={
        "lt_det": ["data/published_lvis.json"],
        **{package: list(CONFIG_PATTERNS) for package in CONFIG_PACKAGES},
    },
    python_requires=">=3.8",
    # detectron2 is a requirement that pip cannot resolve: it is not on PyPI under its own name
    # (install it from source or from a wheel of its own, docs/install.md). What each bound is
    # for, from lt_det's own imports:
    install_requires=[
        "torch>=2.0",  # torch.func (per-example gradients of the meta-sampler, GRBS)
        "torchvision>=0.15",  # the torch 2.0 line; mobilenet_v2(weights=...), ops.nms
        "numpy>=1.17",  # numpy.random.default_rng
        "Pillow",  # image reading and the synthetic data's drawing (Image, ImageDraw)
        "matplotlib>=3.5",  # Figure(layout="constrained") in the AP plots
        "pycocotools>=2.0",  # mask RLE encode / decode / area
        # The default ("fast") LVIS evaluation backend, built for hotcoco 1.3 and refusing other
        # releases (lt_det.evaluation.backends.fast.HOTCOCO_VERSIONS): the one upper bound.
        "hotcoco>=1.3,<1.4",
        "omegaconf>=2.1",  # LazyConfig overrides (OmegaConf.select with default=)
        "PyYAML>=5.1",  # _BASE_ chains of yaml configs (yaml.safe_load)
        "tabulate>=0.8.3",  # markdown tables (tablefmt="github")
        "tqdm>=4",  # progress of long evaluations
        # filelock.lock_descriptor: the OUTPUT_DIR lock (lt_det.engine.lock); torch installs
        # filelock without a bound.
        "filelock>=3.30",
    ],
    extras_require={
        # The "lvis" evaluation backend (TEST.LVIS.BACKEND lvis, tools/lvis_eval.py --backend
        # lvis): lvis-api 0.5.3 evaluates with np.float, which numpy 1.24 removed.
        "lvis": ["lvis>=0.5.3", "numpy<1.24"],
        # The other evaluators tools/bench_eval.py compares with (it runs those installed).
        "bench": ["faster-coco-eval>=1.8"],
        # Faster reading of large result files (the stdlib json is used without it).
        "orjson": ["orjson>=3"],
        "test": ["pytest"],
    },
    # The programs of lt_det.tools (a checkout's tools/*.py run the same functions).
    entry_points={
        "console_scripts": [
            "lt-train-net=lt_det.tools.train_net:cli",
            "lt-benchmark=lt_det.tools.lt_benchmark:cli",
            "lt-benchmark-summary=lt_det.tools.benchmark_summary:cli",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
