"""lt_det's top-k post-processing returns exactly detectron2's ``fast_rcnn_inference`` detections.

Every case compares boxes, scores, classes, their order and the proposal indices bit for bit with
detectron2's function on the same inputs, and checks which path ran: the top-M passes; every
candidate (fewer survivors than requested, equal scores in the returned order, all detections
asked for); or detectron2's function (fewer than 40,000 candidates).
"""
from unittest import mock

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.roi_heads import CascadeROIHeads, build_roi_heads
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from detectron2.structures import Boxes, Instances

from lt_det import add_lt_config
from lt_det.modeling import LTFastRCNNOutputLayers
from lt_det.modeling import fast_inference
from lt_det.modeling.fast_inference import fast_rcnn_inference_topk

IMAGE = (480, 640)  # (height, width)


def _boxes(num_props, num_reg_classes, gen, spread=8.0):
    """(R, 4C) boxes: random proposals, jittered per class, some past the image border."""
    h, w = IMAGE
    ctr = torch.rand(num_props, 2, generator=gen) * torch.tensor([w, h])
    wh = torch.rand(num_props, 2, generator=gen) * 150 + 8
    base = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=1)
    jitter = torch.randn(num_props, num_reg_classes, 4, generator=gen) * spread
    return (base[:, None, :] + jitter).reshape(num_props, 4 * num_reg_classes)


def _scores(num_props, num_classes, gen, kind="softmax"):
    """(R, K + 1) scores: softmax over K + 1, or K sigmoids and a zero background column."""
    logits = torch.randn(num_props, num_classes + 1, generator=gen) * 2.0
    if kind == "softmax":
        return logits.softmax(dim=1)
    return torch.cat([logits[:, :-1].sigmoid(), torch.zeros(num_props, 1)], dim=1)


def _run_both(boxes, scores, score_thresh, nms_thresh, topk, **kwargs):
    """(detectron2's result, lt_det's result, the path lt_det took): "detectron2" (its function
    ran), "all" (every candidate went through per-class NMS) or "top-k" (the top-M passes
    decided)."""
    args = ([boxes], [scores], [IMAGE], score_thresh, nms_thresh, topk)
    ref = fast_rcnn_inference(*args)
    with mock.patch.object(
        fast_inference,
        "fast_rcnn_inference_single_image",
        wraps=fast_inference.fast_rcnn_inference_single_image,
    ) as fallback, mock.patch.object(
        fast_inference, "_survivors", wraps=fast_inference._survivors
    ) as passes:
        got = fast_rcnn_inference_topk(*args, **kwargs)
    if fallback.call_count:
        path = "detectron2"
    elif any(call.args[-1] for call in passes.call_args_list):
        path = "all"
    else:
        path = "top-k"
    return ref, got, path


def _expected_path(boxes, scores, score_thresh, nms_thresh, topk):
    """"all" where the top-M passes cannot decide (fewer than ``topk`` survivors in all, or
    equal scores among detectron2's first ``topk`` + 1 detections), else "top-k"."""
    (ref,), _ = fast_rcnn_inference([boxes], [scores], [IMAGE], score_thresh, nms_thresh, topk + 1)
    head = ref.scores
    if len(head) < topk or bool((head[1:] == head[:-1]).any()):
        return "all"
    return "top-k"


def _assert_same(ref, got):
    (ref_inst,), (ref_idx,) = ref
    (got_inst,), (got_idx,) = got
    assert got_inst.image_size == ref_inst.image_size
    assert torch.equal(got_inst.pred_boxes.tensor, ref_inst.pred_boxes.tensor)
    assert torch.equal(got_inst.scores, ref_inst.scores)
    assert torch.equal(got_inst.pred_classes, ref_inst.pred_classes)
    assert torch.equal(got_idx, ref_idx)
    assert set(got_inst.get_fields()) == set(ref_inst.get_fields())


