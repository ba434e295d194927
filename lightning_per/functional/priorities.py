"""Priorities and importance weights: how scores become a sampling distribution."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "effective_sample_size",
    "fill_unseen",
    "importance_weights",
    "mix_uniform",
    "proportional_priorities",
    "prune_keep_mask",
    "rank_priorities",
    "sampled_quantile",
    "smallest_and_top_mass",
    "to_probabilities",
]


def fill_unseen(scores: Tensor, default: float | None = None) -> Tensor:
    """Replace NaN entries (samples never scored) by ``default``, or by the largest seen score.

    Giving unseen samples the current maximum, as prioritized replay does, guarantees they are drawn.

    Args:
        scores: 1-D float tensor, NaN where a sample has no score yet.
        default: the value for unseen samples; ``None`` means the max of the seen scores (0 if none is seen).

    Example:
        >>> fill_unseen(torch.tensor([1.0, float("nan"), 3.0]))
        tensor([1., 3., 3.])
    """
    unseen = torch.isnan(scores)
    if not bool(unseen.any()):
        return scores
    if default is None:  # -inf in the unseen slots rather than `scores[~unseen]`: no int64 index, no gathered copy
        default = float(scores.masked_fill(unseen, -math.inf).max()) if not bool(unseen.all()) else 0.0
    return scores.masked_fill(unseen, default)


def proportional_priorities(scores: Tensor, alpha: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Priorities proportional to ``(s + eps) ** alpha``, in float64 (``alpha = 0`` is uniform).

    Only their ratios matter (a distribution is made of them): for ``alpha`` other than 0 and 1 they are taken
    relative to the largest, so that the power cannot leave float64's range.

    Args:
        scores: 1-D tensor of non-negative, finite scores.
        alpha: the exponent; 0 gives uniform priorities.
        eps: added to every score so that a zero score still has a chance.

    Raises:
        ValueError: a score is negative or not finite.

    Example:
        >>> proportional_priorities(torch.tensor([0.0, 1.0, 3.0]), alpha=1.0, eps=1.0)
        tensor([1., 2., 4.], dtype=torch.float64)
    """
    if scores.numel() and not bool(torch.isfinite(scores).all()):
        bad = scores[~torch.isfinite(scores)][0].item()
        raise ValueError(
            f"`scores` must be finite for proportional priorities, got {bad}: a score table holds finite scores, and "
            "NaN for unseen samples, which `fill_unseen` replaces."
        )
    if scores.numel() and float(scores.min()) < 0:
        raise ValueError(
            f"`proportional` priorities need non-negative scores, got a minimum of {float(scores.min()):.4g}. "
            "Use `strategy='rank'`, which accepts any real scores, or report a non-negative score."
        )
    priorities = scores.to(torch.float64, copy=True).add_(eps)
    if alpha == 0:
        return torch.ones_like(priorities)
    if alpha != 1:
        # relative to the largest, so that (s + eps)^alpha cannot leave float64's range (the distribution is the same);
        # in log space, so that a subnormal ratio (a tiny eps over a large score) is raised to alpha, not rounded to 0;
        # the largest log is subtracted from the logs themselves, so the largest priority is exactly 1 at any alpha
        largest = float(priorities.max()) if priorities.numel() else 0.0
        if largest > 0:
            priorities.log_()
            priorities.sub_(float(priorities.max())).mul_(alpha).exp_()
        else:
            priorities.pow_(alpha)
    return priorities


