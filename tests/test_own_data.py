"""Own data from json to pictures: tools/coco_to_lvis.py, configs/own_data.yaml, tools/predict.py.

The COCO json is hand-made so that every expected field follows from its construction: one
class in 101 of 102 images (frequent: > 100), one in 11 (common), one in 10 (rare: <= 10), one with
crowd regions only (0 images), crowd regions next to instances, and an image without annotations.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances
from PIL import Image

from conftest import tiny_data_opts
from lt_det.data import register_lvis_format
from lt_det.engine import LTTrainer, load_config
from lt_det.engine.defaults import check_dataset_files, check_datasets, check_num_classes
from lt_det.engine.defaults import check_mask_annotations
from lt_det.engine.predictor import draw_predictions
from lt_det.errors import LTDetError
from lt_det.evaluation import evaluate_lvis
from lt_det.lvis_json import check_lvis_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWN_DATA = os.path.join(ROOT, "configs", "own_data.yaml")
R18 = os.path.join(ROOT, "configs", "synthetic", "Base-synthetic-R18-FPN.yaml")

APPLE, BUS, CUP, DOG = 1, 3, 7, 9  # category ids skip numbers, as COCO's do
W, H = 64, 48


def load_tool(name):
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"lt_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_coco():
    """102 images: apple in 1..101 (two in image 1, plus a crowd region in image 2), bus in
    1..11, cup in 20..29, dog only as crowd regions (images 50, 51), nothing in image 102."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in range(1, 103)]
    anns = []

    def add(image_id, cat, box, crowd=0):
        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "bbox": box,
                     "area": float(box[2] * box[3]), "iscrowd": crowd})

    for i in range(1, 102):
        add(i, APPLE, [2, 2, 10, 10])
    add(1, APPLE, [30, 2, 10, 10])
    add(2, APPLE, [30, 30, 20, 15], crowd=1)
    for i in range(1, 12):
        add(i, BUS, [2, 20, 20, 12])
    for i in range(20, 30):
        add(i, CUP, [40, 30, 10, 10])
    for i in (50, 51):
        add(i, DOG, [10, 30, 20, 15], crowd=1)
    cats = [{"id": c, "name": n, "supercategory": "thing"}
            for c, n in ((APPLE, "apple"), (BUS, "bus"), (CUP, "cup"), (DOG, "dog"))]
    return {"info": {"description": "hand-made"}, "images": images, "annotations": anns,
            "categories": cats}


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def convert(tmp_path, *extra, coco=None):
    """tools/coco_to_lvis.py in process: (exit status, the LVIS json path)."""
    src = write(tmp_path / "coco.json", coco or make_coco())
    out = str(tmp_path / "lvis.json")
    return load_tool("coco_to_lvis").main(["--input", src, "--output", out, *extra]), out


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lt_det: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------ coco_to_lvis
def test_coco_to_lvis_writes_a_file_others_can_read(tmp_path):
    """The json gets mode 0o666 less the umask, as any file the user writes (not mkstemp's
    0o600)."""
    umask = os.umask(0o022)
    try:
        rc, out = convert(tmp_path)
    finally:
        os.umask(umask)
    assert rc == 0
    assert os.stat(out).st_mode & 0o777 == 0o644
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_coco_to_lvis_fields(tmp_path):
    coco = make_coco()
    rc, out = convert(tmp_path, coco=coco)
    assert rc == 0
    with open(out) as f:
        lvis = json.load(f)
    check_lvis_records(lvis, out)  # lt_det's own rules for an LVIS-format json
    all_ids = [APPLE, BUS, CUP, DOG]

    # per image: negatives = not annotated (crowd counts as annotated), not exhaustive = crowd
    assert [img["id"] for img in lvis["images"]] == list(range(1, 103))
    for img, src in zip(lvis["images"], coco["images"]):
        mine = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        assert img["neg_category_ids"] == sorted(set(all_ids) - {a["category_id"] for a in mine})
        assert img["not_exhaustive_category_ids"] == sorted(
            {a["category_id"] for a in mine if a["iscrowd"]})
        assert {k: img[k] for k in src} == src  # the COCO fields are kept
    by_id = {img["id"]: img for img in lvis["images"]}
    assert by_id[2]["not_exhaustive_category_ids"] == [APPLE]
    assert by_id[2]["neg_category_ids"] == [CUP, DOG]
    assert by_id[50]["neg_category_ids"] == [BUS, CUP]  # dog's crowd region: not a negative
    assert by_id[50]["not_exhaustive_category_ids"] == [DOG]
    assert by_id[102]["neg_category_ids"] == all_ids
    assert by_id[101]["not_exhaustive_category_ids"] == []

    # per category: counts without crowd, LVIS's r/c/f rule on the image count
    cats = {c["id"]: c for c in lvis["categories"]}
    assert [c["id"] for c in lvis["categories"]] == all_ids
    assert {c: cats[c]["image_count"] for c in all_ids} == {APPLE: 101, BUS: 11, CUP: 10, DOG: 0}
    assert {c: cats[c]["instance_count"] for c in all_ids} == {APPLE: 102, BUS: 11, CUP: 10,
                                                                 DOG: 0}
    assert {c: cats[c]["frequency"] for c in all_ids} == {APPLE: "f", BUS: "c", CUP: "r",
                                                            DOG: "r"}
    assert cats[BUS]["name"] == "bus" and cats[BUS]["supercategory"] == "thing"
    assert lvis["annotations"] == coco["annotations"]
    assert lvis["info"] == coco["info"]


