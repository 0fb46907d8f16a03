"""Inputs checked once, by one rule for every path, before anything is written.

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
from test_resume import CONFIG, TINY_OPTS
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
    """tools/train_net.py (main) refuses ``data``; nothing is written."""
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


# ------------------------------------------------------------------ datasets, checked before training
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


def test_eval_only_of_a_method_that_trains_nothing_passes_the_checks(tmp_path):
    """tau-norm is evaluated with --eval-only: the stage-2 training checks do not apply."""
    from test_checkpoints import train_net_error

    data, root = make_data(tmp_path)
    missing = str(tmp_path / "stage1.pth")
    msg = train_net_error(tmp_path, *data_opts(write_json(tmp_path, data), root),
                          "MODEL.DECOUPLE.METHOD", "tau_norm", "MODEL.WEIGHTS", missing,
                          "OUTPUT_DIR", str(tmp_path / "out"), flags=["--eval-only"])
    assert f"MODEL.WEIGHTS '{missing}' does not exist" in msg


# ------------------------------------------------------------------ every selecting key
def choice_keys_of_config_py():
    """The keys whose comment in lt_det/config.py lists "Choices:": the key assigned right after
    the comment block, or the key the block starts with ("# DATALOADER.SAMPLER_TRAIN (a
    detectron2 key) ... Choices: ...")."""
    import os
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lt_det",
                        "config.py")
    keys, block = [], []
    for line in open(path).read().splitlines():
        text = line.strip()
        if text.startswith("#"):
            if not text.startswith("# ----"):
                block.append(text.lstrip("# "))
            continue
        if any("Choices:" in b for b in block):
            named = re.match(r"((?:MODEL|DATALOADER|SOLVER|INPUT|TEST|DATASETS)\.[A-Z0-9_.]+)\s",
                             block[0])
            assigned = re.match(r"_C\.([A-Z0-9_.]+) = ", text)
            keys.append(named.group(1) if named else assigned.group(1))
        block = []
    return keys


def test_every_key_with_choices_is_checked_before_anything_is_written(tmp_path):
    from detectron2.config import get_cfg

    from lt_det.config import add_lt_config
    from lt_det.engine.defaults import config_choices

    keys = choice_keys_of_config_py()
    for key in ("MODEL.ROI_BOX_HEAD.CLS_SCORE", "MODEL.ROI_BOX_HEAD.FED_LOSS_CLASS_SETS",
                "MODEL.ROI_BOX_HEAD.CALIBRATION.METHOD", "DATALOADER.SAMPLER_TRAIN"):
        assert key in keys, (key, keys)  # the parser finds the keys it must
    cfg, choices = add_lt_config(get_cfg()), config_choices()
    for key in keys:
        default = cfg
        for part in key.split("."):
            default = default[part]
        out = tmp_path / key
        msg = main_error(tmp_path, key, "no_such_choice", out_dir=out)
        assert key in msg, (key, msg)
        assert not out.exists(), key
        if isinstance(default, bool):  # yacs refuses a string for a boolean key
            assert "Type mismatch" in msg, msg
        elif key == "MODEL.MNV2.PRETRAINED_PATH":  # a path: checked as a file where it is used
            assert "'no_such_choice' does not exist" in msg, msg
        else:
            assert key in choices, f"{key} has choices in lt_det/config.py but no check"
            assert f"{key} is 'no_such_choice'" in msg and str(choices[key]) in msg


def test_mnv2_imagenet_file_is_checked_only_where_it_is_loaded(tmp_path):
    """The synthetic configs use the MobileNetV2 backbone from MODEL.MNV2.PRETRAINED_PATH; with
    MODEL.WEIGHTS set the file is not read, and the checks do not ask for it."""
    from lt_det.engine import load_config
    from lt_det.engine.defaults import check_config

    cfg = load_config(CONFIG, ["MODEL.MNV2.PRETRAINED_PATH", str(tmp_path / "gone.pth")])
    assert cfg.MODEL.BACKBONE.NAME == "build_mnv2_fpn_backbone" and cfg.MODEL.WEIGHTS == ""
    with pytest.raises(LTDetError, match="gone.pth' does not exist"):
        check_config(cfg)
    cfg.MODEL.WEIGHTS = str(tmp_path / "trained.pth")
    check_config(cfg)


