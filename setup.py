"""lt_det: long-tailed detection and instance segmentation on Detectron2."""
from setuptools import find_packages, setup

setup(
    name="lt_det",
    version="0.1.0",
    description="Long-tailed object detection for Detectron2: balanced heads, long-tail samplers, "
    "decoupled classifier retraining and fast LVIS evaluation",
    packages=find_packages(include=("lt_det", "lt_det.*")),
    python_requires=">=3.8",
    # torch, torchvision and detectron2 are installed by tools/setup_env.sh (detectron2 is not on
    # PyPI under its own name); the rest is pinned in requirements.txt.
    install_requires=[
        "numpy", "lvis", "pycocotools", "faster-coco-eval", "matplotlib", "tabulate", "tqdm"
    ],
)
