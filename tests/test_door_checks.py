"""Inputs checked once, at the door, by one rule for every path, before anything is written.

Datasets (LVIS_FORMAT files and detectron2's builtin names), annotation records (polygons,
duplicate ids, image ids, crowd regions) for training and both evaluation backends alike, result
files, class priors given to the pure loss functions, and config combinations (Meta Sampler
without stage 2, a CUDA device that is not there, a loss that the ROI heads would ignore).
"""
import copy
import json

import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper
from test_bad_input import main_error, make_data, write_json
from test_bad_input import data_opts as _data_opts
from test_evaluation import _ann, _cats, _det, _img

from lt_det.data import register_lvis_format
from lt_det.errors import LTDetError
from lt_det.evaluation import evaluate_lvis
from lt_det.modeling.losses import (
    BalancedSigmoidLoss,
    balanced_sigmoid_loss,
    balanced_softmax_loss,
)

BACKENDS = ["fast", "lvis"]


def data_opts(js, root):
    return _data_opts(js, root)


def train_refuses(tmp_path, data, root, *needles):
    """The training door (tools/train_net.py main) refuses ``data``; nothing is written."""
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(js, root), out_dir=out)
    assert js in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    assert not out.exists()
    return msg


def eval_gt(data):
    """The training data as evaluation ground truth (LVIS keys added)."""
    gt = copy.deepcopy(data)
    for img in gt["images"]:
        img.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    for c in gt["categories"]:
        c["frequency"] = "f"
    return gt


def eval_refuses(gt, needles, iou_type="bbox"):
    dets = [_det(1, 1, (5, 5, 20, 20), 0.9, segm=iou_type == "segm")]
    for backend in BACKENDS:
        with pytest.raises(LTDetError) as e:
            evaluate_lvis(gt, dets, iou_type=iou_type, backend=backend)
        for needle in needles:
            assert needle in str(e.value), (backend, needle, str(e.value))


# ------------------------------------------------------------------ datasets at the door
def test_builtin_dataset_without_its_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # detectron2's builtin paths are relative (./datasets)
    out = tmp_path / "out"
    msg = main_error(tmp_path, "DATASETS.LVIS_FORMAT", "[]", "DATASETS.TRAIN", "('lvis_v1_train',)",
                     "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "1203", out_dir=out)
    assert "'lvis_v1_train'" in msg and "lvis_v1_train.json" in msg and "does not exist" in msg
    assert "DETECTRON2_DATASETS" in msg
    assert not out.exists()


def test_unregistered_dataset_name(tmp_path):
    out = tmp_path / "out"
    msg = main_error(tmp_path, "DATASETS.LVIS_FORMAT", "[]", "DATASETS.TRAIN", "('my_set',)",
                     "DATASETS.TEST", "()", out_dir=out)
    assert "DATASETS.TRAIN names dataset 'my_set', which is not registered" in msg
    assert "DATASETS.LVIS_FORMAT" in msg and not out.exists()


# ------------------------------------------------------------------ one rule, every path
def test_polygon_with_fewer_than_3_points_train_and_both_backends(tmp_path):
    data, root = make_data(tmp_path)
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x, y, x + w, y, x + w, y + h]]
    data["annotations"][1]["segmentation"] = [[5, 5, 25, 5]]  # 2 points, annotation 3
    needles = ["annotation 3", "fewer than 3 points", "drop the annotation"]
    train_refuses(tmp_path, data, root, *needles)
    eval_refuses(eval_gt(data), needles, iou_type="segm")


def test_duplicate_annotation_ids_train_and_both_backends(tmp_path):
    data, root = make_data(tmp_path)
    data["annotations"][3]["id"] = data["annotations"][0]["id"]  # ids 2, 3, 4, 2
    needles = ["annotation id 2 appears twice", "Renumber"]
    train_refuses(tmp_path, data, root, *needles)
    eval_refuses(eval_gt(data), needles)


@pytest.mark.parametrize("image_id, needle", [("1", "image_id '1' (str)"),
                                              (99, "image_id 99, which names no image")])
def test_annotation_image_id_string_or_unknown(tmp_path, image_id, needle):
    data, root = make_data(tmp_path)
    data["annotations"][2]["image_id"] = image_id  # annotation 4
    needles = ["annotation 4", needle]
    train_refuses(tmp_path, data, root, *needles)
    eval_refuses(eval_gt(data), needles)


def test_crowd_regions_stay_flagged_and_are_no_training_target(tmp_path):
    data, root = make_data(tmp_path, images=1)
    data["annotations"][1]["iscrowd"] = 1  # annotation 3 (class 2)
    js = write_json(tmp_path, data)
    register_lvis_format("crowd_train", js, root)
    (record,) = DatasetCatalog.get("crowd_train")
    assert [a["iscrowd"] for a in record["annotations"]] == [0, 1]
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.RANDOM_FLIP = (48,), 48, "none"
    instances = DatasetMapper(cfg, is_train=True)(record)["instances"]
    assert instances.gt_classes.tolist() == [0]  # only the non-crowd class-1 box