def _candidates(scores, score_thresh):
    return int((scores[:, :-1] > score_thresh).sum())


@pytest.mark.parametrize(
    "seed, kind, agnostic, nms_thresh, topk",
    [
        (0, "softmax", False, 0.5, 300),
        (1, "softmax", False, 0.3, 100),
        (2, "sigmoid", False, 0.7, 300),
        (3, "sigmoid", True, 0.5, 300),
        (4, "softmax", True, 0.6, 50),
    ],
)
def test_random_inputs_match_detectron2(seed, kind, agnostic, nms_thresh, topk):
    gen = torch.Generator().manual_seed(seed)
    num_props, num_classes = 240, 250
    boxes = _boxes(num_props, 1 if agnostic else num_classes, gen)
    scores = _scores(num_props, num_classes, gen, kind)
    assert _candidates(scores, 1e-4) >= fast_inference.PER_CLASS_NMS_MIN_CANDIDATES
    ref, got, path = _run_both(boxes, scores, 1e-4, nms_thresh, topk)
    _assert_same(ref, got)
    assert len(got[0][0]) == topk
    assert path == _expected_path(boxes, scores, 1e-4, nms_thresh, topk)


def test_score_threshold_zero_and_repeated_doubling():
    """Threshold 0: every (proposal, class) pair with a positive score is a candidate; the first
    pass takes a single candidate, so M doubles many times before enough survive."""
    gen = torch.Generator().manual_seed(5)
    boxes = _boxes(200, 230, gen, spread=3.0)  # heavy suppression within each class
    scores = _scores(200, 230, gen, "sigmoid")
    assert _candidates(scores, 0.0) == 200 * 230
    for initial in (None, 1):
        ref, got, path = _run_both(boxes, scores, 0.0, 0.5, 300, initial_candidates=initial)
        _assert_same(ref, got)
        assert path == _expected_path(boxes, scores, 0.0, 0.5, 300)


def test_fewer_survivors_than_requested():
    """All proposals share one box: each class keeps one detection, 150 < 300 survive; the
    passes double M up to every candidate and detectron2's function decides."""
    gen = torch.Generator().manual_seed(6)
    num_props, num_classes = 400, 150
    boxes = torch.tensor([[10.0, 20.0, 200.0, 220.0]]).repeat(num_props, 1)
    scores = _scores(num_props, num_classes, gen, "softmax")
    ref, got, path = _run_both(boxes, scores, 1e-4, 0.5, 300)
    _assert_same(ref, got)
    assert len(got[0][0]) == num_classes and path == "all"


def test_all_suppressed_classes():
    """Half the classes have one box for every proposal (a single survivor each) and the
    highest scores; the other classes fill the output."""
    gen = torch.Generator().manual_seed(7)
    num_props, num_classes = 200, 240
    boxes = _boxes(num_props, num_classes, gen).view(num_props, num_classes, 4)
    boxes[:, ::2] = torch.tensor([5.0, 5.0, 300.0, 300.0])
    scores = _scores(num_props, num_classes, gen, "sigmoid")
    scores[:, 0:-1:2] = scores[:, 0:-1:2] * 0.5 + 0.5  # even classes above 0.5,
    scores[:, 1:-1:2] = scores[:, 1:-1:2] * 0.5  # odd ones below
    ref, got, path = _run_both(boxes.view(num_props, -1), scores, 1e-4, 0.5, 300)
    _assert_same(ref, got)
    classes = got[0][0].pred_classes
    assert int((classes % 2 == 0).sum()) == num_classes // 2  # one per suppressed class
    assert path == _expected_path(boxes.view(num_props, -1), scores, 1e-4, 0.5, 300)


