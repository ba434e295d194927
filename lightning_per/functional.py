"""Pure tensor functions: priorities from scores, importance weights, sampling, tau and gradient-norm bounds.

Nothing here holds state or touches Lightning; the stateful classes call these. Probabilities and cumulative
sums are computed in float64 so that a table of 10^8 scores keeps its resolution.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

T = TypeVar("T", float, Tensor)

__all__ = [
    "draw_from_cdf",
    "draw_importance_sample",
    "effective_sample_size",
    "fill_unseen",
    "importance_weights",
    "inverse_cdf_sample",
    "margin_score",
    "mix_uniform",
    "mse_grad_norm",
    "percentile_keep",
    "prediction_deviation",
    "proportional_priorities",
    "prune_keep_mask",
    "rank_priorities",
    "sigmoid_bce_grad_norm",
    "softmax_ce_grad_norm",
    "sorted_uniforms",
    "tau",
    "tau_ema",
    "tau_from_sums",
    "to_probabilities",
    "top_k_positions",
]


def fill_unseen(scores: Tensor, default: float | None = None) -> Tensor:
    """Replace NaN entries (samples never scored) by ``default``, or by the largest seen score.

    Giving unseen samples the current maximum, as prioritized replay does, guarantees they are drawn.

    Args:
        scores: 1-D float tensor, NaN where a sample has no score yet.
        default: the value for unseen samples; ``None`` means the max of the seen scores (0 if none is seen).

    Example::

        >>> fill_unseen(torch.tensor([1.0, float("nan"), 3.0]))
        tensor([1., 3., 3.])
    """
    unseen = torch.isnan(scores)
    if not bool(unseen.any()):
        return scores
    if default is None:
        default = float(scores[~unseen].max()) if bool((~unseen).any()) else 0.0
    return scores.masked_fill(unseen, default)


def proportional_priorities(scores: Tensor, alpha: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Priorities ``(s + eps) ** alpha`` in float64 (``alpha = 0`` is uniform).

    Args:
        scores: 1-D tensor of non-negative, finite scores.
        alpha: the exponent; 0 gives uniform priorities.
        eps: added to every score so that a zero score still has a chance.

    Raises:
        ValueError: a score is negative or not finite.

    Example::

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
        # relative to the largest, so that (s + eps)^alpha cannot leave float64's range (the distribution is the same)
        largest = float(priorities.max()) if priorities.numel() else 0.0
        if largest > 0:
            priorities.div_(largest)
        priorities.pow_(alpha)
    return priorities


def rank_priorities(scores: Tensor, alpha: float = 1.0) -> Tensor:
    """Priorities ``rank ** -alpha`` in float64, rank 1 being the largest score; tied scores share their mean rank.

    Robust to outlier scores: only the order matters. Equal scores get equal priorities (all-equal scores give a
    uniform distribution), so samples with tied scores, e.g. unseen ones filled with the largest score, are
    drawn alike whatever their index.

    Example::

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

    Example::

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


def mix_uniform(p: Tensor, lam: float, inplace: bool = False) -> Tensor:
    """``(1 - lam) * p + lam / N``: move a distribution toward uniform (annealing; bounds every weight).

    Args:
        p: a distribution.
        lam: the uniform share, in [0, 1].
        inplace: overwrite ``p``.

    Example::

        >>> mix_uniform(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.5)
        tensor([0.7500, 0.2500], dtype=torch.float64)
    """
    if lam == 0:
        return p
    return (p.mul_(1.0 - lam) if inplace else p.mul(1.0 - lam)).add_(lam / p.numel())


def importance_weights(p: Tensor, n: int, beta: float = 1.0, max_weight: float | None = None) -> Tensor:
    """Importance weights ``(n * p) ** -beta``, optionally divided by ``max_weight``.

    With ``beta = 1`` the weighted gradient of points drawn with probabilities ``p`` is an unbiased estimate
    of the uniform average over the ``n`` points.

    Args:
        p: the probabilities of the drawn points.
        n: the size of the population they were drawn from.
        beta: 1 is unbiased; smaller values trade bias for variance.
        max_weight: divide by this (the largest weight of the distribution) for stability (Schaul et al.).

    Example::

        >>> importance_weights(torch.tensor([0.5, 0.25], dtype=torch.float64), n=4)
        tensor([0.5000, 1.0000], dtype=torch.float64)
    """
    w = p.to(torch.float64).mul(n).pow_(-beta)
    if max_weight is not None:
        w.div_(max_weight)
    return w


