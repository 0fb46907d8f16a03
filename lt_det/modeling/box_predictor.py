"""Fast R-CNN box predictor whose classification loss and scores come from a loss module.

Shape shorthand: R ROIs in the batch, K foreground classes; the classifier always has K + 1
outputs (column K = background) whatever the loss, so checkpoints move freely between heads.
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from torch import nn

from ..errors import LTDetError
from .calibration import PosthocCalibration, calibration_from_cfg
from .fast_inference import fast_rcnn_inference_topk
from .losses import build_cls_loss, build_cls_loss_from_cfg
from .normed_linear import NormedLinear
from .whitening import ChannelWhitening

__all__ = ["LTFastRCNNOutputLayers", "check_detectron2_cls_options"]

#: Arguments of detectron2's ``FastRCNNOutputLayers`` (versions after 0.6) that select its own
#: sigmoid / federated classification loss, which lt_det's predictor never runs (its loss is
#: ``cls_loss``), with lt_det's equivalent of each. Set ones are refused, not ignored.
DETECTRON2_CLS_OPTIONS = {
    "use_sigmoid_ce": 'cls_loss="sigmoid_ce"',
    "use_fed_loss": 'cls_loss="federated"',
    "get_fed_loss_cls_weights": "class_prior (federated draws negatives ~ class_prior ** power)",
    "fed_loss_num_classes": 'cls_loss_kwargs={"num_classes_sampled": N}',
}


def check_detectron2_cls_options(options: Dict, *, config: bool = False) -> None:
    """Refuse detectron2's own classification-loss options given to lt_det's predictor.

    The rule of the yaml path (``MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE`` / ``USE_FED_LOSS`` True) and
    of the LazyConfig path (those arguments, or ``get_fed_loss_cls_weights`` /
    ``fed_loss_num_classes``, passed to :class:`LTFastRCNNOutputLayers`): an option counts as set
    when it is True, or (the last two) given at all and not None.

    Args:
        options: argument name -> value (the predictor's extra keyword arguments), or, with
            ``config``, {"use_sigmoid_ce": USE_SIGMOID_CE, "use_fed_loss": USE_FED_LOSS}.
        config: word the message with the yaml keys instead of the arguments.

    Raises:
        LTDetError: one line naming every set option and lt_det's equivalent.
    """
    given = [
        k for k in DETECTRON2_CLS_OPTIONS
        if k in options and (bool(options[k]) if k.startswith("use_") else options[k] is not None)
    ]
    if not given:
        return
    loss = "federated" if "use_fed_loss" in given else "sigmoid_ce"
    if config:
        keys = " and ".join(f"MODEL.ROI_BOX_HEAD.{k.upper()} True" for k in given)
        raise LTDetError(
            f"{keys} select detectron2's own loss, which lt_det's box predictor does not run (its "
            f'loss is MODEL.ROI_BOX_HEAD.CLS_LOSS): set them to False and CLS_LOSS "{loss}".'
        )
    raise LTDetError(
        "LTFastRCNNOutputLayers does not take detectron2's "
        + ", ".join(f"{k}=" + ("True" if k.startswith("use_") else "...") for k in given)
        + "; its loss is cls_loss. Instead use "
        + "; ".join(DETECTRON2_CLS_OPTIONS[k] for k in given)
        + f' (cls_loss="{loss}", lt_det.modeling.priors.class_prior_from_dataset for the prior).'
    )


class LTFastRCNNOutputLayers(FastRCNNOutputLayers):
    """:class:`FastRCNNOutputLayers` with a pluggable classification loss.

    The loss module computes ``loss_cls`` and turns logits into scores (``predict_probs``); box
    regression is detectron2's own ``box_reg_loss``. Usable without a config inside any
    detectron2 ``ROIHeads``::

        predictor = LTFastRCNNOutputLayers(
            box_head.output_shape,
            box2box_transform=Box2BoxTransform(weights=(10, 10, 5, 5)),
            num_classes=K,
            cls_loss="balanced_softmax",
            class_prior=prior,  # (K,)
        )
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        cls_loss: Union[str, nn.Module] = "softmax_ce",
        class_prior: Optional[torch.Tensor] = None,
        cls_loss_kwargs: Optional[Dict] = None,
        cls_score: str = "linear",
        normed_linear_temperature: float = 20.0,
        calibration: Optional[PosthocCalibration] = None,
        whitening: Optional[nn.Module] = None,
        **kwargs,
    ):
        """
        Args:
            input_shape: shape of the per-ROI features.
            cls_loss: a loss module (e.g. from :func:`lt_det.build_cls_loss`) or a registered
                loss name ("softmax_ce" | "sigmoid_ce" | "balanced_softmax" | "balanced_sigmoid").
            class_prior: (K,) prior; only with a loss name (a module carries its own prior).
            cls_loss_kwargs: extra options for a loss given by name, e.g.
                ``{"background": "fg_mass"}``.
            cls_score: the classifier layer, "linear" (detectron2's) | "normed_linear" (cosine
                classifier, :class:`lt_det.modeling.normed_linear.NormedLinear`). It has
                K + 1 outputs plus the loss's ``num_extra_logits`` (BAGS's group logits).
            normed_linear_temperature: temperature of "normed_linear".
            calibration: post-hoc calibration applied to the logits in :meth:`predict_probs`
                only (inference), e.g. from :func:`lt_det.modeling.calibration_from_cfg`.
            whitening: optional module applied to the (R, D) features before ``cls_score``
                only (e.g. :class:`~lt_det.modeling.whitening.ChannelWhitening`); box
                regression reads the features as they come.
            kwargs: every argument of detectron2's :class:`FastRCNNOutputLayers`
                (``box2box_transform``, ``num_classes``, ``test_score_thresh``, ...) except its
                own loss options (:func:`check_detectron2_cls_options` refuses them when set).
        """
        check_detectron2_cls_options(kwargs)  # refused when set; dropped (for 0.6) when off
        kwargs = {k: v for k, v in kwargs.items() if k not in DETECTRON2_CLS_OPTIONS}
        super().__init__(input_shape, **kwargs)
        if isinstance(cls_loss, str):
            cls_loss = build_cls_loss(
                cls_loss,
                num_classes=self.num_classes,
                class_prior=class_prior,
                **(cls_loss_kwargs or {}),
            )
        elif class_prior is not None or cls_loss_kwargs:
            raise ValueError(
                "class_prior / cls_loss_kwargs are for a loss given by name; a loss module "
                "carries its own prior and options."
            )
        if cls_loss.num_classes != self.num_classes:
            raise ValueError(
                f"cls_loss was built for {cls_loss.num_classes} classes but the predictor has "
                f"num_classes={self.num_classes}."
            )
        self.cls_loss = cls_loss
        extra = int(getattr(cls_loss, "num_extra_logits", 0))
        if cls_score not in ("linear", "normed_linear"):
            raise ValueError(
                f"Unknown MODEL.ROI_BOX_HEAD.CLS_SCORE {cls_score!r}; choices: "
                "['linear', 'normed_linear']."
            )
        if cls_score == "normed_linear" or extra:
            self.cls_score = self._adapt_cls_score(
                self.cls_score, extra, cls_score == "normed_linear", normed_linear_temperature
            )
        self.cls_loss.init_cls_bias_(self.cls_score.bias)
        self.calibration = calibration
        self.whitening = whitening

    @staticmethod
    def _adapt_cls_score(
        linear: nn.Linear, extra: int, normed: bool, temperature: float
    ) -> nn.Linear:
        """The classifier from the (K + 1)-output ``nn.Linear`` detectron2's constructor built
        (weights ~ N(0, 0.01^2), bias 0), which has no hook for the layer: its parameters are
        kept (a :class:`NormedLinear` shares them) and ``extra`` output rows, initialised the
        same way, are appended below them. The new layer is created on the meta device, so its
        own parameters are never allocated.

        Args:
            linear: detectron2's ``cls_score``, (K + 1) x D.
            extra: the loss's ``num_extra_logits`` (0, or BAGS's 1 + G group logits).
            normed: build a :class:`NormedLinear` (cosine classifier).
            temperature: its temperature.

        Returns:
            a layer with K + 1 + ``extra`` outputs.
        """
        out = linear.out_features + extra
        with torch.device("meta"):
            layer = (NormedLinear(linear.in_features, out, temperature=temperature) if normed
                     else nn.Linear(linear.in_features, out))
        weight, bias = linear.weight, linear.bias
        if extra:
            rows = nn.init.normal_(weight.new_empty(extra, linear.in_features), std=0.01)
            weight = nn.Parameter(torch.cat([weight.detach(), rows]))
            bias = nn.Parameter(torch.cat([bias.detach(), bias.new_zeros(extra)]))
        layer.weight, layer.bias = weight, bias
        return layer

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            x: (R, D) per-ROI features (or (R, C, H, W), flattened).

        Returns:
            (scores (R, K + 1), proposal_deltas (R, 4 or 4K)): scores from the (whitened, when
            ``whitening`` is set) features, deltas from the features as given.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        cls_in = x if self.whitening is None else self.whitening(x)
        return self.cls_score(cls_in), self.bbox_pred(x)

    @classmethod
    def from_config(
        cls, cfg: CfgNode, input_shape: ShapeSpec, *, class_prior: Optional[torch.Tensor] = None
    ) -> Dict:
        """detectron2's arguments plus ``cls_loss`` from MODEL.ROI_BOX_HEAD.CLS_LOSS.

        Args:
            class_prior: (K,) prior to use instead of computing it from the config (the ROI
                heads compute it once and pass it to every cascade stage).
        """
        head = cfg.MODEL.ROI_BOX_HEAD
        # Keys of newer detectron2 versions that would bypass the loss module.
        options = {k: head.get(k.upper()) for k in ("use_sigmoid_ce", "use_fed_loss")}
        check_detectron2_cls_options(options, config=True)
        ret = super().from_config(cfg, input_shape)
        for key in DETECTRON2_CLS_OPTIONS:  # detectron2's (after 0.6), read as lt_det's keys
            ret.pop(key, None)
        ret["cls_loss"] = build_cls_loss_from_cfg(cfg, class_prior=class_prior)
        ret["cls_score"] = head.CLS_SCORE
        ret["normed_linear_temperature"] = head.NORMED_LINEAR_TEMPERATURE
        ret["calibration"] = calibration_from_cfg(cfg)
        w = head.WHITENING
        if w.ENABLED and cfg.DATALOADER.SAMPLER_TRAIN == "MetaSampler":
            # The Meta Sampler's learner re-evaluates cls_score on the raw box features.
            raise LTDetError(
                "MODEL.ROI_BOX_HEAD.WHITENING.ENABLED cannot be combined with DATALOADER."
                "SAMPLER_TRAIN MetaSampler (its learner scores unwhitened features); turn one off."
            )
        if w.ENABLED:
            features = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
            ret["whitening"] = ChannelWhitening(
                features, group_size=w.GROUP_SIZE, eps=w.EPS, momentum=w.MOMENTUM
            )
        return ret

    def losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            predictions: (scores (R, K + 1), proposal_deltas) from :meth:`forward`.
            proposals: with fields ``proposal_boxes``, ``gt_classes`` and (for foreground
                proposals) ``gt_boxes``.

        Returns:
            {"loss_cls", "loss_box_reg"}, weighted by ``loss_weight``.
        """
        scores, proposal_deltas = predictions
        # detectron2's losses: the box regression (box_reg_loss) and the classification
        # statistics in the event storage; its own classification term, computed on scores cut
        # from the graph (no gradient, no memory kept), is replaced by the loss module's.
        losses = super().losses((scores.detach(), proposal_deltas), proposals)
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0)
            if len(proposals)
            else torch.empty(0, dtype=torch.long, device=scores.device)
        )
        if getattr(self.cls_loss, "needs_rois_per_image", False):  # e.g. the federated loss
            loss_cls = self.cls_loss(scores, gt_classes, [len(p) for p in proposals])
        else:
            loss_cls = self.cls_loss(scores, gt_classes)
        losses["loss_cls"] = loss_cls * self.loss_weight.get("loss_cls", 1.0)
        return losses

    def inference(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """detectron2's detections (``fast_rcnn_inference``: same boxes, scores, classes and
        order) from the best candidates only, by
        :func:`lt_det.modeling.fast_inference.fast_rcnn_inference_topk`.

        Args:
            predictions: (scores (R, K + 1), proposal_deltas (R, 4 or 4K)) from :meth:`forward`.
            proposals: per image, with ``proposal_boxes`` and ``image_size``.

        Returns:
            (per image Instances with ``pred_boxes``, ``scores``, ``pred_classes``; per image
            (Di,) proposal indices), at most ``test_topk_per_image`` detections each.
        """
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [x.image_size for x in proposals]
        return fast_rcnn_inference_topk(
            boxes,
            scores,
            image_shapes,
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
        )

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Per-image (Ri, K + 1) scores from the loss's activation (no prior applied), after the
        post-hoc calibration when one is set."""
        scores, _ = predictions
        if self.calibration is not None:
            probs = self.calibration.predict_probs(scores, self.cls_loss)
        else:
            probs = self.cls_loss.predict_probs(scores)
        num_inst_per_image = [len(p) for p in proposals]
        return probs.split(num_inst_per_image, dim=0)
