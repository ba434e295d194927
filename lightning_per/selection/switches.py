"""Switches: which training steps select from a presample, and which train on the incoming batch as it is.

``AfterWarmup`` selects from ``warmup_steps`` on (top-k, Selective Backprop). ``TauSwitch`` selects while the moving
average ``tau`` of the variance-reduction estimate exceeds ``tau_th`` (Katharopoulos & Fleuret's switch for
importance sampling). The engine tells a switch what each step did and asks it before each step; every process
calls ``synchronise`` on the same steps, so all processes switch together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor

from lightning_per._checks import check_int
from lightning_per.score import Scorer
from lightning_per.selection.calibration import CostCalibration
from lightning_per.selection.tau import TauEstimate

__all__ = ["AfterWarmup", "Switch", "TauSwitch"]


class Switch(Protocol):
    """Decides, before each training step, whether it selects from a presample."""

    def selects(self, trainer: Trainer) -> bool:
        """Whether the coming step selects."""
        ...

    def observe(self, outputs: Any, batch: Any, presample_scores: Tensor | None, scorer: Scorer) -> None:
        """What a finished step did: its outputs and batch, and its presample's scores if it selected."""
        ...

    def due(self) -> bool:
        """Whether the engine should synchronise after this step (besides its own synchronisation points)."""
        ...

    def starts_step(self, device: torch.device) -> None:
        """Called before every step (a switch that times steps starts its clock)."""
        ...

    def ends_step(self, device: torch.device, selected: bool) -> None:
        """Called after every step, with whether it selected."""
        ...

    def synchronise(self, trainer: Trainer, pl_module: LightningModule, scorer: Scorer) -> None:
        """Bring shared state up to date and decide; every process calls this on the same steps."""
        ...

    def metrics(self) -> dict[str, float]:
        """Figures for the loggers (``per/...``)."""
        ...

    def summary(self, steps: int, selected: int) -> str | None:
        """Why no step selected, for the end-of-training warning (``None``: nothing to add)."""
        ...

    def state_dict(self, scorer: Scorer) -> dict[str, Any]:
        """Tensors and plain values only; no collective."""
        ...

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """Restore ``state_dict`` on process ``rank``."""
        ...


class AfterWarmup:
    """Every step from global step ``warmup_steps`` on selects.

    Args:
        warmup_steps: train on the incoming batches, without selection, before this global step (>= 0).

    Raises:
        ValueError: ``warmup_steps < 0``.
    """

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup_steps = check_int("warmup_steps", warmup_steps, 0)

    def selects(self, trainer: Trainer) -> bool:
        """From ``warmup_steps`` on."""
        return trainer.global_step >= self.warmup_steps

    def observe(self, outputs: Any, batch: Any, presample_scores: Tensor | None, scorer: Scorer) -> None:
        """Nothing to record."""

    def due(self) -> bool:
        """Never by itself."""
        return False

    def starts_step(self, device: torch.device) -> None:
        """No clock."""

    def ends_step(self, device: torch.device, selected: bool) -> None:
        """No clock."""

    def synchronise(self, trainer: Trainer, pl_module: LightningModule, scorer: Scorer) -> None:
        """Nothing is shared."""

    def metrics(self) -> dict[str, float]:
        """None."""
        return {}

    def summary(self, steps: int, selected: int) -> str | None:
        """The warmup, if it covered the run."""
        return f"`warmup_steps={self.warmup_steps}` covered the run" if self.warmup_steps >= steps else None

    def state_dict(self, scorer: Scorer) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """No state."""


