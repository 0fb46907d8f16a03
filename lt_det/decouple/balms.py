"""BALMS in the training loop: the Meta Sampler's rate learner (Ren et al., "Balanced
Meta-Softmax for Long-Tailed Visual Recognition", NeurIPS 2020), for the decoupled
(classifier-only) stage of a detector.

Shape shorthand: K foreground classes, R ROIs of a training batch (``gt_classes`` in [0, K],
K = background), B meta-batch features, D feature dimension, theta = the box classifier's
trainable parameters (the ``cls_score`` layer in the decoupled stage).

The :class:`~lt_det.data.samplers.MetaSampler` in the data loader draws classes with the (K,)
shared rates ``pi``. :class:`MetaSamplerLearner` holds logits ``a`` (pi = softmax(a)) and updates
them by meta-gradient, then writes the new ``pi`` into the sampler's shared tensor:

  1. Sampling indicators with straight-through gradients. A foreground ROI i of class y_i gets
     the weight ``w_i = pi_{y_i} / stopgrad(pi_{y_i})``: its value is 1 (the ROI *was* drawn)
     and its gradient is that of the class's draw probability, ``dw_i/da_k = 1[k = y_i] - pi_k``
     (the likelihood-ratio form of "how much more often would this ROI be drawn"; it is bounded,
     unlike a 1/pi importance weight). Background ROIs and classes that cannot be drawn keep
     weight 1.
  2. One differentiable SGD step of the classifier on the weighted training loss
     ``L(theta) = sum_i w_i * loss_i(theta) / R`` (``loss_i`` = the head loss's ``per_roi``):
     ``theta' = theta - INNER_LR * dL/dtheta`` (``torch.func.grad``; the model's parameters are
     not modified).
  3. Meta loss = the head's plain loss (``ClsLoss.plain_per_roi``: softmax or sigmoid
     cross-entropy, without prior) of the stepped classifier ``theta'`` on a class-balanced
     meta batch (drawn from a :class:`~.feature_bank.ClassBalancedFeatureBank` of recent
     foreground ROI features, before the current batch is added to it).
  4. ``dMeta/da`` by differentiating through step 2 (``torch.func.grad`` of a function that
     itself calls ``torch.func.grad``), averaged over ranks when the world size is > 1 so the
     rates stay identical everywhere, then one Adam(LR) step on ``a``.

Classes whose training ROIs move the classifier in the direction that lowers the balanced meta
loss (typically rare classes that the classifier gets wrong) gain rate.

Cost (multiply-adds, R_fg foreground ROIs): a plain classifier step is about 2R * D * (K + 1);
the update is about (2R + R_fg + 2B) * D * (K + 1), or (3 R_fg + 2B) * D * (K + 1) when the
trainer passes the gradients it has already computed (``train_grads``). Measured numbers:
``tools/bench_samplers.py`` and ``docs/samplers.md``.

Distributed training: every rank keeps its own meta set and computes the meta-gradient on its own
batch; the gradients are averaged (all-reduce, only when the world size is > 1), so the Adam
state and the rates are identical on all ranks, and the ranks' samplers draw one common stream.
"""
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.distributed as dist
from detectron2.config import CfgNode, configurable
from detectron2.utils import comm
from torch import nn
from torch.nn import functional as F

from ..data.samplers import MetaSampler
from ..errors import LTDetError
from .feature_bank import ClassBalancedFeatureBank

__all__ = ["MetaSamplerLearner", "default_roi_loss"]

PerRoiLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_roi_loss(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    """Per-ROI softmax cross-entropy: logits (R, K + 1), gt_classes (R,) -> (R,)."""
    return F.cross_entropy(logits, gt_classes, reduction="none")


def _mean_cross_entropy(logits: torch.Tensor, gt_classes: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, gt_classes)


def _mean_of(per_roi: PerRoiLoss) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda logits, gt_classes: per_roi(logits, gt_classes).mean()


class MetaSamplerLearner:
    """Learns the Meta Sampler's class rates by meta-gradient; see the module docstring.

    Typical use in the decoupled stage (``features`` = the box head's output, the input of
    ``cls_score``; ``gt_classes`` = the sampled proposals' labels)::

        learner = MetaSamplerLearner(cfg, meta_sampler)          # or keyword arguments
        ...
        if learner.should_update(iteration):
            stats = learner.step(predictor.cls_score, features, gt_classes)
            storage.put_scalars(**stats, **learner.log_stats(class_frequency))
    """

    @configurable
    def __init__(
        self,
        rates: torch.Tensor,
        *,
        lr: float,
        inner_lr: float,
        meta_per_class: int,
        meta_batch_size: int,
        update_period: int = 1,
        class_mask: Optional[torch.Tensor] = None,
        loss_fn: Optional[PerRoiLoss] = None,
        meta_loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        seed: int = 0,
    ):
        """
        Args:
            rates: (K,) the sampler's shared rate tensor (``MetaSampler.rates``); the initial
                rates, updated in place.
            lr: Adam learning rate of the rate logits.
            inner_lr: learning rate of the differentiable SGD step of the classifier.
            meta_per_class: M, features per class kept in the meta set.
            meta_batch_size: B, meta-batch size drawn class-balanced from the meta set
                (<= 0: the whole meta set, up to K * M features).
            update_period: :meth:`should_update` is true every this many iterations.
            class_mask: (K,) bool, the classes that can be drawn (``MetaSampler.image_counts > 0``);
                the others keep rate 0. Default: ``rates > 0``.
            loss_fn: per-ROI training loss ``(logits (R, K+1), gt_classes (R,)) -> (R,)``;
                default softmax cross-entropy. Must be differentiable twice by ``torch.func``.
            meta_loss_fn: meta loss ``(logits (B, K+1), labels (B,)) -> scalar``; default mean CE.
            seed: seed of the meta-batch draws (offset by the rank).
        """
        if rates.dim() != 1 or not bool((rates >= 0).all()) or not rates.sum() > 0:
            raise LTDetError("rates must be a (K,) non-negative tensor with positive sum.")
        if update_period <= 0:
            raise LTDetError(
                f"DATALOADER.META_SAMPLER.UPDATE_PERIOD must be >= 1, got {update_period}."
            )
        self._rates = rates
        self.num_classes = int(rates.numel())
        self._valid = (rates > 0 if class_mask is None else class_mask.bool()).cpu().reshape(-1)
        if self._valid.numel() != rates.numel() or not bool(self._valid.any()):
            raise LTDetError(f"class_mask must be (K={rates.numel()},) with a True entry.")
        init = torch.where(self._valid, rates.detach().cpu().double().clamp(min=1e-30).log(), 0.0)
        self.logits = nn.Parameter(init.float())
        self.optimizer = torch.optim.Adam([self.logits], lr=lr)
        self.inner_lr = float(inner_lr)
        self.meta_batch_size = int(meta_batch_size)
        self.update_period = int(update_period)
        self.loss_fn = loss_fn or default_roi_loss
        self.meta_loss_fn = meta_loss_fn or _mean_cross_entropy
        self.bank = ClassBalancedFeatureBank(num_classes=self.num_classes, per_class=meta_per_class)
        self._generator = torch.Generator()
        self._generator.manual_seed(int(seed) + comm.get_rank())
        self._write_rates()

    @classmethod
    def from_config(
        cls,
        cfg: CfgNode,
        sampler: Union[MetaSampler, torch.Tensor],
        *,
        cls_loss: Optional[nn.Module] = None,
    ) -> Dict:
        """``cls_loss``: the box predictor's ``ClsLoss``; the inner step uses its ``per_roi``
        and the meta loss its ``plain_per_roi`` (default: softmax cross-entropy for both)."""
        node = cfg.DATALOADER.META_SAMPLER
        return {
            "loss_fn": None if cls_loss is None else cls_loss.per_roi,
            "meta_loss_fn": None if cls_loss is None else _mean_of(cls_loss.plain_per_roi),
            "rates": sampler.rates if isinstance(sampler, MetaSampler) else sampler,
            "class_mask": sampler.image_counts > 0 if isinstance(sampler, MetaSampler) else None,
            "lr": node.LR,
            "inner_lr": node.INNER_LR,
            "meta_per_class": node.META_PER_CLASS,
            "meta_batch_size": node.META_BATCH_SIZE,
            "update_period": node.UPDATE_PERIOD,
        }

    @property
    def rates(self) -> torch.Tensor:
        """(K,) current class probabilities (the tensor the sampler reads)."""
        return self._rates

    def should_update(self, iteration: int) -> bool:
        """True on the iterations where :meth:`step` should run (every ``update_period``)."""
        return iteration % self.update_period == 0

    def _masked_log_rates(self, logits: torch.Tensor) -> torch.Tensor:
        valid = self._valid.to(logits.device)
        return torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=0)

    @torch.no_grad()
    def _write_rates(self) -> None:
        self._rates.copy_(self._masked_log_rates(self.logits.detach()).exp().to(self._rates))

    def step(
        self,
        classifier: nn.Module,
        features: torch.Tensor,
        gt_classes: torch.Tensor,
        *,
        train_grads: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, float]:
        """One meta-gradient update of the rates; also adds the batch to the meta set.

        Args:
            classifier: module mapping (R, D) features to (R, K + 1) logits (e.g. the predictor's
                ``cls_score``; a tuple output uses its first element). Its parameters with
                ``requires_grad`` (all, if none) take the inner step; the module is not modified.
            features: (R, D) ROI features of the training batch.
            gt_classes: (R,) int64 labels in [0, K].
            train_grads: optional gradients ``{name: tensor}`` of the unweighted training loss
                ``sum_i loss_i / R`` w.r.t. the classifier's parameters at their current values
                (e.g. ``p.grad`` of ``cls_score`` right after the trainer's ``backward()`` and
                before its optimizer step, when the box loss is ``loss_fn`` averaged over the R
                ROIs with weight 1). The inner step then only differentiates the foreground
                ROIs: same result, about 2R * D * (K + 1) multiply-adds fewer.

        Returns:
            ``{"meta_sampler/meta_loss": float}``, or {} when nothing was updated (empty meta
            set on the first call, or no foreground ROI of a drawable class in the batch).
        """
        num_classes = self.num_classes
        features = features.detach()
        gt_classes = gt_classes.detach().to(features.device, torch.int64)
        meta = self.bank.sample(self.meta_batch_size, generator=self._generator)
        self.bank.push(features, gt_classes)  # after drawing: the meta batch is from past batches
        device = features.device
        valid = self._valid.to(device)
        # Foreground ROIs of drawable classes carry a rate gradient; all others weigh 1.
        in_range = (gt_classes >= 0) & (gt_classes < num_classes)
        is_fg = in_range & valid[gt_classes.clamp(0, num_classes - 1)]
        if meta is None or not bool(is_fg.any()):
            return self._apply(torch.zeros(num_classes, device=device), None)
        meta_x, meta_y = meta[0].to(device, features.dtype), meta[1].to(device)
        x_fg, y_fg = features[is_fg], gt_classes[is_fg]
        x_rest, y_rest = features[~is_fg], gt_classes[~is_fg]
        num_rois = features.shape[0]

        named = dict(classifier.named_parameters())
        params = {n: p.detach() for n, p in named.items() if p.requires_grad}
        params = params or {n: p.detach() for n, p in named.items()}
        loss_fn, meta_loss_fn, inner_lr = self.loss_fn, self.meta_loss_fn, self.inner_lr

        def logits_of(p: Dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            out = torch.func.functional_call(classifier, p, (x,))
            return out[0] if isinstance(out, (tuple, list)) else out

        def inner_loss(p: Dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
            loss = (weights * loss_fn(logits_of(p, x_fg), y_fg)).sum()
            if y_rest.numel():
                loss = loss + loss_fn(logits_of(p, x_rest), y_rest).sum()
            return loss / num_rois

        def fg_loss_change(p: Dict[str, torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
            # Value 0 (weights are 1); its gradient w.r.t. the weights is that of inner_loss.
            return ((weights - 1.0) * loss_fn(logits_of(p, x_fg), y_fg)).sum() / num_rois

        if train_grads is not None:
            missing = sorted(set(params) - set(train_grads))
            if missing:
                raise LTDetError(f"train_grads lacks the classifier parameters {missing}.")
            base_grads = {n: train_grads[n].detach().to(params[n]) for n in params}

        def meta_objective(rate_logits: torch.Tensor) -> torch.Tensor:
            log_pi = self._masked_log_rates(rate_logits)[y_fg]
            weights = torch.exp(log_pi - log_pi.detach())  # value 1, gradient of pi_{y_i}
            if train_grads is None:
                grads = torch.func.grad(inner_loss)(params, weights)
            else:
                change = torch.func.grad(fg_loss_change)(params, weights)
                grads = {n: base_grads[n] + change[n] for n in params}
            stepped = {n: params[n] - inner_lr * grads[n] for n in params}
            return meta_loss_fn(logits_of(stepped, meta_x), meta_y)

        rate_logits = self.logits.detach().to(device)
        grad, meta_loss = torch.func.grad_and_value(meta_objective)(rate_logits)
        return self._apply(grad, meta_loss)

    def _apply(self, grad: torch.Tensor, meta_loss: Optional[torch.Tensor]) -> Dict[str, float]:
        """Average the meta-gradient over the ranks that have one, then take the Adam step."""
        contributed = 0.0 if meta_loss is None else 1.0
        world_size = comm.get_world_size()
        if world_size > 1:
            # Every rank joins the all-reduce (also one without a gradient this time), so no rank
            # waits forever and the rates stay identical everywhere.
            packed = torch.cat([grad.detach(), grad.new_tensor([contributed])])
            dist.all_reduce(packed)
            grad, contributed = packed[:-1] / packed[-1].clamp(min=1), float(packed[-1])
        if contributed == 0:
            return {}
        self.optimizer.zero_grad(set_to_none=True)
        self.logits.grad = grad.to(self.logits)
        self.optimizer.step()
        self._write_rates()
        return {} if meta_loss is None else {"meta_sampler/meta_loss": float(meta_loss)}

    def log_stats(self, class_frequency: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """Scalars for metrics.json / tensorboard.

        Args:
            class_frequency: K strings in {"r", "c", "f"} (dataset metadata ``class_frequency``).

        Returns:
            rate quantiles over the drawable classes (``rate_min``, ``rate_p10``, ``rate_p50``,
            ``rate_p90``, ``rate_max``; each rate times the number of drawable classes, so 1 means
            "as often as under class-balanced sampling"), and per frequency group the mean
            relative rate ``rate_mean_{r,c,f}`` and the share of draws ``draw_share_{r,c,f}``.
        """
        rates = self._rates.detach().double().cpu()
        valid = self._valid
        rel = rates[valid] * int(valid.sum())
        qs = torch.quantile(rel, torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64))
        out = {
            f"meta_sampler/rate_{k}": float(v)
            for k, v in zip(["min", "p10", "p50", "p90", "max"], qs)
        }
        if class_frequency is not None:
            if len(class_frequency) != self.num_classes:
                raise LTDetError(
                    f"class_frequency has {len(class_frequency)} entries, expected "
                    f"{self.num_classes} (one of 'r', 'c', 'f' per class)."
                )
            for group in "rcf":
                mask = torch.tensor([f == group for f in class_frequency]) & valid
                if bool(mask.any()):
                    out[f"meta_sampler/rate_mean_{group}"] = float(
                        rates[mask].mean() * int(valid.sum())
                    )
                    out[f"meta_sampler/draw_share_{group}"] = float(rates[mask].sum())
        return out

    def state_dict(self) -> Dict:
        """Rate logits, Adam state, meta set and generator (for detectron2 checkpointables)."""
        return {
            "logits": self.logits.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "bank": self.bank.state_dict(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: Dict) -> None:
        """Restore :meth:`state_dict` and write the restored rates to the sampler."""
        logits = state["logits"]
        if logits.shape != self.logits.shape:
            raise LTDetError(
                f"Meta Sampler checkpoint has {logits.numel()} class rates, the model has "
                f"{self.num_classes} classes."
            )
        with torch.no_grad():
            self.logits.copy_(logits)
        self.optimizer.load_state_dict(state["optimizer"])
        if "bank" in state:
            self.bank.load_state_dict(state["bank"])
        if "generator" in state:
            self._generator.set_state(state["generator"])
        self._write_rates()