def rank_priorities(scores: Tensor, alpha: float = 1.0) -> Tensor:
    """Priorities ``rank ** -alpha`` in float64, rank 1 being the largest score; tied scores share their mean rank.

    Robust to outlier scores: only the order matters. Equal scores get equal priorities (all-equal scores give a
    uniform distribution), so samples with tied scores, e.g. unseen ones filled with the largest score, are
    drawn alike whatever their index.

    Example:
        >>> rank_priorities(torch.tensor([0.1, 5.0, 2.0]), alpha=1.0)
        tensor([0.3333, 1.0000, 0.5000], dtype=torch.float64)
        >>> rank_priorities(torch.tensor([3.0, 1.0, 3.0]), alpha=1.0)  # the tie shares ranks 1 and 2
        tensor([0.6667, 0.3333, 0.6667], dtype=torch.float64)
    """
    ordered, order = torch.sort(scores, descending=True, stable=True)
    ranks = torch.empty(scores.numel(), dtype=torch.float64, device=scores.device)
    if bool((ordered[1:] != ordered[:-1]).all()):  # no ties (the usual case for losses): ranks 1..n
        ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)
    else:
        _, group, counts = torch.unique_consecutive(ordered, return_inverse=True, return_counts=True)
        del ordered
        last = counts.cumsum(0).to(torch.float64)  # a group of tied scores covers ranks last - count + 1 .. last
        # the power once per group, then gathered: tied scores get bit-identical priorities
        ranks[order] = (last - (counts.to(torch.float64) - 1.0) / 2.0).pow_(-alpha)[group]
        return ranks
    return ranks.pow_(-alpha)


def to_probabilities(priorities: Tensor, inplace: bool = False) -> Tensor:
    """Normalise non-negative priorities to a float64 distribution; uniform when they sum to zero or to inf.

    Args:
        priorities: 1-D non-negative priorities.
        inplace: overwrite ``priorities`` when it is already float64 (saves 8 bytes per sample at large N).

    Example:
        >>> to_probabilities(torch.tensor([1.0, 3.0]))
        tensor([0.2500, 0.7500], dtype=torch.float64)
        >>> to_probabilities(torch.zeros(4))
        tensor([0.2500, 0.2500, 0.2500, 0.2500], dtype=torch.float64)
    """
    p = priorities.to(torch.float64)
    total = float(p.sum())
    if not math.isfinite(total) or total <= 0:
        return p.fill_(1.0 / max(p.numel(), 1)) if inplace else torch.full_like(p, 1.0 / max(p.numel(), 1))
    return p.div_(total) if inplace else p / total


def mix_uniform(p: Tensor, uniform_mix: float, inplace: bool = False) -> Tensor:
    """``(1 - uniform_mix) * p + uniform_mix / N``: move a distribution toward uniform (bounds every weight).

    Args:
        p: a distribution.
        uniform_mix: the uniform share, in [0, 1].
        inplace: overwrite ``p``.

    Example:
        >>> mix_uniform(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5)
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    if uniform_mix == 0:
        return p
    return (p.mul_(1.0 - uniform_mix) if inplace else p.mul(1.0 - uniform_mix)).add_(uniform_mix / p.numel())


def importance_weights(p: Tensor, n: int, beta: float = 1.0, max_weight: float | None = None) -> Tensor:
    """Importance weights ``(n * p) ** -beta``, optionally divided by ``max_weight``.

    With ``beta = 1`` the weighted gradient of points drawn with probabilities ``p`` is an unbiased estimate
    of the uniform average over the ``n`` points.

    Args:
        p: the probabilities of the drawn points.
        n: the size of the population they were drawn from.
        beta: 1 is unbiased; smaller values trade bias for variance.
        max_weight: divide by this (the largest weight of the distribution) for stability (Schaul et al.).

    Example:
        >>> importance_weights(torch.tensor([0.5, 0.25], dtype=torch.float64), n=4)
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    w = p.to(torch.float64).mul(n).pow_(-beta)
    if max_weight is not None:
        w.div_(max_weight)
    return w


def effective_sample_size(p: Tensor) -> float:
    """Kish's effective sample size of a distribution as a fraction of its support: ``1 / (N * sum p^2)``.

    Example:
        >>> effective_sample_size(torch.full((8,), 1 / 8, dtype=torch.float64))
        1.0
    """
    if p.numel() == 0:
        return 0.0
    q = p.to(torch.float64).reshape(-1)
    return min(1.0, float(1.0 / (p.numel() * torch.dot(q, q))))  # dot: no N-sized temporary; 1 at most (rounding)