def test_crowd_regions_are_not_ground_truth_in_both_backends():
    boxes = {"A": (10, 10, 30, 30), "B": (55, 55, 30, 30)}
    anns = [_ann(1, 1, 1, boxes["A"]), _ann(2, 1, 1, boxes["B"])]
    gt = {"images": [_img(1)], "annotations": anns, "categories": _cats(1)}
    gt["annotations"][1]["iscrowd"] = 1
    no_crowd = copy.deepcopy(gt)
    del no_crowd["annotations"][1]
    # The detection on the crowd region scores higher than the one on the object.
    dets = [_det(1, 1, boxes["B"], 0.9), _det(1, 1, boxes["A"], 0.8)]
    results = {b: evaluate_lvis(gt, dets, backend=b) for b in BACKENDS}
    reference = evaluate_lvis(no_crowd, dets, backend="lvis")
    for b, r in results.items():
        assert r.num_gt.tolist() == [1], b
        assert r.metrics["AP"] == pytest.approx(reference.metrics["AP"], abs=1e-12), b
    # Counted as an object the crowd region would make this detector perfect.
    counted = copy.deepcopy(gt)
    counted["annotations"][1]["iscrowd"] = 0
    assert evaluate_lvis(counted, dets).metrics["AP"] == pytest.approx(1.0)
    assert reference.metrics["AP"] < 0.9


# ------------------------------------------------------------------ result files
def _gt_one_box():
    return {"images": [_img(1)], "annotations": [_ann(1, 1, 1, (10, 10, 30, 30))],
            "categories": _cats(1)}


@pytest.mark.parametrize("score", [float("nan"), float("inf")])
def test_results_with_non_finite_scores_both_backends(tmp_path, score):
    dets = [_det(1, 1, (10, 10, 30, 30), 0.9), _det(1, 1, (50, 50, 10, 10), score)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dets))  # json writes NaN / Infinity, as torch results would
    for backend in BACKENDS:
        with pytest.raises(LTDetError) as e:
            evaluate_lvis(_gt_one_box(), str(path), backend=backend)
        msg = str(e.value)
        assert str(path) in msg and "result 1" in msg and "not a finite number" in msg


@pytest.mark.parametrize("kind", ["polygon", "uncompressed"])
def test_segm_results_that_are_not_compressed_rle_both_backends(kind):
    det = _det(1, 1, (10, 10, 30, 30), 0.9)
    if kind == "polygon":
        det["segmentation"] = [[10, 10, 40, 10, 40, 40, 10, 40]]
    else:
        det["segmentation"] = {"size": [100, 100], "counts": [1010, 30, 70, 30, 8860]}
    for backend in BACKENDS:
        with pytest.raises(LTDetError, match="result 0 has segmentation.*compressed RLE"):
            evaluate_lvis(_gt_one_box(), [det], iou_type="segm", backend=backend)


# ------------------------------------------------------------------ priors in the pure losses
def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 0, 2])


def test_balanced_softmax_accepts_counts_refuses_zero():
    logits, gt = _batch()
    counts = torch.tensor([40.0, 8.0, 2.0])
    fractions = counts / 50
    assert balanced_softmax_loss(logits, gt, counts).item() == pytest.approx(
        balanced_softmax_loss(logits, gt, fractions).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"balanced_softmax_loss: class_prior must be finite and "
                                         r"> 0.*classes \[1\]"):
        balanced_softmax_loss(logits, gt, torch.tensor([0.8, 0.0, 0.04]))


def test_balanced_sigmoid_refuses_counts_in_function_and_module():
    logits, gt = _batch()
    counts = torch.tensor([40.0, 8.0, 2.0])
    with pytest.raises(ValueError, match=r"balanced_sigmoid_loss: class_prior must be in \(0, 1\] "
                                         r"\(counts are not accepted"):
        balanced_sigmoid_loss(logits, gt, counts)
    with pytest.raises(ValueError, match="counts are not accepted"):
        BalancedSigmoidLoss(num_classes=3, class_prior=counts)
    with pytest.raises(ValueError, match=r"classes \[1\] are not \(e.g. \[nan\]\)"):
        balanced_sigmoid_loss(logits, gt, torch.tensor([0.5, float("nan"), 0.1]))
    # fractions work, and 1 (a class in every image) is in range
    assert torch.isfinite(balanced_sigmoid_loss(logits, gt, torch.tensor([1.0, 0.16, 0.04])))


# ------------------------------------------------------------------ config combinations
def test_meta_sampler_refusal_comes_before_any_file(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(js, root), "DATALOADER.SAMPLER_TRAIN", "MetaSampler",
                     out_dir=out)
    assert "MODEL.DECOUPLE.METHOD is 'none'" in msg and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_machine_without_one(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.DEVICE", "cuda", out_dir=out)
    assert "MODEL.DEVICE is 'cuda'" in msg and "MODEL.DEVICE cpu" in msg and not out.exists()


def test_cls_loss_with_detectron2_standard_roi_heads(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
                     "MODEL.ROI_BOX_HEAD.CLS_LOSS", "balanced_softmax", out_dir=out)
    assert "'balanced_softmax'" in msg and "'StandardROIHeads'" in msg
    assert "MODEL.ROI_HEADS.NAME LTStandardROIHeads" in msg and not out.exists()


def test_eval_only_of_a_method_that_trains_nothing_passes_the_door(tmp_path):
    """tau-norm is evaluated with --eval-only: the stage-2 training checks do not apply."""
    from test_checkpoints import train_net_error

    data, root = make_data(tmp_path)
    missing = str(tmp_path / "stage1.pth")
    msg = train_net_error(tmp_path, *data_opts(write_json(tmp_path, data), root),
                          "MODEL.DECOUPLE.METHOD", "tau_norm", "MODEL.WEIGHTS", missing,
                          "OUTPUT_DIR", str(tmp_path / "out"), flags=["--eval-only"])
    assert f"MODEL.WEIGHTS '{missing}' does not exist" in msg