class TauSwitch:
    """Selects while ``tau > tau_th`` and the global step is past ``warmup_steps``.

    A selecting step adds its presample's ``tau_step``; a uniform step adds the one of its own training batch,
    scored at the next update (no extra pass). ``tau`` is brought up to date every ``every_n_steps`` steps and at the
    engine's synchronisation points, averaged over the processes, so all of them switch on the same step. With a
    ``calibration``, the first steps of a fit measure what an importance step costs in uniform steps on this device,
    and that ratio becomes ``tau_th``.

    Args:
        tau_th: the threshold (> 0), until a calibration replaces it.
        a_tau: weight of the old value in the moving average, in [0, 1).
        rooted: the rooted ``tau_step`` (the reference code's) or the unrooted one (the paper's, ``n * sum(g^2)``).
        every_n_steps: steps between updates (>= 1).
        warmup_steps: no selection before this global step.
        owner: the callback, named in error messages.
        calibration: measures the cost ratio at the start of a fit that has none yet (``tau_th="auto"``).
    """

    def __init__(
        self,
        tau_th: float,
        a_tau: float,
        rooted: bool,
        every_n_steps: int,
        warmup_steps: int,
        owner: str,
        calibration: CostCalibration | None = None,
    ) -> None:
        self.tau_th = tau_th
        self.a_tau = a_tau
        self.every_n_steps = every_n_steps
        self.warmup_steps = warmup_steps
        self.estimate = TauEstimate(a_tau, rooted, owner)
        self.calibration = calibration
        self.active = False

    def start(self) -> None:
        """A new fit: the peaks count from here (a resumed run restores them afterwards); calibrate if never done."""
        self.estimate.peak, self.estimate.step_peak = self.estimate.value, 0.0
        if self.calibration is not None and self.calibration.ratio is None and not self.calibration.running:
            self.calibration.begin()

    def selects(self, trainer: Trainer) -> bool:
        """Whether importance sampling is on for the coming step (forced in a calibration's importance phase)."""
        if self.calibration is not None and self.calibration.running:
            return self.calibration.forces_selection()
        return self.active

    def starts_step(self, device: torch.device) -> None:
        """Start a calibration step's clock."""
        if self.calibration is not None:
            self.calibration.starts_step(device)

    def ends_step(self, device: torch.device, selected: bool) -> None:
        """Stop a calibration step's clock."""
        if self.calibration is not None:
            self.calibration.ends_step(device, selected)

    def observe(self, outputs: Any, batch: Any, presample_scores: Tensor | None, scorer: Scorer) -> None:
        """Add the step's ``tau_step`` (a selecting step's, now; a uniform step's, at the next update)."""
        pending = self.estimate.pending
        if presample_scores is not None:  # an importance step: the presample's scores, folded in at the update
            pending.append(presample_scores.detach())
        elif outputs is None or (isinstance(outputs, Mapping) and not outputs):
            pending.append(None)  # a skipped step leaves tau as it is
        else:  # a uniform step: checked now, scored at the next update
            pending.append(scorer.capture(outputs, batch))

    def due(self) -> bool:
        """After ``every_n_steps`` steps since the last update, or when a calibration has measured both phases."""
        return len(self.estimate.pending) >= self.every_n_steps or (
            self.calibration is not None and self.calibration.due()
        )

    def synchronise(self, trainer: Trainer, pl_module: LightningModule, scorer: Scorer) -> None:
        """Fold the pending steps into ``tau`` (all processes alike), finish a calibration, and decide the phase."""
        self.estimate.update(trainer, pl_module, scorer)
        if self.calibration is not None and self.calibration.due():
            self.tau_th = self.calibration.finish(trainer, pl_module)
        self.active = self.estimate.value > self.tau_th and trainer.global_step >= self.warmup_steps

    def metrics(self) -> dict[str, float]:
        """``per/tau``, ``per/tau_th`` and, once measured, ``per/cost_ratio``."""
        metrics = {"per/tau": self.estimate.value, "per/tau_th": self.tau_th}
        if self.calibration is not None and self.calibration.ratio is not None:
            metrics["per/cost_ratio"] = self.calibration.ratio
        return metrics

    def summary(self, steps: int, selected: int) -> str | None:
        """How high ``tau`` got against ``tau_th`` and, when no step selected, why."""
        tau = self.estimate
        against = (
            f"tau peaked at {tau.peak:.3g} (one step's estimate at {tau.step_peak:.3g}) against "
            f"`tau_th={self.tau_th:.3g}`"
        )
        if self.calibration is not None and self.calibration.ratio is not None:
            against += f" (measured: an importance step cost {self.calibration.ratio:.3g} uniform steps here)"
        if selected:
            return against
        settle = round(3 / (1 - self.a_tau))  # steps for the average to reach 95% of a constant estimate
        if self.warmup_steps >= steps and tau.peak > self.tau_th:
            why = f"`warmup_steps={self.warmup_steps}` covered the whole run"
        elif tau.nonfinite_steps:
            why = (
                f"{tau.nonfinite_steps} steps scored only NaN or inf (NaN or inf outputs, e.g. a diverged model), "
                "and such a step counts as uniform (estimate 1)"
            )
        elif tau.step_peak > self.tau_th and steps < settle:
            why = (
                f"single steps' estimates passed it but their moving average, which starts from 0 and takes about "
                f"{settle} steps to settle at `a_tau={self.a_tau}`, did not: a longer run, or a smaller `a_tau`, lets "
                "it catch up"
            )
        elif tau.step_peak > self.tau_th:
            why = (
                "only occasional steps' estimates passed it and their moving average never did: the presample's "
                "scores are rarely uneven enough for importance sampling to pay at this threshold"
            )
        else:
            why = "no step's estimate reached it: the presample's scores were too alike for importance sampling to pay"
        return (
            f"{against}; {why}. A lower `tau_th` (by default the cost ratio (B + 3b) / 3b of an importance step) "
            "switches importance sampling on anyway"
        )

    def state_dict(self, scorer: Scorer) -> dict[str, Any]:
        """``tau``, its peaks, the pending steps' own ``tau_step`` values, the phase, the threshold, the calibration."""
        calibration = {} if self.calibration is None else self.calibration.state_dict()
        return {**self.estimate.state_dict(scorer), "active": self.active, "tau_th": self.tau_th, **calibration}

    def load_state_dict(self, state: dict[str, Any], rank: int) -> None:
        """Restore; process 0 alone brings the saved steps to the next update."""
        self.estimate.load_state_dict(state, rank)
        self.active = bool(state.get("active", False))
        if self.calibration is not None:
            self.calibration.load_state_dict(state)
            self.tau_th = float(state.get("tau_th", self.tau_th))