# ------------------------------------------------------------------ solver and device
def test_amp_on_a_cpu_run(tmp_path):
    data, root = make_data(tmp_path)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(write_json(tmp_path, data), root), "MODEL.DEVICE", "cpu",
                     "SOLVER.AMP.ENABLED", "True", out_dir=out)
    assert "SOLVER.AMP.ENABLED is True but MODEL.DEVICE is 'cpu'" in msg
    assert "SOLVER.AMP.ENABLED False" in msg and not out.exists()


@pytest.mark.parametrize("steps, max_iter, reason", [
    ((3, 6), 6, "num_updates=6, milestone=6"),  # a step at MAX_ITER
    ((4, 2), 6, "start_epoch=4, milestone=2"),  # not increasing
    ((0,), 6, "start_epoch=0, milestone=0"),  # a step at 0
])
def test_lr_steps_that_fvcore_refuses(tmp_path, steps, max_iter, reason):
    data, root = make_data(tmp_path)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(write_json(tmp_path, data), root),
                     "SOLVER.STEPS", str(steps), "SOLVER.MAX_ITER", str(max_iter), out_dir=out)
    assert f"SOLVER.STEPS {steps} with SOLVER.MAX_ITER {max_iter}" in msg and reason in msg
    assert "< SOLVER.MAX_ITER" in msg and not out.exists()


def test_lr_steps_detectron2_accepts_pass_the_checks():
    from lt_det.engine import load_config
    from lt_det.engine.defaults import check_solver

    for steps in ((), (5,), (2, 5), (5, 7), (7, 9)):  # beyond MAX_ITER: dropped by detectron2
        check_solver(load_config(CONFIG, ["SOLVER.STEPS", str(steps), "SOLVER.MAX_ITER", "6"]))


def test_num_gpus_with_cuda_is_refused_before_any_process_starts(tmp_path):
    """--num-gpus N with MODEL.DEVICE cuda needs N GPUs: refused by the launcher (no "rank R:"
    prefix: no worker ran). N CPU processes over gloo (MODEL.DEVICE cpu) pass."""
    from test_bad_input import assert_one_clean_message, cli

    from lt_det.engine.defaults import check_launch

    data, root = make_data(tmp_path)
    opts = [*data_opts(write_json(tmp_path, data), root), "OUTPUT_DIR", str(tmp_path / "out")]
    n = max(8, torch.cuda.device_count() + 1)
    rc, out, err = cli(tmp_path, *opts, "MODEL.DEVICE", "cuda", flags=["--num-gpus", str(n)])
    if torch.cuda.is_available():
        needles = [f"--num-gpus {n} starts one process per GPU",
                   f"Use --num-gpus {torch.cuda.device_count()}"]
    else:
        needles = ["this machine has no usable CUDA device", f"--num-gpus {n}: {n} CPU processes"]
    line = assert_one_clean_message(rc, out, err, "MODEL.DEVICE cpu", *needles)
    assert not line.startswith("lt_det: error: rank ")
    assert not (tmp_path / "out").exists()
    from test_resume import load_train_net

    parser = load_train_net().argument_parser()
    check_launch(parser.parse_args(["--config-file", CONFIG, "--num-gpus", "2",
                                    *TINY_OPTS, "MODEL.DEVICE", "cpu"]))


