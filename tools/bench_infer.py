#!/usr/bin/env python
"""Time the box predictor's post-processing, detectron2's against lt_det's, at LVIS and COCO test
settings, and the mask head with mask pasting at LVIS's 300 detections per image.

Box post-processing: ``FastRCNNOutputLayers.inference`` (detectron2's: ``predict_boxes``,
``predict_probs``, ``fast_rcnn_inference``) against ``LTFastRCNNOutputLayers.inference``
(the same, with :func:`lt_det.modeling.fast_inference.fast_rcnn_inference_topk`), on one
predictor, one image, the same predictions. Settings:

  * lvis-softmax / lvis-sigmoid: 1203 classes, 1000 proposals, score threshold 1e-4, 300
    detections, NMS 0.5 (LVIS's test settings), loss "softmax_ce" / "sigmoid_ce";
  * coco-softmax / coco-sigmoid: 80 classes, 1000 proposals, score threshold 0.05, 100
    detections, NMS 0.5 (detectron2's COCO defaults).

Synthetic predictions shaped like a detector's: an 800 x 1333 image with 30 objects, each with a
class; RPN-like proposals (2000 jittered object boxes and 2000 boxes anywhere, NMS 0.7 on a
random objectness that ranks the object boxes first, the best 1000 kept); box deltas N(0, 0.1)
per class; logits N(0, 1) with +6 on the class of the object a proposal overlaps with IoU >= 0.5,
else on background (softmax), or N(-4.6, 2) with +8 on that object's class (sigmoid: about 99%
of the scores exceed 1e-4). Each result is
checked for equality with detectron2's (boxes, scores, classes, proposal indices).

Equal scores (LVIS size): lvis-softmax's boxes and scores with the scores rounded to multiples of
2^-16, so that equal scores decide the order of the 300 returned and every candidate goes through
per-class NMS; the two post-processing functions alone are timed.

Masks (LVIS settings): detectron2's ``MaskRCNNConvUpsampleHead`` (4 convs, 256 channels, 1203
classes) on 300 ROIs of 256 x 14 x 14 features for the lvis-softmax detections, its 1 x 1
class predictor alone (its share), lt_det's ``LTMaskRCNNConvUpsampleHead`` with the same weights
(only each detection's predicted-class mask; the largest difference of the masks is printed),
and ``paste_masks_in_image`` of the 300 masks into the image.

detectron2's inference runs ``--ref-repeats`` times at LVIS size (seconds each) and as often as
lt_det's at COCO size (4 x ``--repeats``, milliseconds each); medians are reported.
CPU times are the thread's CPU time (``time.thread_time``; waiting for a core on a shared machine
excluded) with one torch thread; CUDA times are wall times after synchronising. Prints the load
average (``os.getloadavg``) before and after.

    python tools/bench_infer.py [--settings lvis-softmax lvis-sigmoid coco-softmax coco-sigmoid]
        [--repeats 5] [--ref-repeats 1] [--devices auto] [--no-masks] [--no-equal-scores]
        [--output bench_infer.json]
"""
import argparse
import json
import os
import statistics
import time
import warnings
from typing import Callable, Dict, List, Tuple

# detectron2 calls torch.jit.script when imported; recent torch warns that it is deprecated.
warnings.filterwarnings(
    "ignore", r"`torch\.jit\.script` is deprecated", FutureWarning, r"torch\.jit"
)

import torch  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.layers.mask_ops import paste_masks_in_image  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.roi_heads.fast_rcnn import (  # noqa: E402
    FastRCNNOutputLayers,
    fast_rcnn_inference,
)
from detectron2.modeling.roi_heads.mask_head import MaskRCNNConvUpsampleHead  # noqa: E402
from detectron2.structures import Boxes, Instances, pairwise_iou  # noqa: E402
from torchvision.ops import nms  # noqa: E402

from lt_det.modeling import LTFastRCNNOutputLayers, LTMaskRCNNConvUpsampleHead  # noqa: E402
from lt_det.modeling.fast_inference import fast_rcnn_inference_topk  # noqa: E402

SETTINGS = {
    "lvis-softmax": dict(classes=1203, score_thresh=1e-4, topk=300, loss="softmax_ce"),
    "lvis-sigmoid": dict(classes=1203, score_thresh=1e-4, topk=300, loss="sigmoid_ce"),
    "coco-softmax": dict(classes=80, score_thresh=0.05, topk=100, loss="softmax_ce"),
    "coco-sigmoid": dict(classes=80, score_thresh=0.05, topk=100, loss="sigmoid_ce"),
}
PROPOSALS = 1000
NMS_THRESH = 0.5
IMAGE = (800, 1333)  # (height, width)
OBJECTS = 30
GOAL_LVIS = 30.0