def test_equal_scores_in_the_output_follow_detectron2():
    """Scores on a grid of 1/64: the returned detections hold many equal scores, whose order
    detectron2 leaves to an unstable sort over all survivors: every candidate is needed."""
    gen = torch.Generator().manual_seed(8)
    boxes = _boxes(200, 250, gen)
    scores = (_scores(200, 250, gen, "sigmoid") * 64).round() / 64
    ref, got, path = _run_both(boxes, scores, 1e-4, 0.5, 300)
    _assert_same(ref, got)
    assert len(set(got[0][0].scores.tolist())) < 300 and path == "all"


def test_equal_scores_at_the_cut_follow_detectron2():
    """No suppression (every class's boxes are apart); the 300th and 301st best scores are
    equal, so which of them is returned is left to detectron2's unstable sort."""
    num_props, num_classes = 400, 120
    ys, xs = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    grid = torch.stack([xs * 30, ys * 22, xs * 30 + 20, ys * 22 + 15], dim=-1).view(-1, 4)
    gen = torch.Generator().manual_seed(9)
    scores = torch.cat([torch.rand(num_props, num_classes, generator=gen),
                        torch.zeros(num_props, 1)], dim=1)  # fmt: skip
    flat = scores[:, :-1].reshape(-1)
    order = flat.argsort(descending=True)
    flat[order[300]] = flat[order[299]]
    scores[:, :-1] = flat.view(num_props, num_classes)
    ref, got, path = _run_both(grid, scores, 1e-4, 0.5, 300)
    _assert_same(ref, got)
    assert path == "all"


def test_equal_scores_below_the_output_and_duplicate_proposals():
    """Equal scores only below the returned ones, and every proposal duplicated (same box, same
    scores): within a class NMS keeps the first of each pair, as torchvision's stable order
    does in detectron2; the top-k passes decide."""
    gen = torch.Generator().manual_seed(10)
    boxes = _boxes(140, 200, gen, spread=1.0)  # positive areas: each pair has IoU 1
    scores = _scores(140, 200, gen, "softmax")
    low = scores < 0.02
    scores[low] = (scores[low] * 1e5).floor() / 1e5
    boxes, scores = boxes.repeat_interleave(2, dim=0), scores.repeat_interleave(2, dim=0)
    ref, got, path = _run_both(boxes, scores, 0.0, 0.5, 300)
    _assert_same(ref, got)
    assert bool((got[1][0] % 2 == 0).all())
    assert path == _expected_path(boxes, scores, 0.0, 0.5, 300) == "top-k"


def test_non_finite_rows_are_dropped_as_detectron2_does():
    """Rows with a non-finite box or score are removed first; the proposal indices count the
    remaining rows."""
    gen = torch.Generator().manual_seed(11)
    boxes = _boxes(240, 250, gen)
    scores = _scores(240, 250, gen, "softmax")
    boxes[3, 7] = float("inf")
    scores[10, 2] = float("nan")
    ref, got, path = _run_both(boxes, scores, 1e-4, 0.5, 300)
    _assert_same(ref, got)
    assert path == _expected_path(boxes, scores, 1e-4, 0.5, 300)


def test_empty_and_small_inputs_and_all_detections():
    gen = torch.Generator().manual_seed(12)
    ref, got, path = _run_both(torch.zeros(0, 4 * 30), torch.zeros(0, 31), 0.05, 0.5, 100)
    _assert_same(ref, got)
    assert len(got[0][0]) == 0 and path == "detectron2"
    boxes, scores = _boxes(50, 30, gen), _scores(50, 30, gen, "softmax")
    ref, got, path = _run_both(boxes, scores, 0.05, 0.5, 100)
    _assert_same(ref, got)
    assert path == "detectron2"
    boxes, scores = _boxes(240, 250, gen), _scores(240, 250, gen)
    for topk, expected in ((0, "detectron2"), (-1, "all")):
        ref, got, path = _run_both(boxes, scores, 1e-4, 0.5, topk)
        _assert_same(ref, got)
        assert path == expected


