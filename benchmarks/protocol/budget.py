"""Compute accounting in forward-sample units, and the callback that charges, schedules, evaluates and stops a run.

The unit is one sample through a forward pass without gradients (1); a forward and backward pass costs 3. A step of
uniform training on ``b`` points costs ``3b``; a step that scores a presample of ``B`` points without gradients and
trains on ``b`` of them costs ``B + 3b``; an auxiliary model (the irreducible-loss model of RHO-LOSS) is charged its
training (3 per sample and epoch) and its pass over the training set (1 per sample) before the method's first step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from benchmarks.protocol.schedules import lr_factor

NO_GRAD_FORWARD = 1.0
FORWARD_BACKWARD = 3.0

Evaluate = Callable[[LightningModule], dict[str, Any]]


def step_cost(trained: int, scored: int = 0) -> float:
    """A step's compute: 3 per trained sample, 1 per sample scored without gradients (``step_cost(32, 320)`` = 416)."""
    return FORWARD_BACKWARD * trained + NO_GRAD_FORWARD * scored


def epochs_budget(samples: int, epochs: float) -> float:
    """The compute of ``epochs`` uniform epochs over ``samples`` (``epochs_budget(100, 2)`` = 600)."""
    return FORWARD_BACKWARD * samples * epochs


class ComputeBudget(Callback):
    """Charges every step its compute, sets the learning rate, evaluates at fixed compute and stops at the budget.

    Put it first among the callbacks: ``on_train_batch_start`` reads the incoming batch's size ``b`` before a
    selection callback replaces the batch by its chosen points. A selection callback is recognised by its
    ``last_step_was_selected`` and ``presample`` attributes, an auxiliary model by ``cost_units`` and ``seconds``
    (``IrreducibleLoss``, trained at fit start: charged to the compute and the clock before the first step), a model
    that scores every training batch by ``last_step_units`` (``TokenSelection``'s reference: 1 per sequence scored).

    The run's progress is its own training compute over the budget's (the auxiliary model's excluded), or the
    epoch fraction when that is larger and ``max_epochs`` is set (a method with shorter epochs then gets the whole
    schedule in the epochs it runs, as InfoBatch rescales its schedule). The clock counts training seconds only:
    evaluations are excluded.
    """

    def __init__(
        self,
        budget: float,
        lr: float,
        schedule: str,
        evaluate: Evaluate,
        evals: int = 20,
        max_epochs: int | None = None,
        charge_scoring: bool = True,
    ) -> None:
        if budget <= 0 or evals < 1:
            raise ValueError(f"budget must be > 0 and evals >= 1, got {budget} and {evals}")
        lr_factor(schedule, 0.0)  # refuses an unknown schedule here, not at the first step
        self.budget = budget
        self.lr = lr
        self.schedule = schedule
        self.evaluate = evaluate
        self.eval_every = budget / evals
        self.max_epochs = max_epochs
        self.charge_scoring = charge_scoring  # False: a diagnostic that charges a selection step like a uniform one
        self.cost = 0.0
        self.aux_cost = 0.0
        self.aux_seconds = 0.0
        self.steps = 0
        self.selected_steps = 0
        self.tau_peak: float | None = None  # the highest moving average of an importance callback's tau
        self.trained = 0
        self.epoch_sizes: list[int] = []
        self.epoch_seconds: list[float] = []
        self.curve: list[dict[str, Any]] = []
        self._incoming = 0
        self._epoch_count = 0
        self._start = 0.0
        self._paused = 0.0
        self._selection: Any = None
        self._aux: list[Any] = []
        self._per_step: list[Any] = []  # callbacks that say what they scored for the last step (Rho-1's reference)
        self._scored = 0  # the selection's points scored so far, as it counts them (``cost.scored``)
        self._aux_total = 0.0  # the auxiliary models' cost so far

    @property
    def seconds(self) -> float:
        """Training seconds so far (the auxiliary model's included, evaluations excluded)."""
        return self.aux_seconds + (time.perf_counter() - self._start - self._paused if self._start else 0.0)

    def progress(self, trainer: Trainer, batch_idx: int) -> float:
        """The run's progress through its schedule (see the class docstring)."""
        own = (self.cost - self.aux_cost) / max(1.0, self.budget - self.aux_cost)
        if self.max_epochs is None:
            return own
        epochs = trainer.current_epoch + batch_idx / max(1, int(trainer.num_training_batches))
        return max(own, epochs / self.max_epochs)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        callbacks: list[Any] = list(trainer.callbacks)  # type: ignore[attr-defined]
        self._selection = next((c for c in callbacks if hasattr(c, "last_step_was_selected")), None)
        self._scored = self._selection.cost.scored if hasattr(self._selection, "cost") else 0
        self._aux = [c for c in callbacks if hasattr(c, "cost_units") and hasattr(c, "seconds")]
        self._per_step = [c for c in callbacks if hasattr(c, "last_step_units")]
        for aux in self._aux:
            self.aux_cost += float(aux.cost_units)
            self.aux_seconds += float(aux.seconds)
        self._aux_total = self.aux_cost
        self.cost = self.aux_cost
        self._start = time.perf_counter()
        self._evaluate(trainer, pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_count = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._incoming = int(batch.batch_size)
        factor = lr_factor(self.schedule, self.progress(trainer, batch_idx))
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * factor

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        trained = int(batch.batch_size)  # after a selection step: the chosen points
        selected = self._selection is not None and bool(self._selection.last_step_was_selected)
        if hasattr(self._selection, "cost"):  # what the engine scored: B points, whatever its mode
            scored, self._scored = self._selection.cost.scored - self._scored, self._selection.cost.scored
        else:
            scored = self._selection.presample * self._incoming if selected else 0
        scored = scored if self.charge_scoring else 0
        scored += sum(int(c.last_step_units) for c in self._per_step)  # a reference's forward each step (Rho-1)
        aux = sum(float(a.cost_units) for a in self._aux)  # an auxiliary model working on the fly (a stream's
        extra, self._aux_total = aux - self._aux_total, aux  # irreducible losses) is charged as it works
        self.cost += step_cost(trained, scored) + extra
        self.steps += 1
        self.selected_steps += int(selected)
        tau = getattr(self._selection, "tau", None)  # importance sampling: how close it came to switching on
        if tau is not None:
            self.tau_peak = max(self.tau_peak or 0.0, float(tau))
        self.trained += trained
        self._epoch_count += trained
        if self.cost >= self.budget:
            trainer.should_stop = True
        elif self.cost >= self._next_eval():
            self._evaluate(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epoch_sizes.append(self._epoch_count)
        self.epoch_seconds.append(self.seconds)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.curve[-1]["cost"] != self.cost:
            self._evaluate(trainer, pl_module)

    def _next_eval(self) -> float:
        return (int(self.curve[-1]["cost"] / self.eval_every + 1e-9) + 1) * self.eval_every

    @torch.no_grad()
    def _evaluate(self, trainer: Trainer, pl_module: LightningModule) -> None:
        paused = time.perf_counter()
        seconds = self.seconds
        was_training = pl_module.training
        pl_module.eval()
        point = {"cost": self.cost, "seconds": seconds, "epoch": trainer.current_epoch, "steps": self.steps}
        point.update(self.evaluate(pl_module))
        self.curve.append(point)
        pl_module.train(was_training)
        self._paused += time.perf_counter() - paused

    def record(self) -> dict[str, Any]:
        """The run's JSON record: its curve and its counts."""
        return {
            "curve": self.curve,
            "cost": self.cost,
            "aux_cost": self.aux_cost,
            "seconds": self.curve[-1]["seconds"],
            "steps": self.steps,
            "selected_step_fraction": self.selected_steps / max(1, self.steps),
            "tau_peak": self.tau_peak,
            "trained_points": self.trained,
            "epoch_sizes": self.epoch_sizes,
        }