def prune_keep_mask(scores: Tensor, prune_ratio: float, threshold: float, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """InfoBatch's rule: keep every score at or above ``threshold``; keep each one below with probability ``1 - r``.

    The kept below-threshold samples get loss weight ``1 / (1 - r)`` so the expected gradient is unchanged.
    ``prune_ratio = 1`` keeps only the samples at or above the threshold (biased: a hard threshold).

    Args:
        scores: 1-D scores.
        prune_ratio: ``r``, the share of below-threshold samples pruned.
        threshold: the cut.
        uniforms: one value in ``[0, 1)`` per sample.

    Returns:
        ``(keep, below)`` boolean masks.

    Example:
        >>> keep, below = prune_keep_mask(torch.tensor([0.1, 0.2, 5.0]), 0.5, 1.0, torch.tensor([0.9, 0.1, 0.0]))
        >>> keep.tolist(), below.tolist()
        ([True, False, True], [True, True, False])
    """
    below = scores < threshold
    keep = ~below | (uniforms >= prune_ratio)
    return keep, below


def class_frequency_factor(labels: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """``(n_c / mean_c n_c) ** -gamma`` for the class ``c`` of each target: rarer classes up-weighted.

    Args:
        labels: the known class of every sample (int, ``-1`` where not known yet), which the counts come from.
        targets: the classes to give a factor to.
        gamma: the exponent (0: every factor 1).

    Example:
        >>> class_frequency_factor(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1]), 1.0)
        tensor([0.6667, 2.0000])
    """
    counts = torch.bincount(labels[labels >= 0].long()).double()
    present = counts > 0
    factor = torch.ones_like(counts)
    factor[present] = (counts[present] / counts[present].mean()).pow(-gamma)
    return factor[targets.long()].float()


def smallest_and_top_mass(p: Tensor, scores: Tensor, top_threshold: float, chunk: int = 1 << 20) -> tuple[float, float]:
    """The smallest positive probability and the mass on the top-scored samples, read a chunk at a time.

    A sample is top-scored when its filled score is at or above ``top_threshold``: a scored sample by its score, an
    unseen (NaN) one always, since it is filled with the largest seen score, which no quantile exceeds. Whole-tensor
    forms (``p[p > 0].min()``, ``p[filled >= t].sum()``) allocate a mask, an int64 index and a float64 copy, up to 18
    bytes per sample on top of the plan's 8; here every temporary is at most ``chunk`` entries long.

    Example:
        >>> p = torch.tensor([0.0, 0.25, 0.75], dtype=torch.float64)
        >>> smallest_and_top_mass(p, torch.tensor([0.0, 1.0, float("nan")]), top_threshold=2.0, chunk=2)
        (0.25, 0.75)
    """
    smallest, mass = math.inf, 0.0
    for start in range(0, p.numel(), chunk):
        part = p[start : start + chunk]
        smallest = min(smallest, float(torch.where(part > 0, part, math.inf).min()))
        top = ~(scores[start : start + chunk] < top_threshold)  # NaN (unseen) compares False: top
        mass += float(torch.where(top, part, 0.0).sum())
    return smallest, mass


def sampled_quantile(values: Tensor, q: float, generator: torch.Generator, max_points: int = 1 << 20) -> float:
    """The ``q`` quantile of ``values``, estimated from ``max_points`` entries drawn with ``generator`` above that size.

    Example:
        >>> sampled_quantile(torch.arange(5.0), 0.5, torch.Generator())
        2.0
    """
    if values.numel() > max_points:
        values = values[torch.randint(values.numel(), (max_points,), generator=generator)]
    return float(torch.quantile(values.double(), q))