def effective_sample_size(p: Tensor) -> float:
    """Kish's effective sample size of a distribution as a fraction of its support: ``1 / (N * sum p^2)``.

    Example::

        >>> effective_sample_size(torch.full((8,), 1 / 8, dtype=torch.float64))
        1.0
    """
    if p.numel() == 0:
        return 0.0
    q = p.to(torch.float64).reshape(-1)
    return min(1.0, float(1.0 / (p.numel() * torch.dot(q, q))))  # dot: no N-sized temporary; 1 at most (rounding)


def inverse_cdf_sample(cdf: Tensor, uniforms: Tensor) -> Tensor:
    """Draw indices by inverse-CDF lookup: no ``torch.multinomial`` 2^24-category limit.

    Args:
        cdf: float64 cumulative sums of the (unnormalised) priorities, non-decreasing.
        uniforms: float64 values in ``[0, 1)``, one per draw.

    Returns:
        int64 indices ``i`` with ``cdf[i-1] <= u * cdf[-1] < cdf[i]``; zero-priority entries are never drawn.

    Example::

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

    Example::

        >>> u = sorted_uniforms(5, torch.Generator().manual_seed(0))
        >>> bool((u[1:] >= u[:-1]).all() and u.min() >= 0 and u.max() < 1)
        True
    """
    spacings = torch.empty(num + 1, dtype=torch.float64).exponential_(generator=generator)
    sums = spacings.cumsum_(0)
    return sums[:-1].div_(sums[-1])


