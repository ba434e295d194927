"""ImportanceSamplingCallback: upper-bound importance sampling with the tau switch (Katharopoulos & Fleuret, 2018)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per import functional as PF
from lightning_per._checks import check_choice, check_int, check_number
from lightning_per.data import PrioritizedBatch
from lightning_per.selection.engine import OnlineSelection, ScoreArg
from lightning_per.selection.tau import TauEstimate

__all__ = ["ImportanceSamplingCallback"]

TauForm = Literal["rooted", "unrooted"]
_TAU_FORMS: tuple[str, ...] = get_args(TauForm)


class ImportanceSamplingCallback(OnlineSelection):
    """Importance sampling with the gradient-norm upper bound, switched on only when it pays off.

    Katharopoulos & Fleuret, "Not All Samples Are Created Equal" (ICML 2018). A uniform step trains on the incoming
    ``b`` points. An importance step scores a presample of ``B = presample * b`` points without gradients and draws
    ``b`` of them with replacement, ``p ∝ score``, weighted ``1 / (n p)``, so ``weighted_mean(losses, batch)`` is an
    unbiased estimate of the presample's mean gradient. Importance steps run while the moving average ``tau`` of the
    variance-reduction estimate exceeds ``tau_th`` and ``global_step >= warmup_steps``; ``tau`` is averaged over the
    processes, so all switch on the same step. The DataModule must serve uniform batches.

    Args:
        presample: ``B / b``, the size of the scored presample in batches (an integer > 1; the paper advises 2 to 6).
        tau_th: importance sampling runs while ``tau > tau_th`` (> 0; ``None``: ``(presample + 3) / 3``, the cost
            ratio of an importance step to a uniform one).
        a_tau: weight of the old value in the moving average of ``tau``, in [0, 1).
        tau_form: ``rooted`` (the reference code) or ``unrooted`` (the paper's formula, ``n * sum(g^2)``).
        warmup_steps: no importance step before this global step.
        tau_every_n_steps: fold the steps into ``tau`` (and decide the phase) every this many steps, besides epoch
            ends, logging and checkpoint steps and validation starts (>= 1).
        score: the score the distribution is proportional to, non-negative (a name, a ``Score`` or
            ``fn(outputs, batch)``): by default ``grad_norm``, the cross-entropy bound ``||softmax(z) - onehot(y)||``,
            read from the ``"logits"`` and ``"target"`` that ``training_step`` returns.
        seed: seed of the extra presample points and of the draws (derived per process and per step).

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, a module with manual optimization, or
            ``score='reducible'`` without an ``IrreducibleLoss`` callback; during training, a negative score.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> callback = ImportanceSamplingCallback(presample=3)
        >>> callback.tau_th, callback.is_active
        (2.0, False)
    """

    def __init__(
        self,
        presample: int = 3,
        tau_th: float | None = None,
        a_tau: float = 0.9,
        tau_form: TauForm = "rooted",
        warmup_steps: int = 0,
        tau_every_n_steps: int = 16,
        score: ScoreArg = "grad_norm",
        seed: int = 0,
    ) -> None:
        super().__init__(presample, score, warmup_steps, seed)
        check_number("tau_th", tau_th, 0.0, low_open=True, optional=True, hint="None: (presample + 3) / 3.")
        check_number("a_tau", a_tau, 0.0, 1.0, high_open=True)
        check_choice("tau_form", tau_form, _TAU_FORMS)
        check_int("tau_every_n_steps", tau_every_n_steps, 1, hint="1 updates tau after every step.")
        self.tau_th: float = float(tau_th) if tau_th is not None else (presample + 3) / 3
        self.a_tau = a_tau
        self.tau_form = tau_form
        self.tau_every_n_steps = tau_every_n_steps
        self._tau = TauEstimate(a_tau, tau_form == "rooted", type(self).__name__)
        self._active = False
        self._step_tau: float | None = None

    @property
    def tau(self) -> float:
        """The current moving average of the variance-reduction estimate (the same on every process)."""
        return self._tau.value

    @property
    def is_active(self) -> bool:
        """Whether the next training step is an importance step."""
        return self._active

    @property
    def last_step_was_importance(self) -> bool:
        """Whether the last (or current) training step trained on points chosen by importance sampling."""
        return self._step_selected

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._tau.peak, self._tau.step_peak = self._tau.value, 0.0  # peaks of this run (restored on resume)

    # -------------------------------------------------------------------------------------------- the rule
    def _selects(self, trainer: Trainer) -> bool:
        return self._active

    def _before_step(self) -> None:
        self._step_tau = None

    def _after_scoring(self, scores: Tensor) -> None:
        (self._step_tau,), _ = self._tau.step_taus([scores], self._scorer)  # a negative score: refused by the draw

    def _choose(self, scores: Tensor, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        drawn = PF.draw_importance_sample(scores, b, generator)
        if drawn is None:
            return None
        positions, weights, p = drawn
        self._step_stats["max_p"] = float(p.max())
        return positions, weights

    def _after_step(self, outputs: Any, batch: PrioritizedBatch) -> None:
        if self._step_tau is not None:  # an importance step: the presample's estimate
            self._tau.pending.append(self._step_tau)
        elif outputs is None or (isinstance(outputs, Mapping) and not outputs):
            self._tau.pending.append(None)  # a skipped step leaves tau as it is
        else:  # a uniform step: checked now, scored at the next update
            self._tau.pending.append(self._scorer.capture(outputs, batch))

    def _due(self) -> bool:
        return len(self._tau.pending) >= self.tau_every_n_steps

    def _synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._tau.update(trainer, pl_module, self._scorer)
        self._active = self._tau.value > self.tau_th and trainer.global_step >= self.warmup_steps

    def _metrics(self) -> dict[str, float]:
        return {"per/tau": self._tau.value, "per/tau_th": self.tau_th}

    _prog_bar = ("per/tau", "per/tau_th")

    def _summarise(self) -> None:
        """Say once how many steps were importance steps, why (not), and what the scoring cost."""
        steps, active = self._run_steps, self._run_selected
        if not steps:
            return
        tau = self._tau
        against = (
            f"tau peaked at {tau.peak:.3g} (one step's estimate at {tau.step_peak:.3g}) against "
            f"`tau_th={self.tau_th:.3g}`"
        )
        if active:
            rank_zero_info(
                f"ImportanceSamplingCallback: {active} of {steps} training steps ({active / steps:.0%}) were "
                f"importance steps; {against}; {self._cost.describe()}."
            )
            return
        settle = round(3 / (1 - self.a_tau)) if self.a_tau < 1 else steps  # steps for the average to reach 95%
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
        rank_zero_warn(
            f"ImportanceSamplingCallback: none of the {steps} training steps was an importance step: {against}; "
            f"{why}. This run was plain uniform training; a lower `tau_th` (by default the cost ratio "
            "(B + 3b) / 3b of an importance step) switches importance sampling on anyway."
        )

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        # the steps since the last update are saved as their own tau_step values; the checkpoints Lightning takes
        # follow an update and have none
        return {**super().state_dict(), **self._tau.state_dict(self._scorer), "active": self._active}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._tau.load_state_dict(state_dict, self._rank())
        self._active = bool(state_dict.get("active", False))
