"""Broken inputs give one clear message (file / key / value and what to do), no traceback, and
leave the user's files alone.

A few cases run ``tools/train_net.py`` as a subprocess to show what the user sees (exit status 2,
one ``lt_det: error: ...`` line on stderr, no traceback on stdout or stderr); the others call its
``main`` (or the function it calls) in process and check the :class:`LTDetError` message.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from lt_det.data import register_lvis_format
from lt_det.engine import LTTrainer
from lt_det.engine.defaults import config_choices
from lt_det.errors import LTDetError
from test_resume import CONFIG, ROOT, TINY_OPTS, load_train_net

K = 3


# ------------------------------------------------------------------ hand-made data and runners
def make_data(tmp_path, *, images=2, missing_files=(), garbage_files=()):
    """``images`` 48 x 48 images, categories 1..3 (each image: a box + polygon of class 1, 2), as
    an LVIS-format json (exhaustively annotated: empty negative / not-exhaustive lists)."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    recs, anns = [], []
    for i in range(1, images + 1):
        name = f"{i}.png"
        if i in garbage_files:
            (root / name).write_bytes(b"this is not a png")
        elif i not in missing_files:
            img = np.full((48, 48, 3), 40, np.uint8)
            img[5:25, 5:25] = 220
            Image.fromarray(img).save(root / name)
        recs.append({"id": i, "file_name": name, "height": 48, "width": 48,
                     "neg_category_ids": [], "not_exhaustive_category_ids": []})
        anns += [
            {"id": 2 * i, "image_id": i, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400,
             "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]]},
            {"id": 2 * i + 1, "image_id": i, "category_id": 2, "bbox": [28, 26, 15, 18],
             "area": 270, "segmentation": [[28, 26, 43, 26, 43, 44, 28, 44]]},
        ]
    cats = [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)]
    return {"images": recs, "annotations": anns, "categories": cats}, str(root)


def write_json(tmp_path, data, name="train.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def data_opts(json_file, image_root, num_classes=K, name="bad_train"):
    return ["DATASETS.LVIS_FORMAT", repr([[name, json_file, image_root]]),
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes)]


def cli(tmp_path, *argv, flags=(), timeout=1800):
    """Run tools/train_net.py with ``KEY VALUE`` overrides ``argv``; return (status, out, err)."""
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", CONFIG,
           *flags, *TINY_OPTS, *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_clean_message(rc, out, err, *needles):
    assert rc == 2, (rc, err[-3000:])
    assert "Traceback" not in out + err, (out + err)[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("lt_det: error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def main_error(tmp_path, *argv, out_dir=None):
    """tools/train_net.py's main in process; return the LTDetError message."""
    train_net = load_train_net()
    out_dir = out_dir or tmp_path / "out"
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(out_dir), *argv]
    )
    with pytest.raises(LTDetError) as e:
        train_net.main(args)
    assert "Traceback" not in str(e.value)
    return str(e.value)


def snapshot(folder):
    return {
        f: (os.path.getmtime(os.path.join(folder, f)), open(os.path.join(folder, f), "rb").read())
        for f in sorted(os.listdir(folder))
    }