def test_lvis_size_1203_classes_1000_proposals():
    """LVIS's class and proposal counts (1203 x 1000), 300 detections, softmax scores; the score
    threshold keeps about 5% of the pairs (62,000 candidates) so that detectron2's own function
    stays fast enough for a unit test."""
    gen = torch.Generator().manual_seed(13)
    boxes = _boxes(1000, 1203, gen)
    scores = _scores(1000, 1203, gen, "softmax")
    ref, got, path = _run_both(boxes, scores, 3e-3, 0.5, 300)
    assert _candidates(scores, 3e-3) >= fast_inference.PER_CLASS_NMS_MIN_CANDIDATES
    _assert_same(ref, got)
    assert len(got[0][0]) == 300
    assert path == _expected_path(boxes, scores, 3e-3, 0.5, 300) == "top-k"


def test_predictor_inference_equals_detectron2s():
    """``LTFastRCNNOutputLayers.inference`` against ``FastRCNNOutputLayers.inference`` on the
    same predictor and predictions (two images, class-specific boxes)."""
    torch.manual_seed(14)
    num_classes = 250
    predictor = LTFastRCNNOutputLayers(
        ShapeSpec(channels=16),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=num_classes,
        cls_loss="softmax_ce",
        test_score_thresh=1e-4,
        test_nms_thresh=0.5,
        test_topk_per_image=300,
    ).eval()
    gen = torch.Generator().manual_seed(14)
    proposals = []
    for _ in range(2):
        p = Instances(IMAGE)
        p.proposal_boxes = Boxes(_boxes(300, 1, gen, spread=0.0))
        proposals.append(p)
    predictions = (
        torch.randn(600, num_classes + 1, generator=gen) * 2.0,
        torch.randn(600, 4 * num_classes, generator=gen) * 0.2,
    )
    with torch.no_grad():
        ref = FastRCNNOutputLayers.inference(predictor, predictions, proposals)
        with mock.patch.object(
            fast_inference,
            "fast_rcnn_inference_single_image",
            wraps=fast_inference.fast_rcnn_inference_single_image,
        ) as fallback:
            got = predictor.inference(predictions, proposals)
    assert fallback.call_count == 0
    for i in range(2):
        _assert_same(([ref[0][i]], [ref[1][i]]), ([got[0][i]], [got[1][i]]))
        assert len(got[0][i]) == 300


def test_cascade_inference_equals_detectron2s():
    """``LTCascadeROIHeads`` at inference against detectron2's ``CascadeROIHeads._forward_box``
    on the same heads, features and proposals (3 stages, class-agnostic boxes)."""
    cfg = add_lt_config(get_cfg())
    cfg.MODEL.ROI_HEADS.NAME = "LTCascadeROIHeads"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 120
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 1
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 4
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    torch.manual_seed(15)
    shapes = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8)}
    heads = build_roi_heads(cfg, shapes).eval()
    for predictor in heads.box_predictor:  # spread the scores of the fresh classifiers
        torch.nn.init.normal_(predictor.cls_score.weight, std=1.0)
    gen = torch.Generator().manual_seed(15)
    h, w = IMAGE
    features = {
        "p2": torch.randn(1, 8, h // 4, w // 4, generator=gen),
        "p3": torch.randn(1, 8, h // 8, w // 8, generator=gen),
    }
    proposals = Instances(IMAGE)
    boxes = _boxes(400, 1, gen, spread=0.0)
    proposals.proposal_boxes = Boxes(boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h])))
    with torch.no_grad():
        ref = CascadeROIHeads._forward_box(heads, features, [proposals])
        with mock.patch.object(
            fast_inference,
            "fast_rcnn_inference_single_image",
            wraps=fast_inference.fast_rcnn_inference_single_image,
        ) as fallback:
            got = heads._forward_box(features, [proposals])
    _assert_same((ref, [torch.zeros(0)]), (got, [torch.zeros(0)]))
    assert len(got[0]) == 100 and fallback.call_count == 0