def draw_from_cdf(
    cdf: Tensor, num: int, generator: torch.Generator | None = None, rank: int = 0, world: int = 1
) -> tuple[Tensor, Tensor]:
    """Draw ``num`` i.i.d. indices with ``p_i ∝ cdf[i] - cdf[i-1]``; this rank's share and the draws' probabilities.

    The same sequence of ``num`` draws is made on every rank (same generator state); rank ``r`` of ``world``
    receives positions ``r, r + world, ...`` of it, so the ranks hold disjoint shares of one draw. The lookups are
    done for sorted targets (:func:`sorted_uniforms`), which walks a large CDF in memory order, and the draws are
    then put in the order of a uniformly random permutation: the sequence is i.i.d. from ``p``.

    Args:
        cdf: float64 cumulative sums of non-negative priorities (the last entry > 0).
        num: draws in the whole sequence (a multiple of ``world``).
        generator: CPU generator; consumed identically on every rank.
        rank: this rank.
        world: number of ranks.

    Returns:
        ``(index, p)``: int64 indices of this rank's ``num // world`` draws, in order, and their float64
        probabilities ``p_i`` (for importance weights).

    Example::

        >>> cdf = torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64)
        >>> index, p = draw_from_cdf(cdf, 1000, torch.Generator().manual_seed(0))
        >>> 1 in index.tolist(), sorted(set(p.tolist()))
        (False, [0.25, 0.75])
    """
    if num % world:
        raise ValueError(f"`num` ({num}) must be a multiple of `world` ({world}).")
    total = cdf[-1]
    targets = sorted_uniforms(num, generator).mul_(total)
    position = torch.randperm(num, generator=generator)  # draw j of the sequence is sorted target position[j]
    slot = torch.empty_like(position).scatter_(0, position, torch.arange(num))  # inverse: sorted target -> draw
    if world > 1:
        mine = (slot % world == rank).nonzero().squeeze(1)  # in increasing order, so the targets stay sorted
        targets, slot = targets[mine], slot[mine].div_(world, rounding_mode="floor")
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
        scores: 1-D non-negative scores (any device; the draw runs on the CPU in float64).
        num: the number of draws.
        generator: a CPU generator, for reproducible draws.

    Returns:
        ``(positions, weights, p)``: int64 positions ``(num,)``, float32 weights ``(num,)`` and the float64
        probabilities of all points; ``None`` when no score is finite and positive (no distribution to draw from).

    Raises:
        ValueError: a finite score is negative.

    Example::

        >>> generator = torch.Generator().manual_seed(2)
        >>> positions, weights, p = draw_importance_sample(torch.tensor([1.0, 3.0]), 4, generator)
        >>> p.tolist()
        [0.25, 0.75]
        >>> positions.tolist(), [round(w, 4) for w in weights.tolist()]
        ([1, 0, 1, 1], [0.6667, 2.0, 0.6667, 0.6667])
    """
    values = scores.detach().reshape(-1).to("cpu", torch.float64)
    finite = torch.isfinite(values)
    if bool(finite.any()) and float(values[finite].min()) < 0:
        raise ValueError(
            f"Importance scores must be non-negative; got a minimum of {float(values[finite].min()):.4g}. "
            "A score function must return non-negative values (e.g. a gradient norm or a loss)."
        )
    values = torch.where(finite, values, torch.zeros_like(values))
    total = float(values.sum())
    if not total > 0 or not math.isfinite(total):
        return None
    p = values / total
    uniforms = torch.rand(num, generator=generator, dtype=torch.float64)
    positions = inverse_cdf_sample(torch.cumsum(p, 0), uniforms)
    n = int(finite.sum())
    weights = (1.0 / (n * p[positions])).float()
    return positions, weights, p


def top_k_positions(scores: Tensor, k: int) -> Tensor:
    """The positions of the ``k`` highest finite scores, highest first; ties go to the earlier position.

    Fewer than ``k`` when fewer scores are finite (NaN and inf are never chosen).

    Example::

        >>> top_k_positions(torch.tensor([0.5, 2.0, float("nan"), 2.0, 1.0]), 3).tolist()
        [1, 3, 4]
    """
    values = scores.detach().reshape(-1).to("cpu", torch.float64)
    finite = torch.isfinite(values)
    ordered = torch.sort(torch.where(finite, values, -math.inf), descending=True, stable=True).indices
    return ordered[: min(k, int(finite.sum()))]


def percentile_keep(scores: Tensor, history: Tensor, beta: float, uniforms: Tensor) -> Tensor:
    """Selective Backprop's rule (Jiang et al., 2019): keep each point with probability ``F(score)^beta``.

    ``F`` is the empirical CDF of ``history`` (recent scores): the share of them at or below the score. Non-finite
    scores are never kept. Over scores distributed like the history, ``E[F^beta] = 1 / (beta + 1)`` of the points
    are kept.

    Args:
        scores: 1-D scores of the candidate points.
        history: 1-D finite recent scores (the candidates' own included), not empty.
        beta: the selectivity, > 0 (larger keeps fewer).
        uniforms: one value in ``[0, 1)`` per point.

    Returns:
        The boolean mask of the kept points.

    Example::

        >>> percentile_keep(torch.tensor([1.0, 4.0]), torch.arange(1.0, 5.0), 1.0, torch.tensor([0.3, 0.3])).tolist()
        [False, True]
    """
    ordered = torch.sort(history.detach().reshape(-1).to("cpu", torch.float64)).values
    values = scores.detach().reshape(-1).to("cpu", torch.float64)
    cdf = torch.searchsorted(ordered, values, right=True).to(torch.float64) / ordered.numel()
    return torch.isfinite(values) & (uniforms.to(torch.float64) < cdf.pow(beta))


def prune_keep_mask(scores: Tensor, ratio: float, threshold: float, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """InfoBatch's rule: keep every score at or above ``threshold``; keep each one below with probability ``1 - r``.

    The kept below-threshold samples get loss weight ``1 / (1 - r)`` so the expected gradient is unchanged.
    ``ratio = 1`` keeps only the samples at or above the threshold (biased: a hard threshold).

    Args:
        scores: 1-D scores.
        ratio: ``r``, the share of below-threshold samples pruned.
        threshold: the cut.
        uniforms: one value in ``[0, 1)`` per sample.

    Returns:
        ``(keep, below)`` boolean masks.

    Example::

        >>> keep, below = prune_keep_mask(torch.tensor([0.1, 0.2, 5.0]), 0.5, 1.0, torch.tensor([0.9, 0.1, 0.0]))
        >>> keep.tolist(), below.tolist()
        ([True, False, True], [True, True, False])
    """
    below = scores < threshold
    keep = ~below | (uniforms >= ratio)
    return keep, below


def tau(scores: Tensor, rooted: bool = True, count: Tensor | int | None = None) -> Tensor:
    """The variance-reduction estimate of Katharopoulos & Fleuret (2018) for one step's scores.

    With ``g`` the normalised scores and ``u = 1/n``: ``(1 - ||g - u||^2 / ||g||^2) ** -1/2`` when ``rooted``
    (what the reference code and the paper's experiments use), else ``1 / (1 - ||g - u||^2 / ||g||^2)``,
    which equals ``n * sum(g^2) = n * sum(s^2) / sum(s)^2`` (the form computed). Uniform scores give 1.

    Args:
        scores: 1-D non-negative scores with a positive sum.
        rooted: the rooted form.
        count: ``n``, when ``scores`` holds zeros in place of points that do not count (``None``: all of them).

    Example::

        >>> tau(torch.tensor([1.0, 1.0, 1.0, 1.0]))
        tensor(1.)
        >>> round(float(tau(torch.tensor([1.0, 0.0, 0.0, 0.0]), rooted=False)), 4)
        4.0
    """
    n = scores.numel() if count is None else count
    return tau_from_sums(scores.sum(), torch.dot(scores, scores), n, rooted)


def tau_from_sums(total: T, squares: T, count: T | int, rooted: bool = True) -> T:
    """:func:`tau` from the sum and the sum of squares of ``count`` scores (floats or tensors; ``total != 0``).

    Example::

        >>> tau_from_sums(4.0, 4.0, 4)
        1.0
    """
    unrooted = count * squares / (total * total)
    return unrooted**0.5 if rooted else unrooted


def tau_ema(previous: float, step_value: float, a_tau: float) -> float:
    """``a_tau * previous + (1 - a_tau) * step_value``.

    Example::

        >>> tau_ema(0.0, 2.0, 0.9)
        0.19999999999999996
    """
    return a_tau * previous + (1.0 - a_tau) * step_value


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
        label_smoothing: as in :func:`torch.nn.functional.cross_entropy`.
        class_weights: optional ``(C,)`` per-class loss weights, as in ``cross_entropy(weight=...)``.
        ignore_index: with class indices, a target that contributes no loss (and so no gradient), as in
            ``cross_entropy(ignore_index=...)``: its row scores 0. Any other index outside ``[0, C)`` scores NaN.

    Raises:
        ValueError: targets neither of shape ``logits.shape[:-1]`` (as many values) nor ``logits.shape``.

    Example::

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


def sigmoid_bce_grad_norm(logits: Tensor, targets: Tensor) -> Tensor:
    """``||d BCE-with-logits / d logits||_2`` per row: ``||sigmoid(z) - y||`` (summed over outputs).

    Example::

        >>> sigmoid_bce_grad_norm(torch.tensor([[0.0]]), torch.tensor([[1.0]]))
        tensor([0.5000])
    """
    diff = logits.detach().float().sigmoid() - _same_shape(targets, logits.shape).float()
    return diff.reshape(diff.shape[0], -1).norm(dim=-1)


def mse_grad_norm(outputs: Tensor, targets: Tensor) -> Tensor:
    """``||d MSE / d outputs||_2`` per row for a per-sample loss ``mean_j (z_j - y_j)^2``: ``2 ||z - y|| / d``.

    Example::

        >>> mse_grad_norm(torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([1.4142])
    """
    diff = (outputs.detach().float() - _same_shape(targets, outputs.shape).float()).reshape(outputs.shape[0], -1)
    return diff.norm(dim=-1) * (2.0 / diff.shape[1])


def prediction_deviation(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - p_y``: how far the predicted probability of the true class is from 1.

    Example::

        >>> prediction_deviation(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor([0.5000])
    """
    probs = logits.detach().float().softmax(-1)
    return 1.0 - probs.gather(-1, targets.long().view(-1, 1)).squeeze(-1)


def margin_score(logits: Tensor, targets: Tensor) -> Tensor:
    """``1 - (p_y - max_{k != y} p_k)``, in ``[0, 2]``: large when the sample is misclassified or on the border.

    Example::

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