def test_coco_to_lvis_registers_and_evaluates(tmp_path):
    """The output registers (lt_det's counts equal the json's) and a perfect result scores AP 1
    with both evaluation backends (lvis-api itself included)."""
    rc, out = convert(tmp_path)
    assert rc == 0
    (tmp_path / "images").mkdir()
    register_lvis_format("own_data_coco", out, str(tmp_path / "images"))
    meta = MetadataCatalog.get("own_data_coco")
    assert meta.thing_classes == ["apple", "bus", "cup", "dog"]
    assert [c["image_count"] for c in meta.class_image_count] == [101, 11, 10, 0]
    assert meta.class_frequency == ["f", "c", "r", "r"]

    with open(out) as f:
        lvis = json.load(f)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": 0.9} for a in lvis["annotations"] if not a["iscrowd"]]
    # A confident apple on image 2's apple crowd region: apple is not exhaustive there, so the
    # unmatched detection is ignored (as COCO ignores detections on crowd regions).
    on_crowd = [{"image_id": 2, "category_id": APPLE, "bbox": [30, 30, 20, 15], "score": 1.0}]
    for backend in ("fast", "lvis"):
        m = evaluate_lvis(out, perfect + on_crowd, iou_type="bbox", backend=backend).metrics
        for key in ("AP", "AP50", "APr", "APc", "APf"):
            assert m[key] == pytest.approx(1.0), (backend, key, m[key])
    # Without the not-exhaustive mark that detection is a false positive ranked first.
    by_id = {img["id"]: img for img in lvis["images"]}
    by_id[2]["not_exhaustive_category_ids"] = []
    m = evaluate_lvis(lvis, perfect + on_crowd, iou_type="bbox").metrics
    assert m["APf"] < 1.0 and m["APr"] == pytest.approx(1.0)


def test_coco_to_lvis_counts_from_training_json(tmp_path, capsys):
    """A validation split takes the training json's counts and groups (as LVIS's val json)."""
    rc, train = convert(tmp_path)
    assert rc == 0
    coco = make_coco()
    val_coco = dict(coco, images=coco["images"][:5],
                    annotations=[a for a in coco["annotations"] if a["image_id"] <= 5])
    val_src = write(tmp_path / "val_coco.json", val_coco)
    val_out = str(tmp_path / "val.json")
    tool = load_tool("coco_to_lvis")
    assert tool.main(["--input", val_src, "--output", val_out, "--counts-from", train]) == 0
    with open(val_out) as f, open(train) as g:
        val_cats, train_cats = json.load(f)["categories"], json.load(g)["categories"]
    keys = ("id", "image_count", "instance_count", "frequency")
    assert [[c[k] for k in keys] for c in val_cats] == [[c[k] for k in keys] for c in train_cats]
    assert "counts from" in capsys.readouterr().out

    other = dict(val_coco, categories=val_coco["categories"][:3],
                 annotations=[a for a in val_coco["annotations"] if a["category_id"] != DOG])
    src = write(tmp_path / "other.json", other)
    assert tool.main(["--input", src, "--output", str(tmp_path / "o.json"),
                      "--counts-from", train]) == 2
    one_error_line(capsys, "different category ids", str([DOG]), f"'{train}'")
    assert not (tmp_path / "o.json").exists()
    # a COCO json (no counts) as --counts-from: that file is named
    assert tool.main(["--input", val_src, "--output", str(tmp_path / "o.json"),
                      "--counts-from", val_src]) == 2
    one_error_line(capsys, f"the categories of '{val_src}' lack 'image_count'")