# ------------------------------------------------------------------ subprocess cases
def test_cli_json_that_is_not_json(tmp_path):
    _, root = make_data(tmp_path)
    bad = write_json(tmp_path, '{"images": [1, 2,,]}')
    rc, out, err = cli(tmp_path, *data_opts(bad, root), "OUTPUT_DIR", str(tmp_path / "out"))
    assert_one_clean_message(rc, out, err, bad, "not valid JSON", "line 1")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_overwrite_a_finished_run(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    out.mkdir()
    for name, text in [("model_final.pth", "weights"), ("last_checkpoint", "model_final.pth"),
                       ("config.yaml", "MODEL: {}\n"), ("metrics.json", '{"iteration": 9}\n')]:
        (out / name).write_text(text)
    before = snapshot(out)
    rc, stdout, err = cli(tmp_path, *data_opts(js, root), "OUTPUT_DIR", str(out))
    assert_one_clean_message(rc, stdout, err, str(out), "finished run", "--resume",
                             "--overwrite-output")
    assert snapshot(out) == before


def test_cli_missing_image_is_refused_before_training(tmp_path):
    data, root = make_data(tmp_path, images=2, missing_files=(1,))
    js = write_json(tmp_path, data)
    out = tmp_path / "out"
    rc, stdout, err = cli(tmp_path, *data_opts(js, root), "OUTPUT_DIR", str(out),
                          "SOLVER.MAX_ITER", "2")
    line = assert_one_clean_message(rc, stdout, err, os.path.join(root, "1.png"), "image id 1",
                                    "No such file", "1 image(s)")
    assert "Restore the files" in line
    assert not out.exists()  # refused before anything is written


def test_cli_error_in_a_spawned_worker_is_one_message(tmp_path):
    data, root = make_data(tmp_path)
    data["annotations"][0]["category_id"] = 7  # annotation 2: a class the json does not have
    js = write_json(tmp_path, data)
    # Reaches the workers: datasets are read there (setup_cfg runs in every process).
    rc, out, err = cli(tmp_path, "MODEL.DEVICE", "cpu", *data_opts(js, root),
                       "OUTPUT_DIR", str(tmp_path / "out"), flags=["--num-gpus", "2"])
    line = assert_one_clean_message(rc, out, err, js, "annotation 2", "category_id 7")
    assert line.startswith("lt_det: error: rank ")
    assert not (tmp_path / "out").exists()


def test_cli_config_error_is_refused_before_the_workers_start(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    rc, out, err = cli(tmp_path, "MODEL.DEVICE", "cpu", *data_opts(js, root),
                       "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.ROI_BOX_HEAD.CLS_LOSS", "focal",
                       flags=["--num-gpus", "2"])
    line = assert_one_clean_message(rc, out, err, "MODEL.ROI_BOX_HEAD.CLS_LOSS", "'focal'",
                                    "balanced_softmax")
    assert not line.startswith("lt_det: error: rank ")  # the launcher refused it
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ dataset files
@pytest.mark.parametrize("key", ["annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    data, root = make_data(tmp_path)
    del data[key]
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root))
    assert js in msg and repr([key]) in msg and "Expected an LVIS-format json" in msg


def test_category_ids_that_skip_numbers_are_mapped_and_num_classes_must_match(tmp_path):
    data, root = make_data(tmp_path)
    ids = {1: 1, 2: 5, 3: 9}  # ids 1, 5, 9 -> contiguous 0, 1, 2
    for c in data["categories"]:
        c["id"] = ids[c["id"]]
    for a in data["annotations"]:
        a["category_id"] = ids[a["category_id"]]
    js = write_json(tmp_path, data)
    register_lvis_format("skip_ids", js, root)
    assert {a["category_id"] for d in DatasetCatalog.get("skip_ids") for a in d["annotations"]} \
        == {0, 1}
    # A user who sizes the model by the largest id gets told the number of classes.
    msg = main_error(tmp_path, *data_opts(js, root, num_classes=9))
    assert "NUM_CLASSES is 9" in msg and "has 3 classes" in msg
    assert "Set MODEL.ROI_HEADS.NUM_CLASSES 3" in msg


def test_num_classes_not_matching_the_dataset(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root, num_classes=2))
    assert "'bad_train' has 3 classes" in msg and "Set MODEL.ROI_HEADS.NUM_CLASSES 3" in msg


def test_mask_rcnn_on_annotations_without_segmentation(tmp_path):
    data, root = make_data(tmp_path)
    for ann in data["annotations"][1:3]:
        del ann["segmentation"]
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.MASK_ON", "True")
    assert "MODEL.MASK_ON is True" in msg and "DATASETS.TRAIN dataset 'bad_train'" in msg
    assert js in msg and "2 annotation(s) without 'segmentation' (e.g. id 3)" in msg
    assert "MODEL.MASK_ON False" in msg
    assert not (tmp_path / "out").exists()  # checked before anything is written
    # boxes only: the same data passes the check
    from detectron2.config import CfgNode

    from lt_det.engine.defaults import check_mask_annotations

    cfg = CfgNode({"MODEL": {"MASK_ON": False},
                   "DATASETS": {"TRAIN": ("bad_train",), "TEST": ()}})
    check_mask_annotations(cfg)


def test_annotation_category_id_beyond_the_categories(tmp_path):
    data, root = make_data(tmp_path)
    data["annotations"][0]["category_id"] = 1204
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root))
    assert js in msg and "category_id 1204" in msg and "not in 'categories'" in msg


