"""ImportanceSamplingCallback: upper-bound importance sampling with the tau switch (Katharopoulos & Fleuret, 2018)."""

from __future__ import annotations

from typing import Literal, get_args

from lightning_per._checks import check_choice, check_int, check_number
from lightning_per.score import ScoreArg
from lightning_per.selection.calibration import CostCalibration
from lightning_per.selection.engine import OnlineSelection, SelectionMode
from lightning_per.selection.rules import ImportanceDraw
from lightning_per.selection.switches import TauSwitch

__all__ = ["ImportanceSamplingCallback"]

TauForm = Literal["rooted", "unrooted"]
_TAU_FORMS: tuple[str, ...] = get_args(TauForm)
_TAU_TH_HINT = "Give a number, 'auto' (measured on this device) or None ((presample + 3) / 3)."


class ImportanceSamplingCallback(OnlineSelection):
    """Importance sampling with the gradient-norm upper bound, switched on only when it pays off.

    Katharopoulos & Fleuret, "Not All Samples Are Created Equal" (ICML 2018). A uniform step trains on the incoming
    ``b`` points. An importance step scores a presample of ``B = presample * b`` points without gradients and draws
    ``b`` of them with replacement, ``p ∝ score``, weighted ``1 / (n p)``, so ``weighted_mean(losses, batch)`` is an
    unbiased estimate of the presample's mean gradient. Importance steps run while the moving average ``tau`` of the
    variance-reduction estimate exceeds ``tau_th`` and ``global_step >= warmup_steps``; ``tau`` is averaged over the
    processes, so all switch on the same step. A ``PrioritizedDataModule`` must serve uniform batches.

    Args:
        presample: ``B / b``, the size of the scored presample in batches (an integer > 1; the paper advises 2 to 6).
        tau_th: importance sampling runs while ``tau > tau_th``: a number > 0; ``"auto"``: the cost of an
            importance step in uniform steps, measured on this device over the first steps of the fit
            (``calibration_steps`` of each kind, logged as ``per/cost_ratio``); ``None``: the theoretical ratio
            ``(presample + 3) / 3``.
        a_tau: weight of the old value in the moving average of ``tau``, in [0, 1).
        tau_form: ``rooted`` (the reference code) or ``unrooted`` (the paper's formula, ``n * sum(g^2)``).
        warmup_steps: no importance step before this global step.
        tau_every_n_steps: fold the steps into ``tau`` (and decide the phase) every this many steps, besides epoch
            ends, logging and checkpoint steps and validation starts (>= 1).
        score: the score the distribution is proportional to, non-negative (a name, a ``Score`` or
            ``fn(outputs, batch)``): by default ``grad_norm``, the cross-entropy bound ``||softmax(z) - onehot(y)||``,
            read from the ``"logits"`` and ``"target"`` that ``training_step`` returns.
        seed: seed of the extra presample points and of the draws (derived per process and per step).
        mode: where the presample comes from: ``auto``, ``indexed``, ``device`` or ``large_batch`` (see
            ``OnlineSelection``).
        calibration_steps: timed steps of each kind when ``tau_th="auto"`` (>= 1).

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
        tau_th: float | Literal["auto"] | None = None,
        a_tau: float = 0.9,
        tau_form: TauForm = "rooted",
        warmup_steps: int = 0,
        tau_every_n_steps: int = 16,
        score: ScoreArg = "grad_norm",
        seed: int = 0,
        mode: SelectionMode = "auto",
        calibration_steps: int = 8,
    ) -> None:
        check_int("presample", presample, 2, hint="The presample has `presample * batch_size` points.")
        if tau_th != "auto":
            check_number("tau_th", tau_th, 0.0, low_open=True, optional=True, hint=_TAU_TH_HINT)
        check_number("a_tau", a_tau, 0.0, 1.0, high_open=True)
        check_choice("tau_form", tau_form, _TAU_FORMS)
        check_int("tau_every_n_steps", tau_every_n_steps, 1, hint="1 updates tau after every step.")
        check_int("warmup_steps", warmup_steps, 0)
        theory = (presample + 3) / 3
        calibration = CostCalibration(calibration_steps) if tau_th == "auto" else None
        threshold = theory if tau_th is None or tau_th == "auto" else float(tau_th)
        rooted = tau_form == "rooted"
        switch = TauSwitch(threshold, a_tau, rooted, tau_every_n_steps, warmup_steps, type(self).__name__, calibration)
        prog_bar = ("per/tau", "per/tau_th")
        super().__init__(ImportanceDraw(), switch, presample, score, seed, prog_bar=prog_bar, mode=mode)
        self.calibration_steps = calibration_steps
        self.tau_switch = switch
        self.a_tau = a_tau
        self.tau_form = tau_form
        self.warmup_steps = warmup_steps
        self.tau_every_n_steps = tau_every_n_steps

    _wording = ("were importance steps", "was an importance step")

    @property
    def tau_th(self) -> float:
        """The threshold ``tau`` must exceed for importance steps (settable)."""
        return self.tau_switch.tau_th

    @tau_th.setter
    def tau_th(self, value: float) -> None:
        self.tau_switch.tau_th = check_number("tau_th", value, 0.0, low_open=True, hint=_TAU_TH_HINT)

    @property
    def cost_ratio(self) -> float | None:
        """The measured cost of an importance step in uniform steps (``tau_th="auto"``; ``None`` before)."""
        calibration = self.tau_switch.calibration
        return None if calibration is None else calibration.ratio

    def recalibrate(self) -> None:
        """Measure the cost ratio again over the next steps and make it ``tau_th`` (call it on every process).

        Raises:
            ValueError: ``tau_th`` was not ``"auto"``.
        """
        calibration = self.tau_switch.calibration
        if calibration is None:
            raise ValueError("`recalibrate()` needs `tau_th='auto'`; this callback has a fixed `tau_th`.")
        calibration.begin()

    @property
    def tau(self) -> float:
        """The current moving average of the variance-reduction estimate (the same on every process)."""
        return self.tau_switch.estimate.value

    @property
    def is_active(self) -> bool:
        """Whether the next training step is an importance step."""
        return self.tau_switch.active

    @property
    def last_step_was_importance(self) -> bool:
        """Whether the last (or current) training step trained on points chosen by importance sampling."""
        return self.last_step_was_selected
