"""Shared fixtures: a tiny generated LVIS-format dataset, registered once per test session."""
import json
import logging

import pytest
import torch

from lt_det.data import register_lvis_format
from lt_det.data.synthetic import generate_synthetic_lvis

torch.set_num_threads(1)  # CI machines are small and shared; tests must not oversubscribe


@pytest.fixture(autouse=True)
def _lt_det_records_reach_caplog(request):
    """Running a tool in-process sets up the "lt_det" logger, which (as detectron2's
    setup_logger does) stops propagation to the root logger, where caplog listens: forward
    lt_det's records to caplog while propagation is off."""
    lt_logger = logging.getLogger("lt_det")
    lt_logger.propagate = True
    if "caplog" not in request.fixturenames:
        yield
        return
    caplog = request.getfixturevalue("caplog")

    class ToCaplog(logging.Handler):
        def emit(self, record):
            if not lt_logger.propagate:
                caplog.handler.handle(record)

    forward = ToCaplog()
    lt_logger.addHandler(forward)
    yield
    lt_logger.removeHandler(forward)


@pytest.fixture(scope="session")
def tiny_lvis(tmp_path_factory):
    """Paths, class count and registered names of a tiny synthetic LVIS-format dataset."""
    out = tmp_path_factory.mktemp("tiny_lvis")
    paths = generate_synthetic_lvis(str(out / "data"), seed=0, preset="tiny")
    register_lvis_format("lt_tiny_train", paths["train_json"], paths["train_image_root"])
    register_lvis_format("lt_tiny_val", paths["val_json"], paths["val_image_root"])
    with open(paths["train_json"]) as f:
        num_classes = len(json.load(f)["categories"])
    return dict(paths, num_classes=num_classes, train="lt_tiny_train", val="lt_tiny_val")


def tiny_data_opts(tiny_lvis) -> list:
    """``KEY VALUE`` overrides that point a config at the tiny dataset (for tools/train_net.py)."""
    entries = [[tiny_lvis["train"], tiny_lvis["train_json"], tiny_lvis["train_image_root"]],
               [tiny_lvis["val"], tiny_lvis["val_json"], tiny_lvis["val_image_root"]]]
    return ["DATASETS.LVIS_FORMAT", repr(entries),
            "DATASETS.TRAIN", f"('{tiny_lvis['train']}',)",
            "DATASETS.TEST", f"('{tiny_lvis['val']}',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(tiny_lvis["num_classes"])]