def make_inputs(classes: int, loss: str, device: str, seed: int = 0):
    """(predictions, proposals) of one image, as described in the module docstring."""
    g = torch.Generator().manual_seed(seed)
    h, w = IMAGE
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)

    def random_boxes(n: int, lo: float, hi: float) -> torch.Tensor:
        ctr = torch.rand(n, 2, generator=g) * scale[:2]
        size = torch.rand(n, 2, generator=g) * (hi - lo) + lo
        return torch.cat([ctr - size / 2, ctr + size / 2], dim=1)

    objects = random_boxes(OBJECTS, 20, 320)
    obj_class = torch.randint(0, classes, (OBJECTS,), generator=g)
    # RPN-like proposals: half jittered object boxes, half anywhere, NMS 0.7 on a random
    # objectness (object boxes first), the best PROPOSALS kept.
    owner = torch.randint(0, OBJECTS, (2 * PROPOSALS,), generator=g)
    size = (objects[owner, 2:] - objects[owner, :2]).repeat(1, 2)
    near = objects[owner] + torch.randn(2 * PROPOSALS, 4, generator=g) * 0.15 * size
    cands = torch.cat([near, random_boxes(2 * PROPOSALS, 16, 600)])
    cands = torch.cat([cands[:, :2].minimum(cands[:, 2:]), cands[:, :2].maximum(cands[:, 2:])], 1)
    cands = torch.minimum(cands.clamp(min=0), scale)
    objectness = torch.rand(len(cands), generator=g) + (torch.arange(len(cands)) < len(near))
    props = cands[nms(cands, objectness, 0.7)[:PROPOSALS]]
    n = len(props)
    # Logits: the best-overlapping object's class gets a boost when IoU >= 0.5.
    iou, best = pairwise_iou(Boxes(props), Boxes(objects)).max(dim=1)
    fg = iou >= 0.5
    rows = torch.arange(n)
    deltas = torch.randn(n, 4 * classes, generator=g) * 0.1
    if loss == "softmax_ce":
        logits = torch.randn(n, classes + 1, generator=g)
        target = torch.where(fg, obj_class[best], torch.full_like(rows, classes))
        logits[rows, target] += 6.0
    else:
        logits = torch.randn(n, classes + 1, generator=g) * 2.0 - 4.6
        logits[rows[fg], obj_class[best[fg]]] += 8.0
    proposals = Instances(IMAGE)
    proposals.proposal_boxes = Boxes(props.to(device))
    return (logits.to(device), deltas.to(device)), [proposals]


def make_predictor(setting: Dict, device: str) -> LTFastRCNNOutputLayers:
    return LTFastRCNNOutputLayers(
        ShapeSpec(channels=1024),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=setting["classes"],
        cls_loss=setting["loss"],
        test_score_thresh=setting["score_thresh"],
        test_nms_thresh=NMS_THRESH,
        test_topk_per_image=setting["topk"],
    ).to(device)


def _time_once(fn: Callable, device: str) -> Tuple[float, object]:
    if device == "cpu":
        t0 = time.thread_time()
        out = fn()
        return time.thread_time() - t0, out
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def timed_pair(ref: Callable, new: Callable, device: str, ref_repeats: int, repeats: int):
    """Per-call seconds (thread CPU time on CPU, synchronised wall time on CUDA) of ``ref`` and
    ``new``, the runs interleaved (so load changes hit both alike), and their last results."""
    ref_t, new_t, ref_out, new_out = [], [], None, None
    for i in range(max(ref_repeats, repeats)):
        if i < ref_repeats:
            t, ref_out = _time_once(ref, device)
            ref_t.append(t)
        if i < repeats:
            t, new_out = _time_once(new, device)
            new_t.append(t)
    return ref_t, new_t, ref_out, new_out


