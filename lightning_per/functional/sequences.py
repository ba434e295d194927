"""Sequences: per-token losses ``(n, T)`` to one value per sequence, their weighted mean, and token selection (Rho-1).

A sequence's *real* tokens are those of its mask (an attention mask, or ``targets != ignore_index``); padding never
counts. Everything here is a pure tensor function without a host synchronisation (each runs on every training step).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_per.functional.bounds import softmax_ce_grad_norm

__all__ = [
    "TOKEN_REDUCTIONS",
    "TokenReduction",
    "excess_loss_keep",
    "sequence_ce_grad_norm",
    "sequence_losses",
    "sequence_weighted_mean",
]

TokenReduction = Literal["mean", "sum"]
TOKEN_REDUCTIONS: tuple[str, ...] = get_args(TokenReduction)
Per = Literal["sequence", "token"]


def _real(losses: Tensor, mask: Tensor | None) -> Tensor:
    """The mask of real tokens as ``losses``' dtype (all ones without a mask), refused when its shape differs."""
    if mask is None:
        return torch.ones_like(losses)
    if mask.shape != losses.shape:
        raise ValueError(
            f"`mask` has shape {tuple(mask.shape)} but the per-token losses have {tuple(losses.shape)}: give one "
            "entry per token (an attention mask, or `targets != ignore_index`)."
        )
    return mask.to(losses.dtype)