def test_coco_to_lvis_never_overwrites(tmp_path, capsys):
    rc, out = convert(tmp_path)
    assert rc == 0
    with open(out, "w") as f:
        f.write("mine")
    rc, _ = convert(tmp_path)
    assert rc == 2
    one_error_line(capsys, out, "--force")
    assert open(out).read() == "mine"
    rc, _ = convert(tmp_path, "--force")
    assert rc == 0 and json.load(open(out))["categories"][0]["frequency"] == "f"
    # the input itself is never the output, --force or not
    src = str(tmp_path / "coco.json")
    before = open(src).read()
    assert load_tool("coco_to_lvis").main(["--input", src, "--output", src, "--force"]) == 2
    one_error_line(capsys, "is the input COCO json")
    assert open(src).read() == before


def _drop_area(coco):
    del coco["annotations"][3]["area"]


def _lvis_already(coco):
    coco["images"][0]["neg_category_ids"] = []


def _no_name(coco):
    del coco["categories"][1]["name"]


def _bad_category(coco):
    coco["annotations"][0]["category_id"] = 4


@pytest.mark.parametrize(
    "edit, needles",
    [
        (_drop_area, ["annotation 4", "'area'"]),
        (_lvis_already, ["image 1", "neg_category_ids", "LVIS-format already"]),
        (_no_name, ["category 3", "'name'"]),
        (_bad_category, ["annotation 1", "category_id 4"]),
    ],
)
def test_coco_to_lvis_refuses_bad_input(tmp_path, capsys, edit, needles):
    coco = make_coco()
    edit(coco)
    rc, out = convert(tmp_path, coco=coco)
    assert rc == 2
    one_error_line(capsys, str(tmp_path / "coco.json"), *needles)
    assert not os.path.exists(out)


def test_coco_to_lvis_help_states_the_assumption(capsys):
    with pytest.raises(SystemExit) as e:
        load_tool("coco_to_lvis").main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exhaustively labelled" in text and "verified negative" in text


