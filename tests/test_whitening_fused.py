"""Channel Whitening's training path (one autograd function with a hand-written backward pass)
against the plain composition it replaces: ``ChannelWhitening.batch_statistics`` (eigh-based
``inverse_sqrt_psd``, autograd through the centring and the covariance) followed by
``(x - mu) W``, in float64 - outputs, input gradients and running statistics."""
import pytest
import torch

from lt_det.modeling.whitening import ChannelWhitening


def _plain(w: ChannelWhitening, x: torch.Tensor) -> torch.Tensor:
    mean, wm = w.batch_statistics(x)
    xg = x.view(x.shape[0], w.num_groups, w.group_size).transpose(0, 1)
    return ((xg - mean) @ wm).transpose(0, 1).reshape(x.shape)


def _batch(kind, rows, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "correlated":
        mix = torch.randn(d, d, generator=g, dtype=torch.float64)
        return torch.randn(rows, d, generator=g, dtype=torch.float64) @ mix + 3.0
    if kind == "duplicates":  # rank 3 after centring
        return torch.randn(4, d, generator=g, dtype=torch.float64).repeat(rows // 4, 1)
    if kind == "relu":  # box-head-like: non-negative, some channels always 0
        x = torch.relu(torch.randn(rows, d, generator=g, dtype=torch.float64) - 0.5)
        x[:, :2] = 0.0
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("kind,rows", [("correlated", 40), ("correlated", 5), ("duplicates", 32),
                                       ("relu", 24)])
@pytest.mark.parametrize("group_size,eps", [(0, 1e-3), (4, 1e-3), (2, 0.5)])
def test_training_path_equals_the_plain_composition(kind, rows, group_size, eps):
    d = 8
    x = _batch(kind, rows, d)
    up = torch.randn(rows, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fused_w = ChannelWhitening(d, group_size=group_size, eps=eps, momentum=0.3).double().train()
    plain_w = ChannelWhitening(d, group_size=group_size, eps=eps, momentum=0.3).double()
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ya, yb = fused_w(a), _plain(plain_w, b)
    torch.testing.assert_close(ya, yb)
    (ya * up).sum().backward()
    (yb * up).sum().backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad, b.grad)
    mean, wm = plain_w.batch_statistics(x)
    torch.testing.assert_close(fused_w.running_mean, 0.3 * mean.squeeze(1))
    eye = torch.eye(fused_w.group_size, dtype=x.dtype).expand_as(wm)
    torch.testing.assert_close(fused_w.running_whitening, 0.7 * eye + 0.3 * wm)


def test_training_path_takes_a_non_contiguous_upstream_gradient_and_float32():
    x = _batch("correlated", 30, 8).float()
    w = ChannelWhitening(8, group_size=4).train()
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    up = torch.randn(8, 30).T  # transposed: a strided gradient
    (w(a) * 1).backward(up)
    _plain(ChannelWhitening(8, group_size=4), b).backward(up)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
