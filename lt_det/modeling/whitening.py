"""Channel Whitening: ZCA batch whitening of the features that enter the box classifier.

Zhang, "You Only Need End-to-End Training for Long-Tailed Recognition" (arXiv 2112.05958) and
its successor "Covariance-corrected Whitening Alleviates Network Degeneration on Imbalanced
Classification" (arXiv 2408.17197, "Whitening-Net") whiten the classifier's input so that the
classifier's weight updates decouple. The transform is the batch whitening of Huang et al.,
"Decorrelated Batch Normalization" (CVPR 2018).

Shape shorthand: R feature rows (ROIs), D channels, G groups of d = D / G channels.

Training, per group (x: (R, d) rows of that group)::

    mu    = mean_r x_r                                   (d,)
    S     = (x - mu)^T (x - mu) / R                      (d, d)
    S_eps = S + eps * (trace(S) / d + 1e-5) * I          regularised, positive definite
    W     = S_eps^(-1/2) = U diag(lambda^(-1/2)) U^T     ZCA, by eigen-decomposition
    y     = (x - mu) W

The gradient flows through mu and W, as in Decorrelated BN. The backward pass of the inverse
square root uses the Daleckii-Krein form ``U ((U^T G U) o F) U^T`` with
``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` and ``f'((l_i + l_j) / 2)`` for (nearly) equal
eigenvalues, so repeated eigenvalues (a rank-deficient batch: fewer ROIs than channels, duplicate
ROIs) give finite gradients where differentiating ``torch.linalg.eigh`` would divide by zero.
The eps term is relative to the mean variance, so it does not depend on the feature scale; the
1e-5 keeps an all-constant batch finite.

The running mean and the running whitening matrix (r <- (1 - momentum) r + momentum * batch) are
used in eval mode, so inference is deterministic and independent of the batch. A training batch
with fewer than 2 rows uses the running statistics and does not update them. Everything runs in
float32 (float64 input: float64) whatever the input dtype and autocast state.

Statistics are per process (like detectron2's ``BN``, not ``SyncBN``): each rank whitens its own
ROI batch.
"""
import torch
from torch import nn

__all__ = ["ChannelWhitening", "inverse_sqrt_psd"]


class _InverseSqrtPSD(torch.autograd.Function):
    """A^(-1/2) of symmetric positive definite matrices (..., d, d), by eigh."""

    @staticmethod
    def forward(ctx, a: torch.Tensor) -> torch.Tensor:
        evals, evecs = torch.linalg.eigh(a)
        tiny = torch.finfo(a.dtype).tiny
        evals = evals.clamp(min=tiny)
        f = evals.rsqrt()
        ctx.save_for_backward(evals, evecs, f)
        return (evecs * f.unsqueeze(-2)) @ evecs.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        evals, evecs, f = ctx.saved_tensors
        ut = evecs.transpose(-1, -2)
        g = ut @ (0.5 * (grad + grad.transpose(-1, -2))) @ evecs
        diff = evals.unsqueeze(-1) - evals.unsqueeze(-2)
        # Divided differences of f(l) = l^(-1/2); f' at the midpoint where l_i ~ l_j.
        scale = evals.abs().amax(dim=-1, keepdim=True).unsqueeze(-1)
        close = diff.abs() <= 1e-6 * scale
        mid = 0.5 * (evals.unsqueeze(-1) + evals.unsqueeze(-2))
        deriv = -0.5 * mid.pow(-1.5)
        ratio = (f.unsqueeze(-1) - f.unsqueeze(-2)) / torch.where(
            close, torch.ones_like(diff), diff
        )
        return evecs @ (g * torch.where(close, deriv, ratio)) @ ut


def inverse_sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    """``A^(-1/2)`` of symmetric positive definite matrices (..., d, d) with a backward pass that
    stays finite for repeated eigenvalues (see the module docstring)."""
    return _InverseSqrtPSD.apply(a)


class ChannelWhitening(nn.Module):
    """ZCA batch whitening of (R, D) features in groups of channels (see the module docstring).

    Buffers (saved in checkpoints): ``running_mean`` (G, d), ``running_whitening`` (G, d, d).
    """

    def __init__(
        self, num_features: int, *, group_size: int = 0, eps: float = 1e-3, momentum: float = 0.1
    ):
        """
        Args:
            num_features: D, the feature size.
            group_size: channels per group d (must divide D); 0 = one group of D channels.
            eps: covariance regulariser (> 0), relative to the mean channel variance.
            momentum: running-statistics update rate in (0, 1].

        Raises:
            ValueError: a value outside its range, or a group size that does not divide D.
        """
        super().__init__()
        d = num_features if group_size == 0 else int(group_size)
        if num_features <= 0 or d <= 0 or num_features % d:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.WHITENING.GROUP_SIZE {group_size} must be 0 or a positive "
                f"divisor of the box head's feature size {num_features}."
            )
        if not eps > 0:
            raise ValueError(f"MODEL.ROI_BOX_HEAD.WHITENING.EPS must be > 0, got {eps}")
        if not 0 < momentum <= 1:
            raise ValueError(
                f"MODEL.ROI_BOX_HEAD.WHITENING.MOMENTUM must be in (0, 1], got {momentum}"
            )
        self.num_features, self.group_size = int(num_features), d
        self.num_groups = self.num_features // d
        self.eps, self.momentum = float(eps), float(momentum)
        self.register_buffer("running_mean", torch.zeros(self.num_groups, d))
        eye = torch.eye(d).expand(self.num_groups, d, d).clone()
        self.register_buffer("running_whitening", eye)

    def batch_statistics(self, x: torch.Tensor):
        """(mean (G, 1, d), whitening matrix (G, d, d)) of float32 rows x (R, D), differentiable."""
        r = x.shape[0]
        xg = x.view(r, self.num_groups, self.group_size).transpose(0, 1)  # (G, R, d)
        mean = xg.mean(dim=1, keepdim=True)
        xc = xg - mean
        cov = xc.transpose(1, 2) @ xc / r
        mean_var = cov.diagonal(dim1=1, dim2=2).mean(dim=1)  # (G,)
        ridge = self.eps * (mean_var + 1e-5)
        eye = torch.eye(self.group_size, dtype=x.dtype, device=x.device)
        return mean, inverse_sqrt_psd(cov + ridge.view(-1, 1, 1) * eye)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (R, D) features, any float dtype.

        Returns:
            (R, D) whitened features in float32 (float64 input stays float64).
        """
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"ChannelWhitening expects (R, {self.num_features}) features, got "
                f"{tuple(x.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))  # fp16/bf16 -> fp32
            r = x.shape[0]
            if self.training and r >= 2:
                mean, whitening = self.batch_statistics(x)
                with torch.no_grad():
                    m = self.momentum
                    self.running_mean.mul_(1 - m).add_(
                        mean.squeeze(1).to(self.running_mean), alpha=m
                    )
                    self.running_whitening.mul_(1 - m).add_(
                        whitening.to(self.running_whitening), alpha=m
                    )
            else:
                mean = self.running_mean.unsqueeze(1).to(x.dtype)
                whitening = self.running_whitening.to(x.dtype)
            xg = x.view(r, self.num_groups, self.group_size).transpose(0, 1)
            y = (xg - mean) @ whitening
            return y.transpose(0, 1).reshape(r, self.num_features)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, group_size={self.group_size}, eps={self.eps}, "
            f"momentum={self.momentum}"
        )