# ------------------------------------------------------------------ config files
def test_base_that_does_not_resolve(tmp_path):
    from lt_det.engine import load_config
    from test_resume import load_train_net

    (tmp_path / "configs").mkdir()
    top = tmp_path / "configs" / "top.yaml"
    top.write_text('_BASE_: "middle.yaml"\nSOLVER:\n  MAX_ITER: 2\n')
    middle = tmp_path / "configs" / "middle.yaml"
    middle.write_text('_BASE_: "Base-missing.yaml"\n')
    with pytest.raises(LTDetError) as e:
        load_config(str(top))
    missing = tmp_path / "configs" / "Base-missing.yaml"
    assert f"'{middle}' sets _BASE_ 'Base-missing.yaml', which does not exist ('{missing}'" in str(
        e.value)
    # through train_net: one line, nothing written
    out = tmp_path / "out"
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--config-file", str(top), "OUTPUT_DIR", str(out)])
    with pytest.raises(LTDetError, match="Fix the _BASE_ line of"):
        train_net.main(args)
    assert not out.exists()


# ------------------------------------------------------------------ test sets
def two_sets(tmp_path, train, test, root):
    """Overrides registering ``train`` / ``test`` (dicts) as t_train / t_val."""
    tr, te = write_json(tmp_path, train, "t_train.json"), write_json(tmp_path, test, "t_val.json")
    return tr, te, ["DATASETS.LVIS_FORMAT", repr([["t_train", tr, root], ["t_val", te, root]]),
                    "DATASETS.TRAIN", "('t_train',)", "DATASETS.TEST", "('t_val',)",
                    "MODEL.ROI_HEADS.NUM_CLASSES", "3"]


def test_coco_style_test_set_is_refused_before_training(tmp_path):
    """A json without LVIS's per-image neg_category_ids trains (training does not need it) but
    cannot be evaluated: refused before training when it is a test set, naming the dataset, the
    file, the image and the key."""
    data, root = make_data(tmp_path)
    coco = copy.deepcopy(data)
    for img in coco["images"]:  # COCO-style: no neg_category_ids / not_exhaustive_category_ids
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    _, te, opts = two_sets(tmp_path, coco, coco, root)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *opts, out_dir=out)
    assert "DATASETS.TEST dataset 't_val' cannot be evaluated" in msg and te in msg
    assert "image id 1 has no 'neg_category_ids'" in msg and not out.exists()
    assert f"tools/coco_to_lvis.py --input {te}" in msg
    # with the LVIS keys the same data passes the checks
    from detectron2.config import CfgNode

    from lt_det.engine.defaults import check_eval_ground_truth

    _, te, _ = two_sets(tmp_path, data, eval_gt(data), root)
    register_lvis_format("t_val", te, root)
    check_eval_ground_truth(CfgNode({"DATASETS": {
        "TEST": ("t_val",), "LVIS_FORMAT": [["t_val", te, root]]}}))


@pytest.mark.parametrize("change", ["names_permuted", "other_id"])
def test_test_set_with_other_categories_than_training(tmp_path, change):
    data, root = make_data(tmp_path)
    test = eval_gt(data)
    cats = test["categories"]
    if change == "names_permuted":
        cats[0]["name"], cats[1]["name"] = cats[1]["name"], cats[0]["name"]
    else:
        cats[2]["id"] = 4  # class3 (no annotation) gets id 4
    i = next(k for k, (a, b) in enumerate(zip(data["categories"], cats))
             if (a["id"], a["name"]) != (b["id"], b["name"]))
    a, b = data["categories"][i], cats[i]
    _, _, opts = two_sets(tmp_path, data, test, root)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *opts, out_dir=out)
    assert "DATASETS.TEST dataset 't_val' does not have the categories of DATASETS.TRAIN " \
           "dataset 't_train'" in msg
    assert (f"class {i} is id {a['id']} '{a['name']}' in 't_train' but id {b['id']} "
            f"'{b['name']}' in 't_val'") in msg
    assert not out.exists()


# ------------------------------------------------------------------ --eval-only weights
def finished_run(tmp_path):
    """OUTPUT_DIR of a finished training run, with its evaluation outputs."""
    out = tmp_path / "out"
    (out / "inference" / "t_val").mkdir(parents=True)
    for name, text in [("model_final.pth", "weights"), ("last_checkpoint", "model_final.pth"),
                       ("inference/t_val/per_class_ap_bbox.csv", "id,AP\n1,0.0105\n"),
                       ("inference/t_val/lvis_instances_results.json", "[]")]:
        (out / name).write_text(text)
    return out


def tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("weights", ["", "detectron2://ImageNetPretrained/MSRA/R-50.pkl",
                                     "other.pth"])
def test_eval_only_never_replaces_a_runs_results_with_another_models(tmp_path, weights):
    """After training, --eval-only with the config's MODEL.WEIGHTS ("" in the synthetic configs:
    a random model; ImageNet weights in the LVIS configs: random heads) or with weights from
    elsewhere would overwrite the run's detections and per-class AP: refused, nothing changes."""
    from test_checkpoints import train_net_error

    data, root = make_data(tmp_path)
    _, _, opts = two_sets(tmp_path, data, eval_gt(data), root)
    out = finished_run(tmp_path)
    if weights == "other.pth":
        weights = str(tmp_path / "other.pth")
        (tmp_path / "other.pth").write_text("weights")
    before = tree(out)
    msg = train_net_error(tmp_path, *opts, "OUTPUT_DIR", str(out), "MODEL.WEIGHTS", weights,
                          flags=["--eval-only"])
    assert f"MODEL.WEIGHTS {out / 'model_final.pth'}" in msg
    if weights:
        assert f"OUTPUT_DIR '{out}' holds a training run" in msg and weights in msg
    else:
        assert "randomly initialised model" in msg
    assert tree(out) == before


def test_eval_only_of_the_runs_own_checkpoint_passes_the_checks(tmp_path):
    from lt_det.engine import load_config
    from lt_det.engine.defaults import check_start_weights

    out = finished_run(tmp_path)
    cfg = load_config(CONFIG, ["OUTPUT_DIR", str(out), "MODEL.WEIGHTS",
                               str(out / "model_final.pth")])
    check_start_weights(cfg, resume=False, eval_only=True)
    cfg.MODEL.WEIGHTS = ""  # --resume loads OUTPUT_DIR's last checkpoint instead
    check_start_weights(cfg, resume=True, eval_only=True)
    fresh = load_config(CONFIG, ["OUTPUT_DIR", str(tmp_path / "new")])
    with pytest.raises(LTDetError, match="randomly initialised"):  # nothing to resume: random
        check_start_weights(fresh, resume=True, eval_only=True)



def _refusal(tmp_path, *flags_and_opts, out):
    """tools/train_net.py's main on the tiny config with ``flags_and_opts`` (flags first); the
    LTDetError message."""
    from test_bad_input import load_train_net

    train_net = load_train_net()
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    flags = [a for a in flags_and_opts if a.startswith("--")]
    opts = [a for a in flags_and_opts if not a.startswith("--")]
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *flags, *TINY_OPTS, *data_opts(js, root),
         "OUTPUT_DIR", str(out), *opts]
    )
    with pytest.raises(LTDetError) as e:
        train_net.main(args)
    return str(e.value)


@pytest.mark.parametrize("eval_only", [False, True])
def test_weights_url_that_cannot_be_fetched_is_one_line_before_anything_is_written(
    tmp_path, eval_only
):
    """A MODEL.WEIGHTS URL is fetched before OUTPUT_DIR is made (offline: refused, the message
    says to copy the file and pass its path); port 9 on the loopback refuses at once."""
    out = tmp_path / "out"
    url = "http://127.0.0.1:9/R-50.pkl"
    flags = ["--eval-only"] if eval_only else []
    msg = _refusal(tmp_path, *flags, "MODEL.WEIGHTS", url, out=out)
    assert f"MODEL.WEIGHTS '{url}' cannot be fetched" in msg and "pass its path" in msg, msg
    assert not out.exists()


def test_missing_weights_of_an_evaluation_do_not_suggest_random_initialisation(tmp_path):
    missing = str(tmp_path / "nope.pth")
    msg = _refusal(tmp_path, "--eval-only", "MODEL.WEIGHTS", missing, out=tmp_path / "out")
    assert f"MODEL.WEIGHTS '{missing}' does not exist" in msg and 'WEIGHTS ""' not in msg, msg
