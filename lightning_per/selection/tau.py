"""tau: the moving average of the variance-reduction estimate that switches importance sampling on and off."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lightning_per import functional as PF
from lightning_per.score import Captured, Scorer

__all__ = ["TauEstimate"]

# what a step leaves for the next update: its tau_step (an importance step), None (a skipped step), or what its
# scores need (a uniform step, scored from its training forward pass)
Pending = float | None | Captured


class TauEstimate:
    """``tau <- a_tau * tau + (1 - a_tau) * tau_step``, from 0, over the steps in order; the same on every process.

    Steps are added as they end and folded in at an ``update``, which every process makes on the same steps:
    under DDP each step's ``tau_step`` is averaged over the processes that scored it, in one all-reduce for all the
    steps since the last update, so the values are exactly those of a per-step update.

    Args:
        a_tau: weight of the old value, in [0, 1).
        rooted: ``tau_step = (1 - ||g - u||^2 / ||g||^2) ** -1/2`` (else without the root: ``n * sum(g^2)``).
        owner: the callback, named in error messages.
    """

    def __init__(self, a_tau: float, rooted: bool, owner: str) -> None:
        self.a_tau = a_tau
        self.rooted = rooted
        self.owner = owner
        self.value = 0.0
        self.peak = 0.0  # of the moving average
        self.step_peak = 0.0  # of a single step's estimate
        self.nonfinite_steps = 0  # steps folded in whose scores were all NaN or inf (their estimate is 1)
        self.pending: list[Pending] = []

    def update(self, trainer: Trainer, pl_module: LightningModule, scorer: Scorer) -> None:
        """Fold the pending steps into ``tau``, in order; a negative score stops every process.

        Raises:
            ValueError: a score is negative (on this or another process).
        """
        taus, lowest = self.step_taus(self.pending, scorer)
        taus, negative_elsewhere = _world_average(trainer, pl_module, taus, lowest < 0)
        self._check(lowest, negative_elsewhere)  # on every process alike: none waits in a collective
        self.pending = []
        for tau_step in taus:
            if tau_step is not None:  # None: a skipped step, which leaves tau as it is
                self.value = PF.tau_ema(self.value, tau_step, self.a_tau)
                self.peak = max(self.peak, self.value)
                self.step_peak = max(self.step_peak, tau_step)

    def step_taus(self, entries: list[Pending], scorer: Scorer) -> tuple[list[float | None], float]:
        """``tau_step`` of each entry and the lowest finite score among them (``inf`` if none); one host transfer."""
        taus: list[float | None] = [e if e is None or isinstance(e, float) else None for e in entries]
        positions = [j for j, e in enumerate(entries) if isinstance(e, (Tensor, tuple))]
        parts: list[Captured] = [e for e in entries if isinstance(e, (Tensor, tuple))]
        lowest = math.inf
        if not parts:
            return taus, lowest
        scores = scorer.resolve_many(parts).double()
        sizes = [p.numel() if isinstance(p, Tensor) else p[0].shape[0] for p in parts]
        if len(set(sizes)) == 1:  # full batches: one reduction for all the steps
            rows = scores.view(len(sizes), sizes[0])
            sums = torch.stack([rows.sum(1), (rows * rows).sum(1), rows.amin(1)], 1).tolist()
        else:
            sums = torch.stack([torch.stack([s.sum(), s.dot(s), s.min()]) for s in scores.split(sizes)]).tolist()
        offsets = np.cumsum([0, *sizes[:-1]]).tolist()
        for j, start, count, (total, squares, low) in zip(positions, offsets, sizes, sums, strict=True):
            if not (math.isfinite(total) and math.isfinite(squares)):  # non-finite points do not count
                s = scores[start : start + count]
                finite = torch.isfinite(s)
                low_finite = torch.where(finite, s, math.inf).min()
                s = torch.where(finite, s, 0.0)
                total, squares, count, low = torch.stack([s.sum(), s.dot(s), finite.sum(), low_finite]).tolist()
                self.nonfinite_steps += count == 0
            lowest = min(lowest, low)
            # no finite positive score: no information, the uniform value 1
            taus[j] = PF.tau_from_sums(total, squares, count, self.rooted) if total > 0 else 1.0
        return taus, lowest

    def _check(self, lowest: float, elsewhere: bool = False) -> None:
        if lowest < 0 or elsewhere:
            where = f"({lowest:.4g})" if lowest < 0 else "on another process"
            raise ValueError(
                f"{self.owner} got a negative score {where}: scores must be non-negative, as the importance "
                "distribution is proportional to them. Return a non-negative per-sample loss (e.g. cross-entropy, "
                "not a log-likelihood), or use the gradient-norm bound (`score='grad_norm'`)."
            )

    def state_dict(self, scorer: Scorer) -> dict[str, Any]:
        """``tau``, its peaks and the pending steps' own ``tau_step`` values (no collective, no change of state)."""
        taus, _ = self.step_taus(self.pending, scorer)
        return {"tau": self.value, "tau_peak": self.peak, "step_peak": self.step_peak, "pending_taus": list(taus)}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """Restore; process 0 alone brings the saved steps to the next update (the others skipped them)."""
        self.value = float(state.get("tau", 0.0))
        self.peak = float(state.get("tau_peak", self.value))
        self.step_peak = float(state.get("step_peak", 0.0))
        pending: list[Pending] = [None if t is None else float(t) for t in state.get("pending_taus", [])]
        self.pending = pending if rank == 0 else [None] * len(pending)


def _world_average(
    trainer: Trainer, pl_module: LightningModule, taus: list[float | None], negative: bool
) -> tuple[list[float | None], bool]:
    """Each step's ``tau_step`` averaged over the processes that scored it, and whether another saw a negative score.

    One all-reduce (nothing with one process); ``negative``: this process saw a negative score.
    """
    if trainer.world_size <= 1:
        return taus, False
    known = [t is not None for t in taus]
    values = [t if t is not None else 0.0 for t in taus]
    local = torch.tensor([[*values, float(negative)], [*known, 0.0]], dtype=torch.float64, device=pl_module.device)
    sums, counts = trainer.strategy.reduce(local, reduce_op="sum").tolist()
    averaged = [s / c if c else None for s, c in zip(sums[:-1], counts[:-1], strict=True)]
    return averaged, sums[-1] > float(negative)
