"""Draws: inverse-CDF sampling without the 2^24-category limit, and the per-step selection rules."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "draw_from_cdf",
    "draw_importance_sample",
    "inverse_cdf_sample",
    "percentile_keep",
    "sorted_uniforms",
    "top_k_positions",
]


def inverse_cdf_sample(cdf: Tensor, uniforms: Tensor) -> Tensor:
    """Draw indices by inverse-CDF lookup: no ``torch.multinomial`` 2^24-category limit.

    Args:
        cdf: float64 cumulative sums of the (unnormalised) priorities, non-decreasing.
        uniforms: float64 values in ``[0, 1)``, one per draw.

    Returns:
        int64 indices ``i`` with ``cdf[i-1] <= u * cdf[-1] < cdf[i]``; zero-priority entries are never drawn.

    Example:
        >>> cdf = torch.tensor([0.0, 1.0, 1.0, 4.0], dtype=torch.float64)
        >>> inverse_cdf_sample(cdf, torch.tensor([0.0, 0.2, 0.3, 0.99], dtype=torch.float64))
        tensor([1, 1, 3, 3])
    """
    targets = uniforms.to(torch.float64) * cdf[-1]
    return torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.numel() - 1)


def sorted_uniforms(num: int, generator: torch.Generator | None = None) -> Tensor:
    """``num`` i.i.d. uniforms on ``[0, 1)``, returned in increasing order, in O(num) (exponential spacings).

    The partial sums of ``num + 1`` standard exponentials, divided by their total, are distributed as the
    order statistics of ``num`` uniforms: no sort is needed.

    Example:
        >>> u = sorted_uniforms(5, torch.Generator().manual_seed(0))
        >>> bool((u[1:] >= u[:-1]).all() and u.min() >= 0 and u.max() < 1)
        True
    """
    spacings = torch.empty(num + 1, dtype=torch.float64).exponential_(generator=generator)
    sums = spacings.cumsum_(0)
    return sums[:-1].div_(sums[-1])


def draw_from_cdf(
    cdf: Tensor, num: int, generator: torch.Generator | None = None, rank: int = 0, num_replicas: int = 1
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` i.i.d. indices with ``p_i ∝ cdf[i] - cdf[i-1]``; this rank's share and the draws' probabilities.

    The same sequence of ``num`` draws is made on every rank (same generator state); rank ``r`` of ``num_replicas``
    receives positions ``r, r + num_replicas, ...`` of it, so the ranks hold disjoint shares of one draw. The lookups
    are done for sorted targets (``sorted_uniforms``), which walks a large CDF in memory order, and the draws are
    then put in the order of a uniformly random permutation: the sequence is i.i.d. from ``p``.

    Args:
        cdf: float64 cumulative sums of non-negative priorities (the last entry > 0).
        num: draws in the whole sequence (a multiple of ``num_replicas``).
        generator: CPU generator; consumed identically on every rank.
        rank: this rank.
        num_replicas: number of ranks.

    Returns:
        ``(index, p)``: int64 indices of this rank's ``num // num_replicas`` draws, in order, and their float64
        probabilities ``p_i`` (for importance weights).

    Example:
        >>> cdf = torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64)
        >>> index, p = draw_from_cdf(cdf, 1000, torch.Generator().manual_seed(0))
        >>> 1 in index.tolist(), sorted(set(p.tolist()))
        (False, [0.25, 0.75])
    """
    if num % num_replicas:
        raise ValueError(f"`num` ({num}) must be a multiple of `num_replicas` ({num_replicas}).")
    total = cdf[-1]
    targets = sorted_uniforms(num, generator).mul_(total)
    position = torch.randperm(num, generator=generator)  # draw j of the sequence is sorted target position[j]
    slot = torch.empty_like(position).scatter_(0, position, torch.arange(num))  # inverse: sorted target -> draw
    if num_replicas > 1:
        mine = (slot % num_replicas == rank).nonzero().squeeze(1)  # in increasing order, so the targets stay sorted
        targets, slot = targets[mine], slot[mine].div_(num_replicas, rounding_mode="floor")
    found = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.numel() - 1)
    del targets
    upper = cdf[found]
    p = upper.sub_(torch.where(found > 0, cdf[(found - 1).clamp_(min=0)], 0.0)).div_(total)
    index = torch.empty_like(found).scatter_(0, slot, found)
    return index, torch.empty_like(p).scatter_(0, slot, p)


