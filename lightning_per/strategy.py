"""Sampling strategies: how a table of per-sample scores becomes one epoch's sampling plan.

A plan is a pure function of the score table, the strategy, the epoch and the seed, so every DDP rank that holds
the same table builds the same plan, and a resumed run rebuilds the plan the uninterrupted run used.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_per import functional as PF
from lightning_per._checks import check_choice, check_int, check_number

__all__ = ["STRATEGY_NAMES", "SamplingPlan", "SamplingStrategy", "StrategyName", "as_strategy", "build_plan"]

StrategyName = Literal["uniform", "proportional", "rank", "prune"]
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)


@dataclass
class SamplingStrategy:
    """How training samples are drawn each epoch, chosen by ``name``.

    - ``uniform``: a shuffled pass over the data, weights 1 (plain Lightning training).
    - ``proportional``: ``p_i ∝ (s_i + eps)^alpha``, ``num_samples`` draws with replacement.
    - ``rank``: ``p_i ∝ rank_i^-alpha`` (rank 1 = highest score), robust to outliers, with replacement.
    - ``prune``: InfoBatch (ICLR 2024): samples scoring below the threshold (the mean, or ``prune_quantile``) are
      dropped with probability ``prune_ratio`` and the kept ones weighted ``1 / (1 - prune_ratio)``; a shuffled
      pass over what is kept, so epochs get shorter.

    Drawn samples get importance weights ``(N p_i)^-beta``. Epoch 0 is uniform (nothing is scored yet), and so are
    the first ``initial_uniform_epochs``; ``alpha``, ``beta`` and ``uniform_mix`` move linearly from their values in
    the first prioritized epoch to their ``*_final`` values in the last, which needs the Trainer's ``max_epochs``
    (without it they stay at their start values).

    Args:
        name: ``uniform``, ``proportional``, ``rank`` or ``prune``.
        alpha: priority exponent (>= 0; 0 is uniform).
        beta: importance-weight exponent in [0, 1]; 1 is unbiased.
        eps: added to scores for ``proportional`` (> 0 keeps every sample drawable).
        uniform_mix: ``λ`` in ``p = (1 - λ) p_prio + λ / N``; bounds every weight by ``1 / λ``.
        alpha_final: anneal ``alpha`` to this value (``None``: constant).
        beta_final: anneal ``beta`` to this value (``None``: constant); by default 0.4 annealed to 1.0.
        uniform_mix_final: anneal ``uniform_mix`` to this value (``None``: constant).
        initial_uniform_epochs: uniform epochs at the start of training, scored but not prioritized: defers the
            strategy, e.g. class-balanced draws in the last quarter only (deferred re-sampling).
        final_uniform_epochs: uniform epochs at the end of training (``None``: 0, or ``max_epochs // 8`` for
            ``prune``, as in InfoBatch).
        normalize_weights: divide weights by the largest weight of the distribution (Schaul et al.; then <= 1).
        num_samples: draws per epoch for ``proportional`` / ``rank`` (``None``: the dataset size).
        prune_ratio: ``r`` in [0, 1], the share of below-threshold samples pruned; 1 is a hard threshold (biased,
            warned).
        prune_quantile: the threshold as a quantile of the scores, in (0, 1) (``None``: their mean, as InfoBatch).

    Raises:
        ValueError: an argument is out of range; the message names it and the value.

    Example:
        >>> strategy = SamplingStrategy("rank", alpha=0.7)
        >>> strategy.with_replacement, strategy.annealed()
        (True, ['beta from 0.4 to 1.0'])
    """

    name: StrategyName = "proportional"
    alpha: float = 1.0
    beta: float = 0.4
    eps: float = 1e-6
    uniform_mix: float = 0.1
    alpha_final: float | None = None
    beta_final: float | None = 1.0
    uniform_mix_final: float | None = None
    initial_uniform_epochs: int = 0
    final_uniform_epochs: int | None = None
    normalize_weights: bool = False
    num_samples: int | None = None
    prune_ratio: float = 0.5
    prune_quantile: float | None = None

    def __post_init__(self) -> None:
        check_choice("name", self.name, STRATEGY_NAMES)
        for key in ("alpha", "alpha_final"):
            check_number(key, getattr(self, key), 0.0, optional=key.endswith("_final"))
        for key in ("beta", "beta_final", "uniform_mix", "uniform_mix_final", "prune_ratio"):
            check_number(key, getattr(self, key), 0.0, 1.0, optional=key.endswith("_final"))
        check_number("eps", self.eps, 0.0)
        check_int("initial_uniform_epochs", self.initial_uniform_epochs, 0)
        check_int("final_uniform_epochs", self.final_uniform_epochs, 0, optional=True)
        check_int("num_samples", self.num_samples, 1, optional=True)
        check_number("prune_quantile", self.prune_quantile, 0.0, 1.0, low_open=True, high_open=True, optional=True)
        if not isinstance(self.normalize_weights, bool):
            raise TypeError(f"`normalize_weights` must be True or False, got {self.normalize_weights!r}.")
        if self.name == "prune" and self.prune_ratio == 1.0:
            rank_zero_warn(
                "`prune_ratio=1` is a hard threshold: only samples scoring at or above it are drawn and the rest "
                "get no weight to make up for them, so the gradient is biased. Use `prune_ratio < 1` for InfoBatch's "
                "unbiased rule."
            )

    @property
    def with_replacement(self) -> bool:
        """Whether the strategy draws with replacement (``proportional``, ``rank``)."""
        return self.name in ("proportional", "rank")

    def uniform_epochs_at_end(self, max_epochs: int | None) -> int:
        """How many of the last epochs are uniform."""
        if self.final_uniform_epochs is not None:
            return self.final_uniform_epochs
        if self.name == "prune" and max_epochs:
            return max_epochs // 8
        return 0

    def first_prioritized_epoch(self, scored: bool = False) -> int:
        """The first epoch that may be prioritized: after the initial uniform epochs, not epoch 0 unless ``scored``.

        Example:
            >>> s = SamplingStrategy("rank")
            >>> s.first_prioritized_epoch(), s.first_prioritized_epoch(scored=True)
            (1, 0)
        """
        return self.initial_uniform_epochs or (0 if scored else 1)

    def annealed(self) -> list[str]:
        """What this strategy anneals over ``max_epochs``, in words (empty: nothing).

        Example:
            >>> SamplingStrategy("proportional", beta=0.4, beta_final=1.0).annealed()
            ['beta from 0.4 to 1.0']
        """
        if not self.with_replacement:
            return []
        return [
            f"{key} from {getattr(self, key)} to {getattr(self, key + '_final')}"
            for key in ("alpha", "beta", "uniform_mix")
            if getattr(self, key + "_final") not in (None, getattr(self, key))
        ]

    def scheduled(self, epoch: int, max_epochs: int | None) -> tuple[float, float, float]:
        """``(alpha, beta, uniform_mix)`` at ``epoch``, moving linearly to the ``*_final`` values.

        The schedule spans the prioritized epochs: the first after the ``initial_uniform_epochs`` (at least epoch 1:
        epoch 0 has no scores yet) uses the start values and the last before the ``final_uniform_epochs`` uses the
        ``*_final`` values (with a single prioritized epoch, the final ones). Without ``max_epochs`` the start values
        hold throughout.

        Example:
            >>> s = SamplingStrategy("proportional", beta=0.4, beta_final=1.0)
            >>> [round(s.scheduled(epoch, 5)[1], 2) for epoch in range(1, 5)]
            [0.4, 0.6, 0.8, 1.0]
        """
        progress = 0.0
        if max_epochs is not None and max_epochs > 0:
            first, last = self.first_prioritized_epoch(), max_epochs - self.uniform_epochs_at_end(max_epochs) - 1
            progress = min(1.0, max(0.0, (epoch - first) / (last - first))) if last > first else 1.0

        def at(start: float, final: float | None) -> float:
            return start if final is None else start + (final - start) * progress

        return (
            at(self.alpha, self.alpha_final),
            at(self.beta, self.beta_final),
            at(self.uniform_mix, self.uniform_mix_final),
        )


@dataclass
class SamplingPlan:
    """One epoch's plan: either a shuffled pass over ``order`` or ``num_draws`` draws from ``cdf``.

    Attributes:
        order: int64 indices visited in this order (without replacement), or ``None`` for a draw.
        cdf: float64 cumulative priorities for draws with replacement, or ``None``.
        num_draws: number of draws (global, before sharding).
        beta: importance-weight exponent of the draws.
        max_weight: divisor of the weights (``None``: no normalisation).
        below: for ``prune``, a mask of the below-threshold samples (weighted ``below_weight``), else ``None``.
        below_weight: ``1 / (1 - r)``.
        stats: numbers logged under ``per/``: ``ess`` (Kish's effective sample size over ``N``), ``max_weight``,
            ``top10_mass`` (the share of the epoch's draws expected on the samples scoring at or above the scores'
            90th percentile; 0.1 when uniform), and ``alpha``, ``beta`` or ``pruned_fraction``, ``prune_threshold``.
    """

    order: Tensor | None
    cdf: Tensor | None
    num_draws: int
    beta: float = 1.0
    max_weight: float | None = None
    below: Tensor | None = None
    below_weight: float = 1.0
    stats: dict[str, float] | None = None

    @property
    def weighted(self) -> bool:
        """Whether samples carry weights other than 1."""
        return self.cdf is not None or (self.below is not None and self.below_weight != 1.0)

    def weights(self, index: Tensor) -> Tensor:
        """Importance weights of the samples at ``index`` (float64)."""
        if self.cdf is not None:
            cdf = self.cdf
            p = (cdf[index] - torch.where(index > 0, cdf[(index - 1).clamp_(min=0)], 0.0)) / cdf[-1]
            return PF.importance_weights(p, cdf.numel(), self.beta, self.max_weight)
        if self.below is not None:
            return torch.where(self.below[index], self.below_weight, 1.0).to(torch.float64)
        return torch.ones(index.shape, dtype=torch.float64)


def _uniform_plan(n: int, generator: torch.Generator) -> SamplingPlan:
    return SamplingPlan(
        order=torch.randperm(n, generator=generator),
        cdf=None,
        num_draws=n,
        stats={"ess": 1.0, "max_weight": 1.0, "top10_mass": 0.1},
    )


def build_plan(
    scores: Tensor | None,
    strategy: SamplingStrategy,
    epoch: int,
    max_epochs: int | None,
    generator: torch.Generator,
    dataset_size: int,
) -> SamplingPlan:
    """Build the plan of ``epoch`` from the score table (NaN = never scored).

    Args:
        scores: float32 scores, one per sample, NaN for unseen; ``None`` or all-NaN gives a uniform pass.
        strategy: the strategy.
        epoch: the epoch the plan is for (drives annealing).
        max_epochs: the Trainer's ``max_epochs`` (``None`` or -1: no annealing, no final uniform epochs).
        generator: seeded generator; the plan consumes it deterministically.
        dataset_size: the number of training samples (``strategy.num_samples`` is the number of draws).
    """
    if max_epochs is not None and max_epochs < 0:
        max_epochs = None
    final = strategy.uniform_epochs_at_end(max_epochs)
    in_final = max_epochs is not None and epoch >= max_epochs - final
    uniform = strategy.name == "uniform" or epoch < strategy.initial_uniform_epochs or in_final
    if uniform or scores is None or bool(torch.isnan(scores).all()):
        return _uniform_plan(dataset_size, generator)
    alpha, beta, lam = strategy.scheduled(epoch, max_epochs)
    filled = PF.fill_unseen(scores)
    # the highest-scored tenth (more with ties), for `top10_mass`; its own generator leaves the plan's draws as they are
    top_threshold = PF.sampled_quantile(filled, 0.9, torch.Generator().manual_seed(0))
    if strategy.name == "prune":
        return _prune_plan(filled, filled >= top_threshold, strategy, generator)
    if strategy.name == "proportional":
        priorities = PF.proportional_priorities(filled, alpha, strategy.eps)
    else:
        priorities = PF.rank_priorities(filled, alpha)
    del filled
    # in place from here on: the plan holds one float64 per sample at its peak (8 bytes, then the CDF); no other
    # sample-sized tensor is alive with it (`smallest_and_top_mass` reads in chunks): the peak stays near 8 bytes each
    p = PF.mix_uniform(PF.to_probabilities(priorities, inplace=True), lam, inplace=True)
    del priorities
    n = p.numel()
    min_p, top_mass = PF.smallest_and_top_mass(p, scores, top_threshold)
    ess = PF.effective_sample_size(p)
    largest = float(torch.tensor(n * min_p, dtype=torch.float64).pow(-beta))  # inf, not OverflowError, if huge
    max_weight = largest if strategy.normalize_weights and math.isfinite(largest) else None
    cdf = p.cumsum_(0)
    return SamplingPlan(
        order=None,
        cdf=cdf,
        num_draws=strategy.num_samples or n,
        beta=beta,
        max_weight=max_weight,
        stats={
            "ess": ess,
            "max_weight": largest / (max_weight or 1.0),
            "top10_mass": top_mass,
            "alpha": alpha,
            "beta": beta,
        },
    )


def _prune_plan(scores: Tensor, top: Tensor, strategy: SamplingStrategy, generator: torch.Generator) -> SamplingPlan:
    if strategy.prune_quantile is None:
        threshold = float(scores.double().mean())
    else:
        threshold = PF.sampled_quantile(scores, strategy.prune_quantile, generator)
    uniforms = torch.rand(scores.numel(), generator=generator)
    keep, below = PF.prune_keep_mask(scores, strategy.prune_ratio, threshold, uniforms)
    del uniforms
    top_mass = float((keep & top).sum()) / max(1, int(keep.sum()))
    kept = keep.nonzero().squeeze(1)
    del keep
    order = kept[torch.randperm(kept.numel(), generator=generator)]
    r = strategy.prune_ratio
    below_weight = 1.0 / (1.0 - r) if r < 1.0 else 1.0
    n = scores.numel()
    return SamplingPlan(
        order=order,
        cdf=None,
        num_draws=order.numel(),
        below=below,
        below_weight=below_weight,
        stats={
            "ess": order.numel() / n,
            "max_weight": below_weight,
            "top10_mass": top_mass,
            "pruned_fraction": 1.0 - order.numel() / n,
            "prune_threshold": threshold,
        },
    )


def as_strategy(strategy: Any) -> SamplingStrategy:
    """A ``SamplingStrategy`` from what the constructor accepts (a strategy, a name, a dict, ``None``)."""
    if strategy is None:
        return SamplingStrategy("uniform")
    if isinstance(strategy, SamplingStrategy):
        return strategy
    if isinstance(strategy, str):
        return SamplingStrategy(name=strategy)  # type: ignore[arg-type]  # checked there
    if isinstance(strategy, Mapping):
        fields = [f.name for f in dataclasses.fields(SamplingStrategy)]
        unknown = sorted(str(k) for k in strategy if k not in fields)
        if unknown:
            raise TypeError(f"`strategy` has the unknown key(s) {unknown}; SamplingStrategy takes {', '.join(fields)}.")
        return SamplingStrategy(**strategy)
    raise TypeError(
        "`strategy` must be a SamplingStrategy, a strategy name ('uniform', 'proportional', 'rank', 'prune'), a dict "
        f"of SamplingStrategy arguments or None; got {type(strategy).__name__}."
    )