def test_box_with_negative_width(tmp_path):
    data, root = make_data(tmp_path)
    data["annotations"][1]["bbox"] = [30, 5, -4, 10]
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root))
    assert js in msg and "annotation 3" in msg and "negative size [30, 5, -4, 10]" in msg


def test_unreadable_image_is_named(tmp_path):
    data, root = make_data(tmp_path, images=1, garbage_files=(1,))
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root), "SOLVER.MAX_ITER", "1")
    assert os.path.join(root, "1.png") in msg and "cannot identify image file" in msg
    assert (tmp_path / "images" / "1.png").read_bytes() == b"this is not a png"


def test_image_of_another_size_than_its_record(tmp_path):
    data, root = make_data(tmp_path, images=1)
    data["images"][0]["width"] = 40
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root), "SOLVER.MAX_ITER", "1")
    assert os.path.join(root, "1.png") in msg and "'width'/'height'" in msg


# ------------------------------------------------------------------ priors and losses
def test_class_without_training_images_under_a_balanced_loss(tmp_path, caplog):
    data, root = make_data(tmp_path)  # class 3 ("class3") has no annotation
    js = write_json(tmp_path, data)
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, *TINY_OPTS, *data_opts(js, root), "OUTPUT_DIR",
         str(tmp_path / "out"), "MODEL.ROI_BOX_HEAD.CLS_LOSS", "balanced_softmax"]
    )
    from lt_det.engine import setup_cfg
    from lt_det.modeling import class_prior_from_cfg

    cfg = setup_cfg(args)
    with caplog.at_level(logging.WARNING, logger="lt_det.modeling.priors"):
        prior = class_prior_from_cfg(cfg)
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "1 class(es) have no training examples" in warning
    assert "2 (class3)" in warning and "ZERO_COUNT_FLOOR" in warning
    # floor 0.5 of an image out of 2 training images: log(prior) stays finite
    assert prior.tolist() == pytest.approx([1.0, 1.0, 0.25])


def test_prior_file_with_other_classes(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    cat_info = write_json(tmp_path, [{"id": i, "image_count": 3} for i in (1, 2, 7)], "ci.json")
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.ROI_BOX_HEAD.CLS_LOSS",
                     "balanced_softmax", "MODEL.ROI_BOX_HEAD.PRIOR.SOURCE", "cat_info",
                     "MODEL.ROI_BOX_HEAD.PRIOR.CAT_INFO_PATH", cat_info)
    assert cat_info in msg and "missing from the file [3]" in msg and "not in the dataset: [7]" in msg


# ------------------------------------------------------------------ stage 2 checkpoints
def test_stage2_with_missing_checkpoint(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    missing = str(tmp_path / "stage1" / "model_final.pth")
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.DECOUPLE.METHOD", "crt",
                     "MODEL.WEIGHTS", missing)
    assert missing in msg and "does not exist" in msg and "Train stage 1 first" in msg
    assert not (tmp_path / "out").exists()  # refused before OUTPUT_DIR is made


def test_stage2_with_incompatible_checkpoint(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    other = str(tmp_path / "other.pth")
    torch.save({"model": {"backbone.other.weight": torch.zeros(3)}}, other)
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.DECOUPLE.METHOD", "crt",
                     "MODEL.WEIGHTS", other)
    assert other in msg and "does not fit this model" in msg and "same architecture" in msg


