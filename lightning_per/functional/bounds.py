"""Per-sample scores from outputs and targets: gradient-norm bounds and prediction deviations, in closed form."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "autograd_grad_norm",
    "margin_score",
    "mse_grad_norm",
    "prediction_deviation",
    "sigmoid_bce_grad_norm",
    "softmax_ce_grad_norm",
]


def softmax_ce_grad_norm(
    logits: Tensor,
    targets: Tensor,
    label_smoothing: float = 0.0,
    class_weights: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """``||d CE / d logits||_2`` per row, in closed form.

    With ``q`` the (smoothed) target distribution and ``a = w * q`` (``w`` the class weights, 1 by default),
    ``CE = -sum_k a_k log softmax(z)_k`` and its gradient is ``sum(a) * softmax(z) - a``; without class
    weights this is ``softmax(z) - q``.

    Args:
        logits: ``(n, C)`` pre-softmax outputs.
        targets: ``(n,)`` (or ``(n, 1)``) class indices, or ``(n, C)`` class probabilities (float, or integer
            one-hot rows).
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        class_weights: optional ``(C,)`` per-class loss weights, as in ``cross_entropy(weight=...)``.
        ignore_index: with class indices, a target that contributes no loss (and so no gradient), as in
            ``cross_entropy(ignore_index=...)``: its row scores 0. Any other index outside ``[0, C)`` scores NaN.

    Raises:
        ValueError: targets neither of shape ``logits.shape[:-1]`` (as many values) nor ``logits.shape``.

    Example:
        >>> softmax_ce_grad_norm(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
        tensor([0.7071])
    """
    num_classes = logits.shape[-1]
    probs = logits.detach().float().softmax(-1)
    probabilities = targets.shape == logits.shape  # float probabilities, or integer one-hot rows
    outside = ignored = None
    if not probabilities:  # class indices (integer or float labels), e.g. (n, 1): one per row of logits
        targets = _same_shape(targets, logits.shape[:-1], outputs=logits.shape).long()
        # masks, not a check, so no host sync: an ignored row scores 0, any other index outside [0, C) NaN
        # (which `F.cross_entropy` itself refuses before this ever runs)
        ignored = targets == ignore_index
        outside = (targets < 0) | (targets >= num_classes)
        targets = targets.masked_fill(outside, 0)
    if class_weights is None and not probabilities and logits.ndim == 2:
        # the common case in few small kernels (this runs on every training step): softmax(z) - q is softmax(z)
        # less the smoothing mass, with (1 - label_smoothing) taken off at the target class
        if label_smoothing:
            probs = probs - label_smoothing / num_classes
        hit = probs.new_full((probs.shape[0], 1), label_smoothing - 1.0)
        norms = probs.scatter_add_(1, targets.reshape(-1, 1), hit).norm(dim=-1)
        return _mask_targets(norms, outside, ignored)
    q = targets.float() if probabilities else F.one_hot(targets.long(), num_classes).float()
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    if class_weights is None:
        norms = (probs - q).norm(dim=-1)
    else:
        a = q * class_weights.float()
        norms = (a.sum(-1, keepdim=True) * probs - a).norm(dim=-1)
    return _mask_targets(norms, outside, ignored)


def _mask_targets(norms: Tensor, outside: Tensor | None, ignored: Tensor | None) -> Tensor:
    """NaN for rows whose class index is outside the classes, then 0 for the ignored ones (no gradient)."""
    if outside is None or ignored is None:
        return norms
    return norms.masked_fill(outside, math.nan).masked_fill(ignored, 0.0)


def autograd_grad_norm(loss_fn: Callable[[Tensor, Tensor], Tensor], outputs: Tensor, targets: Tensor) -> Tensor:
    """``||dL / d outputs||_2`` per row for any loss, by one ``torch.autograd.grad`` (rows are independent).

    Args:
        loss_fn: ``loss_fn(outputs, targets)`` returning one loss per row, or their sum or mean (a mean scales every
            norm by ``1/n``).
        outputs: ``(n, ...)`` model outputs (detached here).
        targets: the targets ``loss_fn`` takes.

    Raises:
        ValueError: ``loss_fn`` returns neither one loss per row nor a scalar.

    Example:
        >>> mse = lambda z, y: ((z - y) ** 2).sum(-1)
        >>> autograd_grad_norm(mse, torch.tensor([[1.0, 1.0]]), torch.zeros(1, 2))
        tensor([2.8284])
    """
    n = outputs.shape[0]
    with torch.enable_grad():
        z = outputs.detach().clone().requires_grad_(True)
        losses = loss_fn(z, targets)
        if not isinstance(losses, Tensor) or not (losses.ndim == 0 or losses.shape[0] == n):
            got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ValueError(
                f"`loss_fn` returned {got} for a batch of {n} samples: return one loss per sample (e.g. "
                "`reduction='none'`) or their sum or mean."
            )
        (grad,) = torch.autograd.grad(losses.sum(), z)
    return grad.reshape(n, -1).float().norm(dim=-1)


def sigmoid_bce_grad_norm(logits: Tensor, targets: Tensor) -> Tensor:
    """``||d BCE-with-logits / d logits||_2`` per row: ``||sigmoid(z) - y||`` (summed over outputs).

    Example:
        >>> sigmoid_bce_grad_norm(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
        tensor([0.5000])
    """
    diff = logits.detach().float().sigmoid() - _same_shape(targets, logits.shape).float()
    return diff.reshape(diff.shape[0], -1).norm(dim=-1)


def mse_grad_norm(outputs: Tensor, targets: Tensor) -> Tensor:
    """``||d MSE / d outputs||_2`` per row for a per-sample loss ``mean_j (z_j - y_j)^2``: ``2 ||z - y|| / d``.

    Example:
        >>> mse_grad_norm(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([1.4142])
    """
    diff = (outputs.detach().float() - _same_shape(targets, outputs.shape).float()).reshape(outputs.shape[0], -1)
    return diff.norm(dim=-1) * (2.0 / diff.shape[1])


def prediction_deviation(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - p_y``: how far the predicted probability of the true class is from 1.

    Example:
        >>> prediction_deviation(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([0.5000])
    """
    probs = logits.detach().float().softmax(-1)
    return 1.0 - probs.gather(-1, targets.long().view(-1, 1)).squeeze(-1)


def margin_score(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (p_y - max_{k != y} p_k)``, in ``[0, 2]``: large when the sample is misclassified or on the border.

    Example:
        >>> margin_score(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([1.])
    """
    probs = logits.detach().float().softmax(-1)
    true = probs.gather(-1, targets.long().view(-1, 1)).squeeze(-1)
    others = probs.scatter(-1, targets.long().view(-1, 1), -1.0).amax(-1)
    return 1.0 - (true - others)


def _same_shape(targets: Tensor, shape: torch.Size, outputs: torch.Size | None = None) -> Tensor:
    """``targets`` viewed as ``shape`` when they hold as many values, else a ``ValueError`` naming both shapes.

    (n,) targets against (n, 1) outputs, or the other way round, would otherwise broadcast to (n, n).
    """
    if targets.shape == shape:
        return targets
    if targets.numel() != math.prod(shape):
        raise ValueError(
            f"`targets` has shape {tuple(targets.shape)}, which does not match outputs of shape "
            f"{tuple(outputs if outputs is not None else shape)}: "
            f"give one target per output ({tuple(shape)})."
        )
    return targets.reshape(shape)
