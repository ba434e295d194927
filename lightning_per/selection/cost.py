"""What online selection costs, in forward-sample units and seconds, for the summary and the loggers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

__all__ = ["SelectionCost", "summarise"]


@dataclass
class SelectionCost:
    """Points scored without gradients, points trained on and the host's seconds spent selecting, over one run.

    Compute is counted in forward-sample units: a no-grad forward of one point costs 1, a forward and backward 3.
    So a run's training costs ``3 * trained`` and its selection ``scored``; a helper model trained beforehand
    (``IrreducibleLoss``) is reported next to them.

    Example:
        >>> cost = SelectionCost(scored=300, trained=100, seconds=0.5)
        >>> cost.metrics()["per/scoring_units"], cost.describe()
        (300.0, 'scoring cost 300 forward-sample units (1x the 300 of training) and 0.50 s')
    """

    scored: int = 0
    trained: int = 0
    seconds: float = 0.0

    def metrics(self) -> dict[str, float]:
        """The run's totals so far, as logged: ``per/scoring_units``, ``per/scoring_seconds``."""
        return {"per/scoring_units": float(self.scored), "per/scoring_seconds": self.seconds}

    def describe(self, auxiliary_units: float = 0.0) -> str:
        """The totals in words, with the share of the training's own compute."""
        training = 3 * self.trained
        share = f"{self.scored / training:.2g}x the {training:,} of training" if training else "no training step"
        text = f"scoring cost {self.scored:,} forward-sample units ({share}) and {self.seconds:.2f} s"
        if auxiliary_units:
            text += f", after IrreducibleLoss's {auxiliary_units:,.0f} units before training"
        return text

    def state_dict(self) -> dict[str, Any]:
        """Plain values only."""
        return {"scored": self.scored, "trained": self.trained, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict``'s values (a resumed run counts on)."""
        self.scored = int(state.get("scored", 0))
        self.trained = int(state.get("trained", 0))
        self.seconds = float(state.get("seconds", 0.0))


def summarise(name: str, steps: int, selected: int, said: str | None, wording: tuple[str, str], cost: str) -> None:
    """Say once, at the end of training, how many steps selected (a warning when none did), why, and the cost.

    Args:
        name: the callback.
        steps: the run's training steps.
        selected: how many of them selected.
        said: what the switch adds (why none selected, how high ``tau`` got), or ``None``.
        wording: how to say that some steps selected, and that none did.
        cost: ``SelectionCost.describe``'s words.
    """
    some, none = wording
    if not selected:
        why = f": {said}" if said else ""
        rank_zero_warn(f"{name}: none of the {steps} training steps {none}{why}. This run was plain uniform training.")
        return
    told = f"{said}; " if said else ""
    rank_zero_info(f"{name}: {selected} of {steps} training steps ({selected / steps:.0%}) {some}; {told}{cost}.")