def draw_importance_sample(
    scores: Tensor, num: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Draw ``num`` positions with replacement with ``p ∝ scores``; weights ``1 / (n p)`` make the mean unbiased.

    Non-finite scores get probability 0 and do not count in ``n`` (the number of finite scores). For any
    per-sample values ``v``, ``E[mean_j w_j v_{i_j}] = mean over the finite-score points of v``.

    Args:
        scores: 1-D non-negative scores (any device; the draw runs there, in float64, with one read to the host).
        num: the number of draws.
        generator: a generator on the scores' device, for reproducible draws.

    Returns:
        ``(positions, weights, p)``: int64 positions ``(num,)``, float32 weights ``(num,)`` and the float64
        probabilities of all points; ``None`` when no score is finite and positive (no distribution to draw from).

    Raises:
        ValueError: a finite score is negative.

    Example:
        >>> generator = torch.Generator().manual_seed(2)
        >>> positions, weights, p = draw_importance_sample(torch.tensor([1.0, 3.0]), 4, generator)
        >>> p.tolist()
        [0.25, 0.75]
        >>> positions.tolist(), [round(w, 4) for w in weights.tolist()]
        ([1, 0, 1, 1], [0.6667, 2.0, 0.6667, 0.6667])
    """
    values = scores.detach().reshape(-1).to(torch.float64)
    finite = torch.isfinite(values)
    values = torch.where(finite, values, 0.0)
    low, total, n = torch.stack([torch.where(finite, values, math.inf).min(), values.sum(), finite.sum()]).tolist()
    if low < 0:
        raise ValueError(
            f"Importance scores must be non-negative; got a minimum of {low:.4g}. "
            "A score function must return non-negative values (e.g. a gradient norm or a loss)."
        )
    if not total > 0 or not math.isfinite(total):
        return None
    p = values / total
    uniforms = torch.rand(num, generator=generator, dtype=torch.float64, device=values.device)
    positions = inverse_cdf_sample(torch.cumsum(p, 0), uniforms)
    weights = (1.0 / (n * p[positions])).float()
    return positions, weights, p


def top_k_positions(scores: Tensor, k: int) -> Tensor:
    """The positions of the ``k`` highest finite scores, highest first; ties go to the earlier position.

    Fewer than ``k`` when fewer scores are finite (NaN and inf are never chosen).

    Example:
        >>> top_k_positions(torch.tensor([0.5, 2.0, float("nan"), 2.0, 1.0]), 3).tolist()
        [1, 3, 4]
    """
    values = scores.detach().reshape(-1).to(torch.float64)  # on its own device
    finite = torch.isfinite(values)
    ordered = torch.sort(torch.where(finite, values, -math.inf), descending=True, stable=True).indices
    return ordered[: min(k, int(finite.sum()))]


def percentile_keep(scores: Tensor, history: Tensor, selectivity: float, uniforms: Tensor) -> Tensor:
    """Selective Backprop's rule (Jiang et al., 2019): keep each point with probability ``F(score)^selectivity``.

    ``F`` is the empirical CDF of ``history`` (recent scores): the share of them at or below the score. Non-finite
    scores are never kept. Over scores distributed like the history, ``E[F^s] = 1 / (s + 1)`` of the points are kept
    (``s`` the selectivity).

    Args:
        scores: 1-D scores of the candidate points.
        history: 1-D finite recent scores (the candidates' own included), not empty.
        selectivity: ``beta`` in Jiang et al., > 0 (larger keeps fewer).
        uniforms: one value in ``[0, 1)`` per point.

    Returns:
        The boolean mask of the kept points.

    Example:
        >>> percentile_keep(torch.tensor([1.0, 4.0]), torch.arange(1.0, 5.0), 1.0, torch.tensor([0.3, 0.3])).tolist()
        [False, True]
    """
    ordered = torch.sort(history.detach().reshape(-1).to("cpu", torch.float64)).values
    values = scores.detach().reshape(-1).to("cpu", torch.float64)
    cdf = torch.searchsorted(ordered, values, right=True).to(torch.float64) / ordered.numel()
    return torch.isfinite(values) & (uniforms.to(torch.float64) < cdf.pow(selectivity))