def timed(fn: Callable, device: str, repeats: int) -> Tuple[List[float], object]:
    """Per-call seconds of ``fn`` (as :func:`timed_pair`) and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t, out = _time_once(fn, device)
        times.append(t)
    return times, out


def equal_results(a, b) -> bool:
    (ia, ka), (ib, kb) = a, b
    return all(
        torch.equal(x.pred_boxes.tensor, y.pred_boxes.tensor)
        and torch.equal(x.scores, y.scores)
        and torch.equal(x.pred_classes, y.pred_classes)
        and torch.equal(p, q)
        for x, y, p, q in zip(ia, ib, ka, kb)
    )


def bench_boxes(name: str, device: str, repeats: int, ref_repeats: int) -> Dict:
    setting = SETTINGS[name]
    if setting["classes"] < 1000:  # milliseconds each: more runs of both, for a stable median
        repeats = ref_repeats = 4 * repeats
    predictor = make_predictor(setting, device).eval()
    predictions, proposals = make_inputs(setting["classes"], setting["loss"], device)
    with torch.no_grad():
        scores = predictor.predict_probs(predictions, proposals)[0]
        candidates = int((scores[:, :-1] > setting["score_thresh"]).sum())
        ref_t, lt_t, ref, got = timed_pair(
            lambda: FastRCNNOutputLayers.inference(predictor, predictions, proposals),
            lambda: predictor.inference(predictions, proposals),
            device,
            ref_repeats,
            repeats,
        )
    return _row(name, device, candidates, ref_t, lt_t, ref, got)


def bench_equal_scores(device: str, repeats: int, ref_repeats: int) -> Dict:
    """lvis-softmax's boxes and scores, the scores rounded to multiples of 2^-16: many equal
    scores among the 300 returned, so every candidate goes through per-class NMS (the exact
    order of equal scores needs every survivor). Post-processing only (the functions)."""
    setting = SETTINGS["lvis-softmax"]
    predictor = make_predictor(setting, device).eval()
    predictions, proposals = make_inputs(setting["classes"], setting["loss"], device)
    with torch.no_grad():
        boxes = predictor.predict_boxes(predictions, proposals)
        probs = predictor.predict_probs(predictions, proposals)
        scores = [(s * 2.0**16).round() / 2.0**16 for s in probs]
    args = (boxes, scores, [IMAGE], setting["score_thresh"], NMS_THRESH, setting["topk"])
    ref_t, lt_t, ref, got = timed_pair(
        lambda: fast_rcnn_inference(*args),
        lambda: fast_rcnn_inference_topk(*args),
        device,
        ref_repeats,
        repeats,
    )
    candidates = int((scores[0][:, :-1] > setting["score_thresh"]).sum())
    name = "lvis-softmax, scores on a 2^-16 grid (post-processing only)"
    return _row(name, device, candidates, ref_t, lt_t, ref, got)


def _row(name: str, device: str, candidates: int, ref_t, lt_t, ref, got) -> Dict:
    """One result row: median times, their ratio and whether the detections are equal."""
    ref_s, lt_s = statistics.median(ref_t), statistics.median(lt_t)
    return dict(
        setting=name,
        device=device,
        candidates=candidates,
        detections=len(got[0][0]),
        detectron2_s=ref_s,
        lt_det_s=lt_s,
        ratio=ref_s / lt_s,
        equal=equal_results(ref, got),
        detectron2_times=ref_t,
        lt_det_times=lt_t,
        detections_result=got[0][0],
    )


def bench_masks(dets: Instances, device: str, repeats: int) -> Dict:
    """Mask head + pasting for the detections ``dets`` (LVIS classes)."""
    classes = SETTINGS["lvis-softmax"]["classes"]
    head = MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=256, width=14, height=14),
        num_classes=classes,
        conv_dims=[256] * 5,
        conv_norm="",
    ).to(device).eval()
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(len(dets), 256, 14, 14, generator=g).to(device)
    inst = Instances(dets.image_size)
    inst.pred_boxes = Boxes(dets.pred_boxes.tensor.to(device))
    inst.pred_classes = dets.pred_classes.to(device)
    ours = LTMaskRCNNConvUpsampleHead(
        ShapeSpec(channels=256, width=14, height=14),
        num_classes=classes,
        conv_dims=[256] * 5,
        conv_norm="",
    ).to(device).eval()
    ours.load_state_dict(head.state_dict())
    inst_ours = Instances(dets.image_size, **inst.get_fields())
    with torch.no_grad():
        head_t, out = timed(lambda: head(feats, [inst]), device, repeats)
        ours_t, out_ours = timed(lambda: ours(feats, [inst_ours]), device, repeats)
        diff = float((out_ours[0].pred_masks - out[0].pred_masks).abs().max())
        x = feats  # the head is an nn.Sequential: convs, deconv, relu, then the predictor
        for layer in list(head)[:-1]:
            x = layer(x)
        pred_t, _ = timed(lambda: head.predictor(x), device, repeats)
        masks = out[0].pred_masks[:, 0]
        boxes = out[0].pred_boxes
        paste_t, pasted = timed(
            lambda: paste_masks_in_image(masks, boxes, dets.image_size, threshold=0.5),
            device,
            repeats,
        )
    return dict(
        device=device,
        detections=len(dets),
        mask_head_s=statistics.median(head_t),
        lt_mask_head_s=statistics.median(ours_t),
        lt_max_abs_diff=diff,
        class_predictor_s=statistics.median(pred_t),
        paste_s=statistics.median(paste_t),
        pasted_bytes=pasted.numel() * pasted.element_size(),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--repeats", type=int, default=5, help="runs of lt_det's inference")
    parser.add_argument("--ref-repeats", type=int, default=1, help="runs of detectron2's")
    parser.add_argument("--mask-repeats", type=int, default=2)
    parser.add_argument("--devices", nargs="+", default=["auto"], help="cpu cuda | auto")
    parser.add_argument("--no-masks", action="store_true")
    parser.add_argument(
        "--no-equal-scores", action="store_true", help="skip the equal-scores row (LVIS size)"
    )
    parser.add_argument("--output", default="", help="also write the figures as json")
    args = parser.parse_args(argv)
    for name in ("repeats", "ref_repeats", "mask_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    devices = args.devices
    if devices != ["auto"] and not set(devices) <= {"cpu", "cuda"}:
        parser.error(f"--devices takes cpu, cuda or auto, not {' '.join(devices)}")
    out_dir = os.path.dirname(os.path.abspath(args.output)) if args.output else ""
    if out_dir and not os.path.isdir(out_dir):
        parser.error(f"--output {args.output}: folder {out_dir} does not exist")
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: no CUDA device is available")
    if devices == ["auto"]:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    rows, mask_rows = [], []
    for device in devices:
        for name in args.settings:
            row = bench_boxes(name, device, args.repeats, args.ref_repeats)
            rows.append(row)
            print(
                f"{name} {device}: {row['candidates']} candidates, detectron2 "
                f"{row['detectron2_s']:.4f} s, lt_det {row['lt_det_s']:.4f} s, "
                f"x{row['ratio']:.1f}, equal {row['equal']}",
                flush=True,
            )
        if not args.no_equal_scores:
            rows.append(bench_equal_scores(device, args.repeats, args.ref_repeats))
            print(f"equal scores {device}: x{rows[-1]['ratio']:.1f}, equal {rows[-1]['equal']}")
        lvis = [r for r in rows if r["setting"] == "lvis-softmax" and r["device"] == device]
        if not args.no_masks and lvis:
            mask_rows.append(bench_masks(lvis[0]["detections_result"], device, args.mask_repeats))
    load_after = os.getloadavg()

    print(f"\nload average (1, 5, 15 min): before {load_before}, after {load_after}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(
        "\n| setting | device | candidates | detections | detectron2 s | lt_det s | ratio "
        "| equal |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['device']} | {r['candidates']} | {r['detections']} | "
            f"{r['detectron2_s']:.4f} | {r['lt_det_s']:.4f} | {r['ratio']:.1f}x | {r['equal']} |"
        )
    failed = [r for r in rows if not r["equal"]]
    slow = [
        r for r in rows
        if r["device"] == "cpu" and r["setting"] in ("lvis-softmax", "lvis-sigmoid")
        and r["ratio"] < GOAL_LVIS
    ]
    if mask_rows:
        print("\n| masks (LVIS, 1203 classes) | device | detections | detectron2 mask head s | "
              "of which 1x1 class predictor s | lt_det mask head s | ratio | max abs diff | "
              "paste_masks_in_image s | pasted masks MB |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for m in mask_rows:
            print(
                f"| | {m['device']} | {m['detections']} | {m['mask_head_s']:.3f} | "
                f"{m['class_predictor_s']:.3f} | {m['lt_mask_head_s']:.3f} | "
                f"{m['mask_head_s'] / m['lt_mask_head_s']:.1f}x | {m['lt_max_abs_diff']:.1e} | "
                f"{m['paste_s']:.3f} | {m['pasted_bytes'] / 1e6:.0f} |"
            )
    if failed:
        names = ", ".join(f"{r['setting']} {r['device']}" for r in failed)
        print(f"NOT EQUAL to detectron2: {names}")
    if slow:
        print(f"below the {GOAL_LVIS:.0f}x goal: " + ", ".join(r["setting"] for r in slow))
    if args.output:
        for r in rows:
            r.pop("detections_result")
        with open(args.output, "w") as f:
            json.dump(
                dict(load_before=load_before, load_after=load_after, boxes=rows, masks=mask_rows),
                f,
                indent=1,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