def test_missing_weights_for_training_and_eval(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    missing = str(tmp_path / "nope.pth")
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.WEIGHTS", missing)
    assert f"MODEL.WEIGHTS '{missing}' does not exist" in msg
    assert not (tmp_path / "out").exists()
    train_net = load_train_net()
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", *TINY_OPTS, *data_opts(js, root),
         "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", missing]
    )
    with pytest.raises(LTDetError, match="does not exist"):
        train_net.main(args)
    assert not (tmp_path / "out").exists()


def test_start_weights_are_not_needed_when_resume_finds_a_checkpoint(tmp_path):
    from detectron2.config import get_cfg

    from lt_det.config import add_lt_config
    from lt_det.engine.defaults import check_start_weights

    cfg = add_lt_config(get_cfg())
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.WEIGHTS = str(tmp_path / "gone.pth")
    cfg.MODEL.DECOUPLE.METHOD = "crt"
    with pytest.raises(LTDetError, match="Train stage 1 first"):
        check_start_weights(cfg, resume=True, eval_only=False)  # nothing to resume from yet
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    check_start_weights(cfg, resume=True, eval_only=False)  # detectron2 loads that instead
    with pytest.raises(LTDetError, match="does not exist"):
        check_start_weights(cfg, resume=False, eval_only=True)


def test_cascade_head_with_class_specific_box_regression(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root), "MODEL.ROI_HEADS.NAME", "LTCascadeROIHeads",
                     "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False")
    assert "LTCascadeROIHeads" in msg and "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True" in msg
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ training
def test_nan_loss_names_iteration_and_last_good_checkpoint(tmp_path, monkeypatch):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    run_step = LTTrainer.run_step

    def poisoned(self):
        if self.iter == 3:  # the model's forward returns a NaN loss at iteration 3
            forward = self.model.forward
            self.model.forward = lambda batch: {
                k: v * float("nan") for k, v in forward(batch).items()
            }
        return run_step(self)

    monkeypatch.setattr(LTTrainer, "run_step", poisoned)
    out = tmp_path / "out"
    msg = main_error(tmp_path, *data_opts(js, root), "SOLVER.MAX_ITER", "6",
                     "SOLVER.CHECKPOINT_PERIOD", "2", out_dir=out)
    good = os.path.join(str(out), "model_0000001.pth")
    assert "NaN or infinite at iteration 3" in msg and f"'{good}'" in msg and "--resume" in msg
    assert "SOLVER.BASE_LR" in msg
    assert not (out / "model_final.pth").exists()
    torch.load(good, weights_only=False)  # complete and loadable


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("key", sorted(config_choices()))
def test_unknown_value_of_each_new_config_key(tmp_path, key):
    valid = config_choices()[key]
    msg = main_error(tmp_path, key, "no_such_choice")
    assert f"{key} is 'no_such_choice'" in msg and str(valid) in msg
    assert not (tmp_path / "out").exists()


def test_missing_config_file_and_unknown_key(tmp_path):
    from lt_det.engine import load_config

    with pytest.raises(LTDetError, match="config file not found: 'nope.yaml'"):
        load_config("nope.yaml")
    msg = main_error(tmp_path, "MODEL.ROI_BOX_HEAD.CLS_LOS", "softmax_ce")
    assert "MODEL.ROI_BOX_HEAD.CLS_LOS" in msg and "lt_det/config.py" in msg
    assert "Did you mean MODEL.ROI_BOX_HEAD.CLS_LOSS?" in msg
    assert "Did you mean" not in main_error(tmp_path, "FOO.BAR", "1")  # nothing close
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {CONFIG}\nSOLVER:\n  MAX_ITR: 2\n")
    with pytest.raises(LTDetError, match="Did you mean SOLVER.MAX_ITER"):
        load_config(str(typo))


def test_meta_sampler_outside_a_decoupled_stage2(tmp_path):
    data, root = make_data(tmp_path)
    js = write_json(tmp_path, data)
    msg = main_error(tmp_path, *data_opts(js, root), "DATALOADER.SAMPLER_TRAIN", "MetaSampler")
    assert "MODEL.DECOUPLE.METHOD is 'none'" in msg and "ClassPowerSampler" in msg
