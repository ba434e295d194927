"""The variance-reduction estimate `tau` of Katharopoulos & Fleuret (2018) that switches importance sampling on."""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T", float, Tensor)

__all__ = ["tau", "tau_ema", "tau_from_sums"]


def tau(scores: Tensor, rooted: bool = True, count: Tensor | int | None = None) -> Tensor:
    """The variance-reduction estimate of Katharopoulos & Fleuret (2018) for one step's scores.

    With ``g`` the normalised scores and ``u = 1/n``: ``(1 - ||g - u||^2 / ||g||^2) ** -1/2`` when ``rooted``
    (what the reference code and the paper's experiments use), else ``1 / (1 - ||g - u||^2 / ||g||^2)``,
    which equals ``n * sum(g^2) = n * sum(s^2) / sum(s)^2`` (the form computed). Uniform scores give 1.

    Args:
        scores: 1-D non-negative scores with a positive sum.
        rooted: the rooted form.
        count: ``n``, when ``scores`` holds zeros in place of points that do not count (``None``: all of them).

    Example:
        >>> tau(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        tensor(1.)
        >>> round(float(tau(torch.tensor([1.0, 0.0, 0.0, 0.0]), rooted=False)), 4)
        4.0
    """
    n = scores.numel() if count is None else count
    return tau_from_sums(scores.sum(), torch.dot(scores, scores), n, rooted)


def tau_from_sums(total: T, squares: T, count: T | int, rooted: bool = True) -> T:
    """``tau`` from the sum and the sum of squares of ``count`` scores (floats or tensors; ``total != 0``).

    Example:
        >>> tau_from_sums(4.0, 4.0, 4)
        1.0
    """
    unrooted = count * squares / (total * total)
    return unrooted**0.5 if rooted else unrooted


def tau_ema(previous: float, step_value: float, a_tau: float) -> float:
    """``a_tau * previous + (1 - a_tau) * step_value``.

    Example:
        >>> tau_ema(0.0, 2.0, 0.9)
        0.19999999999999996
    """
    return a_tau * previous + (1.0 - a_tau) * step_value
