"""lightning_per.functional.bounds: closed-form gradient-norm bounds, deviation, margin, against their definitions."""

import pytest
import torch

from lightning_per import functional as PF


def test_closed_form_bounds_equal_the_gradient_norm_autograd_computes():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(5, (6,), generator=g)
    cw = torch.rand(5, generator=g) + 0.5
    losses = torch.nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.1, weight=cw)
    (grad,) = torch.autograd.grad(losses.sum(), z)
    assert torch.allclose(PF.softmax_ce_grad_norm(z, y, 0.1, cw), grad.norm(dim=1), atol=1e-6)
    t = torch.rand(6, 3, generator=g)
    zb = torch.randn(6, 3, generator=g, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zb, t, reduction="none").sum(1)
    (gb,) = torch.autograd.grad(bce.sum(), zb)
    assert torch.allclose(PF.sigmoid_bce_grad_norm(zb, t), gb.norm(dim=1), atol=1e-6)
    mse = ((zb - t) ** 2).mean(1)
    (gm,) = torch.autograd.grad(mse.sum(), zb)
    assert torch.allclose(PF.mse_grad_norm(zb, t), gm.norm(dim=1), atol=1e-6)


def test_deviation_and_margin_are_low_when_confidently_right_and_high_when_wrong():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 0])
    dev = PF.prediction_deviation(logits, y)
    assert dev[0] < 0.01 and dev[1] > 0.99
    m = PF.margin_score(logits, y)
    assert m[0] < 0.02 and m[1] > 1.98


def test_the_ce_bound_takes_class_indices_of_any_integer_dtype_and_integer_one_hot_targets():
    z = torch.randn(6, 4)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    expected = (z.softmax(-1) - torch.nn.functional.one_hot(y, 4)).norm(dim=-1)
    for dtype in (torch.int64, torch.int32, torch.uint8):
        assert torch.allclose(PF.softmax_ce_grad_norm(z, y.to(dtype)), expected, atol=1e-6)
    assert torch.allclose(PF.softmax_ce_grad_norm(z, torch.nn.functional.one_hot(y, 4)), expected, atol=1e-6)
    assert torch.allclose(PF.softmax_ce_grad_norm(z.bfloat16(), y), expected, atol=2e-2)


def test_bce_and_mse_bounds_pair_each_output_with_its_own_target():
    out, y = torch.tensor([[0.0], [2.0], [-1.0]]), torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(PF.mse_grad_norm(out, y), PF.mse_grad_norm(out, y[:, None]))  # (n, 1) against (n,)
    assert PF.mse_grad_norm(out, y).shape == (3,)
    assert torch.allclose(PF.sigmoid_bce_grad_norm(out, y), PF.sigmoid_bce_grad_norm(out, y[:, None]))
    with pytest.raises(ValueError, match="give one target per output"):
        PF.mse_grad_norm(out, torch.zeros(4))
