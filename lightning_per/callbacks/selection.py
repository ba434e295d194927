"""Biased online batch selection: the top-k rule (RHO-LOSS) and Selective Backprop, on the presample engine."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

from lightning_per import functional as PF
from lightning_per._checks import check_int, check_number
from lightning_per.distributed import all_gather_variable
from lightning_per.selection.engine import OnlineSelection, ScoreArg

__all__ = ["SelectiveBackprop", "TopKSelection"]


class TopKSelection(OnlineSelection):
    """Trains each step on the ``b`` highest-scored points of a presample of ``B = presample * b``: RHO-LOSS.

    With the default ``score="reducible"`` (the loss minus the irreducible loss of an ``IrreducibleLoss`` callback)
    this is Mindermann et al.'s reducible holdout loss selection (ICML 2022, ``presample=10``). Every step after
    ``warmup_steps`` scores the presample without gradients and trains on its top ``b`` points with weights 1, so
    the gradient is biased toward them by design; ties go to the earlier point, non-finite scores are never chosen.
    The DataModule must serve uniform batches.

    Args:
        presample: ``B / b``, an integer > 1: the share selected is ``1 / presample``.
        score: the score ranked (a name, a ``Score`` or ``fn(outputs, batch)``); ``loss`` gives top-k by plain loss
            (which chases noisy labels).
        warmup_steps: train on the incoming batches, without selection, before this global step.
        seed: seed of the extra presample points.

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, manual optimization, or ``score='reducible'``
            without an ``IrreducibleLoss`` callback.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> from lightning_per import IrreducibleLoss
        >>> from lightning_per.examples import Classifier
        >>> callbacks = [IrreducibleLoss(model=Classifier(in_features=4)), TopKSelection(presample=10)]
        >>> callbacks[1].presample, callbacks[1].score
        (10, 'reducible')
    """

    def __init__(
        self, presample: int = 10, score: ScoreArg = "reducible", warmup_steps: int = 0, seed: int = 0
    ) -> None:
        super().__init__(presample, score, warmup_steps, seed)

    def _choose(self, scores: Tensor, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        positions = PF.top_k_positions(scores, b)
        if positions.numel() == 0:
            return None
        return positions, torch.ones(positions.numel())


class SelectiveBackprop(OnlineSelection):
    """Keeps each presample point with probability ``F(score)^selectivity`` and trains on the kept ones.

    Selective Backprop (Jiang et al. 2019): ``F`` is the percentile of a point's score (by default its loss) among
    the last ``history`` scores this process saw, so high-loss points are kept and low-loss ones mostly skipped.
    About ``B / (selectivity + 1)`` of a presample of ``B = presample * b`` points are kept (at least one), so
    ``presample = selectivity + 1`` trains about ``b`` points per step. Weights are 1: the gradient is biased toward
    high-loss points by design. Each step trains on its own kept points (the loader's epochs and step count stay as
    they are). The DataModule must serve uniform batches.

    Args:
        selectivity: ``beta`` in Jiang et al., > 0: 1 keeps about half of the points, 3 a quarter.
        presample: ``B / b``, an integer > 1.
        history: how many recent scores ``F`` is computed over (>= 1; the paper uses 1024 to 10,000).
        score: the score (a name, a ``Score`` or ``fn(outputs, batch)``).
        warmup_steps: train on the incoming batches, without selection, before this global step.
        seed: seed of the extra presample points and of the keep decisions.

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, manual optimization, or ``score='reducible'``
            without an ``IrreducibleLoss`` callback.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> sb = SelectiveBackprop(selectivity=1.0, presample=2)
        >>> sb.selectivity, sb.history
        (1.0, 1024)
    """

    def __init__(
        self,
        selectivity: float = 1.0,
        presample: int = 2,
        history: int = 1024,
        score: ScoreArg = "loss",
        warmup_steps: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(presample, score, warmup_steps, seed)
        check_number("selectivity", selectivity, 0.0, low_open=True, hint="1 keeps about half of the points.")
        check_int("history", history, 1)
        self.selectivity = selectivity
        self.history = history
        self._history = torch.empty(0)  # this process's recent finite scores, oldest first
        self._histories: list[Tensor] = []  # every process's, as of the last synchronisation

    _prog_bar = ("per/kept_fraction",)

    def _choose(self, scores: Tensor, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        values = scores.detach().reshape(-1).float().cpu()
        finite = values[torch.isfinite(values)]
        if finite.numel() == 0:
            return None
        self._history = torch.cat([self._history, finite])[-self.history :]
        keep = PF.percentile_keep(
            values, self._history, self.selectivity, torch.rand(values.numel(), generator=generator)
        )
        positions = keep.nonzero().squeeze(1)
        if positions.numel() == 0:  # keep at least the point of highest score
            positions = PF.top_k_positions(values, 1)
        self._step_stats["kept_fraction"] = positions.numel() / values.numel()
        return positions, torch.ones(positions.numel())

    def _synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        world = trainer.world_size
        if world <= 1:
            return
        # every process's history, for checkpoints that hold every process's state (no collective at save time)
        device = pl_module.device
        sizes = all_gather_variable(torch.tensor([self._history.numel()], device=device), world).tolist()
        values = all_gather_variable(self._history.to(device), world).cpu()
        self._histories = list(values.split(sizes))

    @override
    def state_dict(self) -> dict[str, Any]:
        histories = list(self._histories) or [self._history]
        histories[self._rank() if len(histories) > self._rank() else 0] = self._history.clone()
        return {**super().state_dict(), "histories": histories}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        histories = state_dict.get("histories") or [torch.empty(0)]
        rank = self._rank()
        self._history = histories[rank] if rank < len(histories) else histories[0]
        self._histories = list(histories)
