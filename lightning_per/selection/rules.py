"""Selection rules: which points of a scored presample a step trains on, and with which weights.

A rule is a small object with ``choose(scores, b, generator)``; the engine (``OnlineSelection``) scores the presample
and hands the scores over. Rules hold only their own state (Selective Backprop's score history) and know nothing of
Lightning except ``synchronise``, which the engine calls on every process on the same steps. Write your own by
implementing ``SelectionRule`` and pass it to ``OnlineSelection(rule=...)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lightning_per import functional as PF
from lightning_per._checks import check_int, check_number
from lightning_per.plumbing.distributed import all_gather_variable

__all__ = ["Choice", "ImportanceDraw", "PercentileKeep", "SelectionRule", "TopK"]


class Choice(NamedTuple):
    """What a rule picked: positions in the presample (repeats allowed), their weights, and per-step statistics.

    Attributes:
        positions: int64 positions in ``[0, B)``.
        weights: float32 weight of each position (1 for a biased rule; ``1 / (B p)`` for importance sampling).
        stats: figures of this step, averaged over the selection steps and logged as ``per/<name>``.
    """

    positions: Tensor
    weights: Tensor
    stats: dict[str, float]


class SelectionRule(Protocol):
    """Chooses a step's training points from the scores of its presample."""

    def choose(self, scores: Tensor, b: int, generator: torch.Generator) -> Choice | None:
        """The points to train on (about ``b``); ``None``: train on the incoming batch as it is."""
        ...

    def synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Bring state the processes share up to date (every process calls this on the same steps)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only; no collective."""
        ...

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """Restore ``state_dict`` on process ``rank``."""
        ...


class TopK:
    """The ``b`` highest scores, weight 1 (RHO-LOSS with the ``reducible`` score); ties go to the earlier point.

    Example:
        >>> TopK().choose(torch.tensor([0.1, 0.9, 0.5]), 2, torch.Generator()).positions.tolist()
        [1, 2]
    """

    def choose(self, scores: Tensor, b: int, generator: torch.Generator) -> Choice | None:
        """The positions of the ``b`` highest finite scores (fewer if fewer are finite)."""
        positions = PF.top_k_positions(scores, b)
        if positions.numel() == 0:
            return None
        return Choice(positions, torch.ones(positions.numel()), {})

    def synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing is shared."""

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """No state."""


class PercentileKeep:
    """Selective Backprop's rule: keep each point with probability ``F(score) ** selectivity``, weight 1.

    ``F`` is the percentile of a score among the last ``history`` finite scores this process saw (Jiang et al. 2019).
    At least the highest-scoring point is kept.

    Args:
        selectivity: ``beta`` in Jiang et al., > 0: 1 keeps about half of the points, 3 a quarter.
        history: how many recent scores ``F`` is computed over (>= 1).

    Raises:
        ValueError: ``selectivity <= 0`` or ``history < 1``.

    Example:
        >>> rule = PercentileKeep(selectivity=1.0, history=8)
        >>> choice = rule.choose(torch.arange(8.0), 4, torch.Generator().manual_seed(0))
        >>> 1 <= choice.positions.numel() <= 8
        True
    """

    def __init__(self, selectivity: float = 1.0, history: int = 1024) -> None:
        check_number("selectivity", selectivity, 0.0, low_open=True, hint="1 keeps about half of the points.")
        check_int("history", history, 1)
        self.selectivity = selectivity
        self.history = history
        self._history = torch.empty(0)  # this process's recent finite scores, oldest first
        self._histories: list[Tensor] = []  # every process's, as of the last synchronisation
        self._rank = 0

    def choose(self, scores: Tensor, b: int, generator: torch.Generator) -> Choice | None:
        """The kept points (at least one), or ``None`` without a finite score."""
        values = scores.detach().reshape(-1).float().cpu()
        finite = values[torch.isfinite(values)]
        if finite.numel() == 0:
            return None
        self._history = torch.cat([self._history, finite])[-self.history :]
        draws = torch.rand(values.numel(), generator=generator, device=generator.device).cpu()
        positions = PF.percentile_keep(values, self._history, self.selectivity, draws).nonzero().squeeze(1)
        if positions.numel() == 0:  # keep at least the point of highest score
            positions = PF.top_k_positions(values, 1)
        return Choice(positions, torch.ones(positions.numel()), {"kept_fraction": positions.numel() / values.numel()})

    def synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Gather every process's history, so that a checkpoint holds them all (no collective at save time)."""
        self._rank = trainer.global_rank
        world = trainer.world_size
        if world <= 1:
            return
        device = pl_module.device
        sizes = all_gather_variable(torch.tensor([self._history.numel()], device=device), world).tolist()
        values = all_gather_variable(self._history.to(device), world).cpu()
        self._histories = list(values.split(sizes))

    def state_dict(self) -> dict[str, Any]:
        """Every process's history: this process's as it is, the others' as of the last synchronisation."""
        histories = list(self._histories) or [self._history]
        histories[self._rank if len(histories) > self._rank else 0] = self._history.clone()
        return {"histories": histories}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """This process's history back (process 0's on a process the checkpoint did not have)."""
        histories = state.get("histories") or [torch.empty(0)]
        self._rank = rank
        self._history = histories[rank] if rank < len(histories) else histories[0]
        self._histories = list(histories)


class ImportanceDraw:
    """Importance sampling: ``b`` draws with replacement, ``p ∝ score``, weights ``1 / (B p)`` (unbiased).

    Scores must be non-negative (the engine's switch refuses negative ones first).

    Example:
        >>> choice = ImportanceDraw().choose(torch.tensor([1.0, 3.0]), 4, torch.Generator().manual_seed(0))
        >>> choice.positions.tolist(), round(choice.weights[0].item(), 4), choice.stats  # weight 1 / (2 * 0.75)
        ([1, 1, 1, 1], 0.6667, {'max_p': 0.75, 'unique_fraction': 0.25})
    """

    def choose(self, scores: Tensor, b: int, generator: torch.Generator) -> Choice | None:
        """``b`` draws and their weights, or ``None`` when no score is finite and positive."""
        drawn = PF.draw_importance_sample(scores, b, generator)
        if drawn is None:
            return None
        positions, weights, p = drawn
        hit = torch.zeros(p.numel(), device=positions.device).index_fill_(0, positions, 1.0)
        unique = float(hit.sum()) / positions.numel()  # how many distinct points the b draws hit
        return Choice(positions, weights, {"max_p": float(p.max()), "unique_fraction": unique})

    def synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Nothing is shared."""

    def state_dict(self) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """No state."""