def _totals(values: Tensor, real: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per sequence: the sum of its real tokens' values (each times ``weights``; ``None``: 1) and their count.

    A token of weight 0 never counts, its NaN or inf included.
    """
    n = values.shape[0]
    weights = real if weights is None else weights
    totals = (values.masked_fill(weights == 0, 0.0) * weights).reshape(n, -1).sum(1)
    return totals, real.reshape(n, -1).sum(1)


def sequence_losses(token_losses: Tensor, mask: Tensor | None = None, reduction: TokenReduction = "mean") -> Tensor:
    """One value per sequence from per-token values ``(n, T, ...)``: the mean (or sum) over its real tokens.

    The mean is length-normalised, so that a score does not favour long or short sequences; a sequence without a
    real token has the mean NaN (a selection never picks it, a tracker drops it) and the sum 0.

    Args:
        token_losses: ``(n, T, ...)`` per-token losses (any float dtype; the result is float32).
        mask: real tokens, the shape of ``token_losses`` (bool or 0/1); ``None``: every token is real.
        reduction: ``mean`` (over the real tokens) or ``sum``.

    Raises:
        ValueError: a mask of another shape, or an unknown ``reduction``.

    Example:
        >>> losses = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])
        >>> sequence_losses(losses, torch.tensor([[1, 1, 0], [1, 0, 0]]))
        tensor([2., 2.])
    """
    if reduction not in TOKEN_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {TOKEN_REDUCTIONS}, got {reduction!r}.")
    values = token_losses.float()
    totals, counts = _totals(values, _real(values, mask))
    return totals if reduction == "sum" else totals / counts  # 0 / 0 is NaN: no real token


def sequence_weighted_mean(
    token_losses: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
    per: Per = "sequence",
    keep: Tensor | None = None,
) -> Tensor:
    """The loss of a batch of sequences: per-token losses, sequence weights, real tokens and kept tokens.

    With ``w_i`` the weight of sequence ``i`` (1 without weights), ``m_i`` its real tokens and ``l_it`` its losses:

    - ``per="sequence"`` (the default): ``(1/n) sum_i w_i (1/m_i) sum_t l_it``, each sequence's mean over its real
      tokens, then the weighted mean over sequences. With importance weights ``w_i = 1 / (N p_i)`` this is an
      unbiased estimate of the data set's mean per-sequence loss, whatever the lengths (a sequence without a real
      token counts as 0).
    - ``per="token"``: ``sum_i w_i sum_t l_it / sum_i w_i m_i``, every real token of the batch once (the usual
      language-model loss when the weights are 1). A ratio (self-normalised) estimate of the per-token mean loss:
      consistent, but biased by O(1/n) when token counts or weights differ; unbiased when both are equal.

    ``keep`` (token selection, Rho-1) masks tokens out of the loss: a real token counts ``keep / k`` times, ``k``
    the share of the batch's real tokens kept, so the loss keeps its scale, and ``per="token"`` with weights 1 is
    the mean over the kept tokens, as in Rho-1.

    Args:
        token_losses: ``(n, T, ...)`` per-token losses.
        weights: ``(n,)`` sequence weights, or ``None``.
        mask: real tokens (bool or 0/1, the shape of ``token_losses``), or ``None``: all.
        per: ``sequence`` or ``token``.
        keep: tokens kept in the loss (bool, the shape of ``token_losses``), or ``None``: all real tokens.

    Raises:
        ValueError: a mask of another shape, or an unknown ``per``.

    Example:
        >>> losses = torch.tensor([[1.0, 3.0, 0.0], [6.0, 0.0, 0.0]])
        >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        >>> sequence_weighted_mean(losses, mask=mask), sequence_weighted_mean(losses, mask=mask, per="token")
        (tensor(4.), tensor(3.3333))
    """
    if per not in get_args(Per):
        raise ValueError(
            f"`per` must be 'sequence' (each sequence's mean, then over sequences) or 'token', got {per!r}."
        )
    values = token_losses.float()
    real = _real(values, mask)
    scaled = None
    if keep is not None:
        kept = real * _real(real, keep)
        scaled = kept * (real.sum() / kept.sum().clamp(min=1))  # 1 / k on every kept token
    totals, counts = _totals(values, real, scaled)  # counts: every real token, kept or not
    n = values.shape[0]
    w = torch.ones(n, dtype=totals.dtype, device=totals.device) if weights is None else weights.to(totals.dtype)
    if per == "token":
        return (w * totals).sum() / (w * counts).sum().clamp(min=torch.finfo(totals.dtype).tiny)
    return (w * totals / counts.clamp(min=1)).mean()


def excess_loss_keep(losses: Tensor, reference: Tensor, fraction: float, mask: Tensor | None = None) -> Tensor:
    """Rho-1's token selection: the top ``fraction`` of the real tokens by excess loss ``losses - reference``.

    ``ceil(fraction * real tokens)`` tokens of the whole batch are kept (at least one when there is a real token);
    a token whose excess is not finite ranks last. No host synchronisation.

    Args:
        losses: ``(n, T, ...)`` the model's per-token losses (detached here).
        reference: the reference model's per-token losses, the same shape.
        fraction: the share of real tokens kept, in (0, 1].
        mask: real tokens, or ``None``: all.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or shapes that differ.

    Example:
        >>> losses = torch.tensor([[3.0, 3.0, 3.0, 3.0]])
        >>> reference = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
        >>> excess_loss_keep(losses, reference, 0.5).tolist()
        [[False, True, False, True]]
    """
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction}.")
    if reference.shape != losses.shape:
        raise ValueError(
            f"The reference model's per-token losses have shape {tuple(reference.shape)}, the model's "
            f"{tuple(losses.shape)}: both must score the same tokens of the same batch."
        )
    real = _real(losses, mask).bool()
    excess = losses.detach().float() - reference.detach().float().to(losses.device)
    excess = torch.nan_to_num(excess, nan=-math.inf, posinf=-math.inf).masked_fill(~real, -math.inf)
    flat = excess.reshape(-1)
    order = flat.argsort(descending=True, stable=True)  # ties: the earlier token first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    wanted = torch.ceil(real.sum() * fraction)  # a tensor: no host sync
    return ((rank < wanted) & real.reshape(-1)).reshape(losses.shape)


def sequence_ce_grad_norm(
    logits: Tensor,
    targets: Tensor,
    reduction: TokenReduction = "mean",
    label_smoothing: float = 0.0,
    class_weights: Tensor | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """The gradient-norm bound of a sequence's cross-entropy with respect to its logits, in closed form.

    For sequence ``i`` with real tokens ``t`` (``targets != ignore_index``, ``m_i`` of them) and the per-token bound
    ``g_it = ||softmax(z_it) - onehot(y_it)||`` (``softmax_ce_grad_norm``), the length-normalised loss
    ``L_i = (1/m_i) sum_t CE(z_it, y_it)`` has ``dL_i/dz_it = (softmax(z_it) - onehot(y_it)) / m_i``; the logits of
    different tokens are different variables, so ``||dL_i/dz_i|| = sqrt(sum_t g_it^2) / m_i`` (without the ``1/m_i``
    for the summed loss). A sequence without a real token scores 0 (no loss, no gradient).

    Args:
        logits: ``(n, T, C)`` pre-softmax outputs.
        targets: ``(n, T)`` class indices, ``ignore_index`` at the tokens that are not real.
        reduction: ``mean`` (the length-normalised loss) or ``sum``.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        class_weights: ``(C,)`` per-class loss weights, or ``None``.
        ignore_index: the target of a token without loss.

    Raises:
        ValueError: targets that are not ``logits.shape[:-1]``, or an unknown ``reduction``.

    Example:
        >>> logits = torch.zeros(2, 2, 2)  # two sequences: one real token, then two
        >>> sequence_ce_grad_norm(logits, torch.tensor([[0, -100], [0, 1]]))
        tensor([0.7071, 0.5000])
    """
    if reduction not in TOKEN_REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {TOKEN_REDUCTIONS}, got {reduction!r}.")
    if logits.ndim < 3 or targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"A sequence bound needs logits (n, T, C) and targets (n, T); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}."
        )
    n, classes = logits.shape[0], logits.shape[-1]
    flat = softmax_ce_grad_norm(
        logits.reshape(-1, classes), targets.reshape(-1), label_smoothing, class_weights, ignore_index
    )
    norms = flat.reshape(n, -1).square().sum(1).sqrt()
    if reduction == "sum":
        return norms
    return norms / (targets.reshape(n, -1) != ignore_index).sum(1).clamp(min=1)