def test_coco_to_lvis_cli(tmp_path):
    """What the user sees: a subprocess, one summary line, exit 0; a missing input: one line,
    exit 2, no traceback."""
    src = write(tmp_path / "coco.json", make_coco())
    cmd = [sys.executable, os.path.join(ROOT, "tools", "coco_to_lvis.py"), "--input", src,
           "--output", str(tmp_path / "lvis.json")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "4 categories (rare 2, common 1, frequent 1; counted here)" in p.stdout
    cmd[3], cmd[5] = str(tmp_path / "missing.json"), str(tmp_path / "other.json")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"lt_det: error: COCO json not found: '{cmd[3]}'."


# ------------------------------------------------------------------ configs/own_data.yaml
def test_own_data_config_builds_on_lvis_format_data(tiny_lvis):
    """The starting config with DATASETS.LVIS_FORMAT on the tiny dataset passes every door check
    and builds a Mask R-CNN that predicts on an image of the data's own size."""
    cfg = load_config(OWN_DATA, [*tiny_data_opts(tiny_lvis), "MODEL.DEVICE", "cpu",
                                 "MODEL.WEIGHTS", "", "INPUT.MIN_SIZE_TEST", "48"])
    assert cfg.MODEL.ROI_HEADS.NAME == "LTStandardROIHeads" and cfg.MODEL.MASK_ON
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    check_dataset_files(cfg)
    from lt_det.data import register_datasets_from_cfg

    register_datasets_from_cfg(cfg)
    check_datasets(cfg)
    check_num_classes(cfg)
    check_mask_annotations(cfg)
    torch.manual_seed(0)
    model = LTTrainer.build_model(cfg).eval()
    assert model.roi_heads.box_predictor.cls_score.out_features == tiny_lvis["num_classes"] + 1
    root = tiny_lvis["val_image_root"]
    rgb = np.asarray(Image.open(os.path.join(root, sorted(os.listdir(root))[0])).convert("RGB"))
    image = torch.from_numpy(rgb[:, :, ::-1].copy()).permute(2, 0, 1).float()  # BGR (INPUT.FORMAT)
    with torch.no_grad():
        out = model([{"image": image, "height": 48, "width": 48}])[0]["instances"]
    assert out.image_size == (48, 48) and out.has("pred_masks")


def test_own_data_config_unedited_names_the_json():
    """Run as shipped (paths not yet edited), the config is refused before training with one
    line naming the dataset and its json."""
    cfg = load_config(OWN_DATA, [])
    with pytest.raises(LTDetError, match=r"dataset 'my_train': json not found: "
                                         r"'datasets/my_data/train.json'"):
        check_dataset_files(cfg)


# ------------------------------------------------------------------ tools/predict.py
@pytest.fixture(scope="module")
def random_weights(tiny_lvis, tmp_path_factory):
    """A randomly initialised R18-FPN Mask R-CNN (slim mask head) for the tiny dataset, saved as
    a checkpoint, and the overrides that select it."""
    opts = [*tiny_data_opts(tiny_lvis), "MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.NUM_CONV",
            "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "TEST.DETECTIONS_PER_IMAGE", "20"]
    cfg = load_config(R18, opts)
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("weights") / "random.pth")
    torch.save({"model": LTTrainer.build_model(cfg).state_dict()}, path)
    return path, opts


def test_predict_draws_on_images(tiny_lvis, random_weights, tmp_path):
    weights, opts = random_weights
    root = tiny_lvis["val_image_root"]
    inputs = [os.path.join(root, n) for n in sorted(os.listdir(root))[:2]]
    cmd = [sys.executable, os.path.join(ROOT, "tools", "predict.py"), "--config-file", R18,
           "--input", *inputs, "--output", str(tmp_path / "drawn"), "--confidence-threshold", "0",
           "--opts", *opts, "MODEL.WEIGHTS", weights]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert len(p.stdout.strip().splitlines()) == 2
    for path in inputs:
        drawn_path = tmp_path / "drawn" / os.path.basename(path)
        assert f"-> {drawn_path}" in p.stdout
        source = Image.open(path).convert("RGB")
        drawn = Image.open(drawn_path)
        assert drawn.size == source.size
        # the same image drawn with no detection (Visualizer's rendering of the image alone)
        empty = draw_predictions(np.asarray(source), Instances(source.size[::-1]))
        changed = (np.asarray(drawn.convert("RGB")) != empty).any(axis=2).mean()
        assert changed > 0.05, changed


def test_draw_predictions_draws_the_box_and_name():
    """One box on a flat grey image: its outline is drawn, pixels far from it are untouched."""
    image = np.full((80, 120, 3), 128, np.uint8)
    inst = Instances((80, 120))
    inst.pred_boxes = Boxes(torch.tensor([[40.0, 30.0, 80.0, 60.0]]))
    inst.scores = torch.tensor([0.87])
    inst.pred_classes = torch.tensor([1])
    empty = draw_predictions(image, Instances((80, 120)))
    np.testing.assert_array_equal(empty, image)
    meta = MetadataCatalog.get("own_data_draw_test").set(thing_classes=["cat", "dog"])
    drawn = draw_predictions(image, inst, meta)
    assert drawn.shape == image.shape
    assert (drawn[45, 39:42] != 128).any()  # left edge of the box
    assert (drawn[75:, :10] == 128).all()  # far corner
    unlabelled = draw_predictions(image, inst, None)
    assert (drawn != unlabelled).any()  # the label text "dog 87%" differs from "1 87%"


def _predict_error(capsys, tmp_path, *argv, opts=()):
    tool = load_tool("predict")
    rc = tool.main(["--config-file", R18, "--output", str(tmp_path / "drawn"), *argv, "--opts",
                    *opts])
    assert rc == 2
    return capsys.readouterr().err


def test_predict_refuses_bad_input(tiny_lvis, random_weights, tmp_path, capsys):
    weights, opts = random_weights
    root = tiny_lvis["val_image_root"]
    image = os.path.join(root, sorted(os.listdir(root))[0])
    cases = [
        (["--input", str(tmp_path / "nope.png")], [*opts, "MODEL.WEIGHTS", weights],
         ["nope.png", "does not exist"]),
        (["--input", image], [*opts, "MODEL.WEIGHTS", str(tmp_path / "none.pth")],
         ["MODEL.WEIGHTS", "none.pth", "does not exist"]),
        (["--input", image], [*opts, "MODEL.WEIGHTS", ""], ["MODEL.WEIGHTS is empty"]),
        (["--input", str(tmp_path)], [*opts, "MODEL.WEIGHTS", weights], ["holds no image"]),
        (["--input", image, "MODEL.WEIGHTS", weights], opts,
         ["'MODEL.WEIGHTS' does not exist and looks like a config key", "after --opts"]),
        (["--input", image, "--confidence-threshold", "1.5"], [*opts, "MODEL.WEIGHTS", weights],
         ["--confidence-threshold", "[0, 1]"]),
        (["--input", image], [*opts, "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.NUM_CLASSES", "9"],
         ["NUM_CLASSES is 9", f"MODEL.ROI_HEADS.NUM_CLASSES {tiny_lvis['num_classes']} (after"]),
        # a checkpoint of another architecture is refused, not half loaded
        (["--input", image], [*opts, "MODEL.WEIGHTS", weights, "MODEL.ROI_BOX_HEAD.FC_DIM", "64"],
         ["does not fit this model", "roi_heads.box_head.fc1.weight"]),
    ]
    for argv, extra, needles in cases:
        err = _predict_error(capsys, tmp_path, *argv, opts=extra)
        lines = [line for line in err.splitlines() if line.startswith("lt_det: error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert not (tmp_path / "drawn").exists()  # nothing written

    # an existing drawing is kept without --force; an input folder is never the output
    (tmp_path / "drawn").mkdir()
    mine = tmp_path / "drawn" / os.path.basename(image)
    mine.write_bytes(b"mine")
    err = _predict_error(capsys, tmp_path, "--input", image, opts=[*opts, "MODEL.WEIGHTS", weights])
    assert "already exists" in err and "--force" in err and mine.read_bytes() == b"mine"
    tool = load_tool("predict")
    before = open(image, "rb").read()
    rc = tool.main(["--config-file", R18, "--input", image, "--output", os.path.dirname(image),
                    "--force", "--opts", *opts, "MODEL.WEIGHTS", weights])
    assert rc == 2 and "whose drawing would replace it" in capsys.readouterr().err
    assert open(image, "rb").read() == before


def test_docs_commands_parse():
    """Every command of docs/own_data.md names existing configs and parses with its tool's own
    argument parser (the tools themselves are run above)."""
    import re
    import shlex

    with open(os.path.join(ROOT, "docs", "own_data.md")) as f:
        lines = [line for block in re.findall(r"```bash\n(.*?)```", f.read(), re.S)
                 for line in block.splitlines() if line.strip()]
    tools = set()
    for line in lines:
        words = shlex.split(line)
        assert words[:1] == ["python"] and words[1].startswith("tools/"), line
        name = os.path.basename(words[1])[: -len(".py")]
        tool = load_tool(name)
        parser = tool.argument_parser() if name == "train_net" else tool.build_parser()
        args = parser.parse_args(words[2:])
        if getattr(args, "config_file", None):
            assert os.path.isfile(os.path.join(ROOT, args.config_file)), line
        tools.add(name)
    assert tools == {"coco_to_lvis", "train_net", "predict"}
