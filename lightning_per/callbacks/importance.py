"""ImportanceSamplingCallback: upper-bound importance sampling with the tau switch (Katharopoulos & Fleuret, 2018)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_per import functional as PF
from lightning_per.batching import concat_batches, select
from lightning_per.callbacks._inference import prepare_batch, scoring_step
from lightning_per.callbacks._logging import publish
from lightning_per.callbacks._sync import checkpoint_due
from lightning_per.data import IndexedCollate, IndexedDataset, PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule

__all__ = ["ImportanceSamplingCallback", "ImportanceScore", "draw_importance_sample"]

ImportanceScore = Literal["ce", "bce", "mse", "autograd", "loss", "custom"]
_SCORES = ("ce", "bce", "mse", "autograd", "loss", "custom")
_TAU_FORMS = ("rooted", "unrooted")
# what a step leaves for the next tau update: its tau_step (an importance step), None (a skipped step), its scores,
# or the (logits, targets) of a closed-form bound
_Pending = float | None | Tensor | tuple[Tensor, Tensor]


class ImportanceSamplingCallback(Callback):
    """Importance sampling with the gradient-norm upper bound, switched on only when it pays off.

    Katharopoulos & Fleuret, "Not All Samples Are Created Equal: Deep Learning with Importance Sampling"
    (ICML 2018). Each training step has ``b`` points (the DataModule's batch). The callback runs in one of two
    phases:

    - **uniform phase**: the step trains on the ``b`` points of the incoming batch, weight 1, with no extra
      forward pass; their scores are read from what ``training_step`` returned and update ``tau``.
    - **importance phase**: the incoming ``b`` points and ``B - b`` extra points drawn uniformly with replacement
      from this process's shard of the training set form a presample of ``B = presample * b`` points. It is
      scored by one call of ``training_step`` in eval mode without gradients (logging suppressed, training mode
      restored afterwards); ``b`` points are drawn from it with replacement with ``p_i ∝ score_i`` and weights
      ``w_i = 1 / (n p_i)`` (``n``: the presample's points with a finite score, so ``B`` normally), and the
      incoming batch is replaced in place by them. Only those ``b`` points go through forward and backward, and
      ``lightning_per.weighted_mean(losses, batch)`` in ``training_step`` makes the gradient an unbiased
      estimate of the presample's mean gradient.

    The switch: with ``g`` the normalised scores of the points scored this step and ``u = 1/n``,
    ``tau_step = (1 - ||g - u||^2 / ||g||^2) ** -1/2`` (``tau_form="unrooted"``: without the square root, the
    paper's form, ``n * sum(g^2)``); under DDP ``tau_step`` is averaged over the processes, then
    ``tau <- a_tau * tau + (1 - a_tau) * tau_step``, starting from 0. ``tau`` is brought up to date every
    ``tau_every_n_steps`` steps, at every epoch end and on every logging step: the moving average then takes in the
    steps since the last update one by one, in order, so its values are exactly those of a per-step update; only
    the phase decision waits for the update (a step's host transfer and, under DDP, its all-reduce are shared by
    all the steps of an update). The steps after an update are importance steps exactly when ``tau > tau_th`` and
    ``trainer.global_step >= warmup_steps``; every process holds the same ``tau``, so all switch on the same step.
    The default ``tau_th = (B + 3b) / (3b)`` is the cost ratio of an importance step (a forward over ``B`` plus
    forward and backward over ``b``, a backward costing about two forwards) to a uniform one.

    Epoch accounting: the training loader and its epoch are untouched (``b``-point batches of a shuffled pass
    over this process's shard, the same number of steps in both phases, so learning-rate schedules and
    ``estimated_stepping_batches`` hold). In the uniform phase each step trains on exactly the epoch's batch. In
    the importance phase every point of the epoch is in the presample of its step (so it is scored at least once
    per epoch); the ``B - b`` extras are uniform draws with replacement from this process's shard (indices
    ``rank, rank + world, ...``), and the ``b`` trained points are drawn with replacement from the presample, so
    a point may be trained on more than once in a step or an epoch, and a point of low score may not be trained
    on in that epoch: that is what sampling with replacement implies, and the weights keep the gradient
    unbiased. No point is skipped or duplicated otherwise.

    Scores (``score``):
        - ``ce``: ``||softmax(z) - q||`` for softmax cross-entropy (``q`` the target distribution, with
          ``label_smoothing``; ``class_weights`` as in ``cross_entropy(weight=...)``), from ``logits_key``
          (shape ``(n, C)``) and ``target_key`` (class indices ``(n,)`` or probabilities ``(n, C)``).
        - ``bce``: ``||sigmoid(z) - y||`` for binary cross-entropy with logits, from ``logits_key`` and
          ``target_key`` (same number of values per sample).
        - ``mse``: ``2 ||z - y|| / d`` for the per-sample loss ``mean_j (z_j - y_j)^2``.
        - ``autograd``: ``||d loss_fn(z, y) / dz||`` per row for any ``loss_fn`` (per-sample losses, or a sum or
          mean of them, which gives proportional scores), by one ``torch.autograd.grad`` to the outputs.
        - ``loss``: the per-sample loss under ``loss_key`` (a baseline; the paper finds it worse).
        - ``custom``: ``score_fn(outputs, batch)``, one non-negative score per sample.

    Non-finite scores are never selected; a presample without any finite positive score trains on the
    incoming batch as a uniform step (warned once if no score was finite).

    Logged on the steps where Lightning writes logs (every ``log_every_n_steps``), as means over the steps since the
    last such step, straight to the loggers (as Lightning's ``LearningRateMonitor`` does: ``self.log`` costs about
    a millisecond per metric on a CPU), and, on those steps and at the last step of an epoch that had none, to the
    progress bar and ``trainer.callback_metrics``: ``per/tau`` (its current value, also in the progress bar) and
    ``per/is_active`` (the fraction of importance steps); when importance steps took place since the last log, also
    these means over them: ``per/max_p`` (the largest selection probability), ``per/unique_fraction`` (distinct
    points among the ``b`` trained), ``per/loss_unweighted`` (the plain mean of the trained points' per-sample
    losses, when ``training_step`` returns them under ``loss_key``). ``tau``, the phase, the ``tau_step`` values of
    the steps since the last update and the counters that seed the draws are saved in checkpoints, so a resumed run
    continues where it stopped (``state_dict`` runs no collective; ``tau`` is also brought up to date at validation
    starts and before a ``ModelCheckpoint`` saves by ``every_n_train_steps``, so those checkpoints hold every
    process's steps). At the end of training it says how many steps were importance steps and how high ``tau``
    got against ``tau_th`` (a warning when none was: the run was then plain uniform training).

    Data: train with a :class:`~lightning_per.PrioritizedDataModule` (or a subclass) with ``strategy="uniform"``.
    :class:`~lightning_per.LossTracker` may be added too: it then records the scores of the trained points (with
    the duplicates of sampling with replacement) and the uniform strategy ignores them; prioritized strategies
    are refused because their weights and this callback's would compound.

    Args:
        presample: ``B / b``, the size of the scored presample in batches (> 1; the paper advises 2 to 6).
        tau_th: importance sampling runs while ``tau > tau_th`` (> 0; ``None``: ``(presample + 3) / 3``,
            i.e. ``(B + 3b) / (3b)``).
        a_tau: weight of the old value in the moving average of ``tau``, in [0, 1).
        tau_form: ``rooted`` (the reference code) or ``unrooted`` (the paper's formula, ``n * sum(g^2)``).
        warmup_steps: no importance step before this global step.
        tau_every_n_steps: bring ``tau`` up to date (and decide the phase) every this many steps, besides epoch
            ends and logging steps (>= 1; 1: after every step). Until then the closed-form scores' inputs (the
            logits and targets of each step) are kept on their device.
        score: the score kind (see above).
        loss_key: key of the per-sample losses in the ``training_step`` output (``loss`` score and logging).
        logits_key: key of the model outputs (logits) in the ``training_step`` output.
        target_key: key of the targets in the ``training_step`` output.
        label_smoothing: label smoothing of the cross-entropy (``ce``), in [0, 1].
        class_weights: per-class loss weights of the cross-entropy (``ce``), as in ``cross_entropy(weight=...)``.
        ignore_index: a target class index the cross-entropy ignores (``ce``), as in
            ``cross_entropy(ignore_index=...)``: such samples have no gradient, so they score 0.
        loss_fn: ``loss_fn(outputs, targets)`` for ``autograd`` (import path in YAML, e.g.
            ``torch.nn.functional.cross_entropy``).
        score_fn: ``score_fn(outputs, batch) -> Tensor[n]`` for ``custom`` (import path in YAML).
        seed: seed of the extra presample points and of the selection (derived per process and per step).

    Raises:
        ValueError: a bad argument (named in the message, with the value); at setup, a prioritized strategy or
            a module with manual optimization.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example::

        dm = PrioritizedDataModule(train_ds, val_ds, batch_size=128, strategy="uniform")
        trainer = Trainer(callbacks=[ImportanceSamplingCallback(presample=3)], max_epochs=10)
        trainer.fit(model, datamodule=dm)  # training_step returns {"loss": weighted_mean(...), "logits", "target"}
    """

    def __init__(
        self,
        presample: int = 3,
        tau_th: float | None = None,
        a_tau: float = 0.9,
        tau_form: Literal["rooted", "unrooted"] = "rooted",
        warmup_steps: int = 0,
        tau_every_n_steps: int = 16,
        score: ImportanceScore = "ce",
        loss_key: str = "per_sample_loss",
        logits_key: str = "logits",
        target_key: str = "target",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        ignore_index: int = -100,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        score_fn: Callable[[Any, Any], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        if isinstance(presample, bool) or not isinstance(presample, int) or presample <= 1:
            raise ValueError(
                f"`presample` must be an integer > 1 (the presample has `presample * batch_size` points), got "
                f"{presample!r}."
            )
        if tau_th is not None and not (tau_th > 0 and np.isfinite(tau_th)):
            raise ValueError(f"`tau_th` must be > 0 and finite (or None for (presample + 3) / 3), got {tau_th}.")
        if not 0.0 <= a_tau < 1.0:
            raise ValueError(f"`a_tau` must be in [0, 1), got {a_tau}.")
        if tau_form not in _TAU_FORMS:
            raise ValueError(f"`tau_form` must be 'rooted' or 'unrooted', got {tau_form!r}.")
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps}.")
        if isinstance(tau_every_n_steps, bool) or not isinstance(tau_every_n_steps, int) or tau_every_n_steps < 1:
            raise ValueError(
                f"`tau_every_n_steps` must be an integer >= 1 (1: update tau after every step), got "
                f"{tau_every_n_steps!r}."
            )
        if score not in _SCORES:
            raise ValueError(f"`score` must be one of {', '.join(_SCORES)}; got {score!r}.")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1], got {label_smoothing}.")
        if class_weights is not None and (len(class_weights) == 0 or min(class_weights) < 0):
            raise ValueError(f"`class_weights` must be a non-empty list of non-negative numbers, got {class_weights}.")
        if score == "autograd" and loss_fn is None:
            raise ValueError(
                "`score='autograd'` needs `loss_fn`, a function `loss_fn(outputs, targets)` returning the loss "
                "(e.g. `loss_fn: torch.nn.functional.cross_entropy` in YAML); got loss_fn=None."
            )
        if score == "custom" and score_fn is None:
            raise ValueError(
                "`score='custom'` needs `score_fn`, a function `score_fn(outputs, batch)` returning one score per "
                "sample (an import path in YAML); got score_fn=None."
            )
        if seed < 0:
            raise ValueError(f"`seed` must be >= 0, got {seed}.")
        self.presample = presample
        self.tau_th: float = float(tau_th) if tau_th is not None else (presample + 3) / 3
        self.a_tau = a_tau
        self.tau_form = tau_form
        self.warmup_steps = warmup_steps
        self.tau_every_n_steps = tau_every_n_steps
        self.score = score
        self.loss_key = loss_key
        self.logits_key = logits_key
        self.target_key = target_key
        self.label_smoothing = label_smoothing
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn
        self.score_fn = score_fn
        self.seed = seed
        self._tau = 0.0
        self._active = False
        self._importance_steps = 0
        self._extra_batches = 0
        self._step_was_importance = False
        self._step_tau: float | None = None
        self._step_stats: tuple[float, float] | None = None
        self._extras: Iterator[PrioritizedBatch] | None = None
        self._warned_nonfinite = False
        self._pending: list[_Pending] = []  # the steps since the last tau update
        self._since_log: dict[str, Any] = _empty_log()
        self._log_epoch = -1  # the last epoch with a log
        self._noted_eval = False
        self._run_steps = 0  # training steps of this run (a resumed run counts on), for the summary at its end
        self._run_importance_steps = 0
        self._tau_peak = 0.0
        self._step_peak = 0.0  # the largest single step's tau_step
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None

    # ------------------------------------------------------------------------------------------- properties
    @property
    def tau(self) -> float:
        """The current moving average of the variance-reduction estimate (the same on every process)."""
        return self._tau

    @property
    def is_active(self) -> bool:
        """Whether the next training step is an importance step."""
        return self._active

    @property
    def last_step_was_importance(self) -> bool:
        """Whether the last (or current) training step trained on points chosen by importance sampling."""
        return self._step_was_importance

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        self._run_steps = self._run_importance_steps = 0
        self._tau_peak, self._step_peak = self._tau, 0.0
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, PrioritizedDataModule):
            raise TypeError(
                "ImportanceSamplingCallback needs the training data to come from a `lightning_per."
                "PrioritizedDataModule` with `strategy='uniform'`, passed as `trainer.fit(model, datamodule=...)`; "
                f"got {type(datamodule).__name__}. Wrap your datasets: "
                "`PrioritizedDataModule(train_dataset, val_dataset, batch_size=..., strategy='uniform')`."
            )
        if datamodule.strategy.name != "uniform":
            raise ValueError(
                "ImportanceSamplingCallback does its own per-step selection and weighting, so the DataModule must "
                f"serve uniform batches; got `strategy={datamodule.strategy.name!r}`. Use `strategy='uniform'` with "
                "this callback, or remove this callback and use `LossTracker` with a prioritized strategy."
            )
        if not pl_module.automatic_optimization:
            # the scoring pass calls `training_step`, which under manual optimization would step the optimizer
            raise ValueError(
                "ImportanceSamplingCallback scores each presample by calling `training_step` without gradients, "
                "which needs automatic optimization (a manual `training_step` runs its own backward and optimizer "
                "step); got `automatic_optimization=False`."
            )
        if not self._noted_eval and any(isinstance(m, _NOISY_LAYERS) for m in pl_module.modules()):
            self._noted_eval = True
            rank_zero_info(
                "ImportanceSamplingCallback: the model has BatchNorm or Dropout layers; presamples are scored in "
                "eval mode (running statistics, no dropout), as the paper advises, and training mode is restored."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._close_extras()

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, PrioritizedBatch):
            raise TypeError(
                f"ImportanceSamplingCallback got a training batch of type {type(batch).__name__} without sample "
                "indices: train with `trainer.fit(model, datamodule=PrioritizedDataModule(..., strategy='uniform'))`, "
                "not with your own dataloader."
            )
        self._step_was_importance = False
        self._step_tau = None
        self._step_stats = None
        if self._active:
            self._importance_step(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_tau is not None:
            self._pending.append(self._step_tau)
        elif outputs is None or (isinstance(outputs, Mapping) and not outputs):
            # the step was skipped (`training_step` returned None; Lightning then passes `{}`): tau stays as it is
            self._pending.append(None)
        else:  # checked now, scored at the next update (see `tau_every_n_steps`)
            self._pending.append(self._score_inputs(outputs, batch))
        acc = self._since_log
        acc["steps"] += 1
        self._run_steps += 1
        if self._step_stats is not None:  # an importance step: its statistics
            acc["importance_steps"] += 1
            self._run_importance_steps += 1
            acc["per/max_p"] += self._step_stats[0]
            acc["per/unique_fraction"] += self._step_stats[1]
            losses = outputs.get(self.loss_key) if isinstance(outputs, Mapping) else None
            if isinstance(losses, Tensor) and losses.ndim >= 1 and losses.numel():
                acc["loss_steps"] += 1
                acc["per/loss_unweighted"] = acc["per/loss_unweighted"] + losses.detach().float().mean()  # no sync
        connector = getattr(trainer, "_logger_connector", None)
        writes = bool(getattr(connector, "should_update_logs", True))  # loggers write this step's logs
        epoch_end = batch_idx + 1 >= trainer.num_training_batches
        # every process updates on the same steps; a checkpoint saved by step count follows an update, so it holds
        # every process's steps (`state_dict` runs no collective)
        if writes or epoch_end or len(self._pending) >= self.tau_every_n_steps or checkpoint_due(trainer):
            self._update_tau(trainer, pl_module)
        if writes or (epoch_end and self._log_epoch != trainer.current_epoch):
            self._log(trainer, writes)
            self._log_epoch = trainer.current_epoch

    def _update_tau(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fold the steps since the last update into ``tau`` (in step order) and decide the phase of the next step.

        Every process updates on the same steps (counted alike, plus epoch ends and logging steps); under DDP each
        step's ``tau_step`` is averaged over the processes that scored it, in one all-reduce for all the steps.
        """
        taus, lowest = self._step_taus(self._pending)
        taus, negative_elsewhere = self._world_taus(trainer, pl_module, taus, lowest < 0)
        self._check_scores(lowest, negative_elsewhere)  # on every process alike: none waits in a collective
        self._pending = []
        for tau_step in taus:
            if tau_step is not None:  # None: a skipped step, which leaves tau as it is
                self._tau = PF.tau_ema(self._tau, tau_step, self.a_tau)
                self._tau_peak = max(self._tau_peak, self._tau)
                self._step_peak = max(self._step_peak, tau_step)
        self._active = self._tau > self.tau_th and trainer.global_step >= self.warmup_steps

    @staticmethod
    def _world_taus(
        trainer: Trainer, pl_module: LightningModule, taus: list[float | None], negative: bool = False
    ) -> tuple[list[float | None], bool]:
        """Each step's ``tau_step`` averaged over the processes that scored it, and a negative score elsewhere.

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

    def _log(self, trainer: Trainer, writes: bool) -> None:
        """Show ``tau`` and the means since the last logger write (``self.log`` is too slow to call every step).

        Only a step whose logs reach the loggers (``writes``) writes them and starts new means: an epoch-end
        update in between refreshes the progress bar and ``callback_metrics`` without cutting the loggers' next
        means short.
        """
        acc = self._since_log
        metrics = {"per/tau": self._tau, "per/is_active": acc["importance_steps"] / max(1.0, acc["steps"])}
        if acc["importance_steps"]:
            metrics["per/max_p"] = acc["per/max_p"] / acc["importance_steps"]
            metrics["per/unique_fraction"] = acc["per/unique_fraction"] / acc["importance_steps"]
        if acc["loss_steps"]:
            metrics["per/loss_unweighted"] = float(acc["per/loss_unweighted"]) / acc["loss_steps"]
        publish(trainer, metrics, to_loggers=writes, prog_bar=("per/tau",))
        if writes:
            self._since_log = _empty_log()

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._update_tau(trainer, pl_module)  # a checkpoint saved at the validation's end holds every step

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._update_tau(trainer, pl_module)  # `tau` counts every step (every process ends training together)
        self._close_extras()
        self._summarise()

    def _summarise(self) -> None:
        """Say once, at the end of training, how many steps were importance steps and how high ``tau`` got."""
        steps, active = self._run_steps, self._run_importance_steps
        if not steps:
            return
        against = (
            f"tau peaked at {self._tau_peak:.3g} (one step's estimate at {self._step_peak:.3g}) against "
            f"`tau_th={self.tau_th:.3g}`"
        )
        if active:
            rank_zero_info(
                f"ImportanceSamplingCallback: {active} of {steps} training steps ({active / steps:.0%}) were "
                f"importance steps; {against}."
            )
            return
        if self.warmup_steps >= steps and self._tau_peak > self.tau_th:
            why = f"`warmup_steps={self.warmup_steps}` covered the whole run"
        elif self._step_peak > self.tau_th:
            why = (
                f"single steps' estimates passed it but their moving average (`a_tau={self.a_tau}`, starting from "
                "0) did not: a longer run, or a smaller `a_tau`, lets it catch up"
            )
        else:
            why = "no step's estimate reached it: the presample's scores were too alike for importance sampling to pay"
        rank_zero_warn(
            f"ImportanceSamplingCallback: none of the {steps} training steps was an importance step: {against}; "
            f"{why}. This run was plain uniform training; a lower `tau_th` (by default the cost ratio "
            "(B + 3b) / 3b of an importance step) switches importance sampling on anyway."
        )

    # ------------------------------------------------------------------------------------------ the step
    def _importance_step(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch, i: int) -> None:
        b = batch.batch_size
        extras = self._next_extras(trainer, pl_module, (self.presample - 1) * b)
        presample = concat_batches(PrioritizedBatch(batch.data, batch.index, batch.weight), extras)
        outputs = scoring_step(pl_module, presample, i, trainer)
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # `training_step` skips this presample (returned None): the incoming batch trains uniformly
        scores = self._scores_from(outputs, presample)
        (self._step_tau,), _ = self._step_taus([scores])  # a negative score: refused by the draw below
        generator = torch.Generator().manual_seed(_derive_seed(self.seed, trainer.global_rank, self._importance_steps))
        self._importance_steps += 1
        drawn = draw_importance_sample(scores, b, generator)
        if drawn is None:
            if not bool(torch.isfinite(scores).any()) and not self._warned_nonfinite:
                self._warned_nonfinite = True
                rank_zero_warn(
                    f"ImportanceSamplingCallback: no finite score in a presample of {scores.numel()} points (NaN/inf "
                    "from the model or the score function); this step trained on the incoming batch uniformly. "
                    "Warned once."
                )
            return
        positions, weights, p = drawn
        chosen = select(presample, positions, like=batch)  # the incoming batch (b points) tells fields apart
        batch.data = chosen.data
        batch.index = chosen.index
        batch.weight = weights.to(device=batch.weight.device, dtype=batch.weight.dtype)
        self._step_was_importance = True
        self._step_stats = (float(p.max()), float(torch.unique(positions).numel()) / b)

    def _next_extras(self, trainer: Trainer, pl_module: LightningModule, count: int) -> PrioritizedBatch:
        """``count`` points drawn uniformly with replacement from this process's shard, on the module's device."""
        parts: list[PrioritizedBatch] = []
        total = 0
        while total < count:
            if self._extras is None:
                self._extras = iter(self._extras_loader(trainer))
            part = next(self._extras)
            self._extra_batches += 1
            parts.append(part)
            total += part.batch_size
        joined = parts[0]
        for part in parts[1:]:
            joined = concat_batches(joined, part)
        if total > count:
            joined = select(joined, torch.arange(count))
        return prepare_batch(trainer, pl_module, joined)

    def _extras_loader(self, trainer: Trainer) -> DataLoader:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        dataset = datamodule.train_dataset
        size = len(dataset)  # type: ignore[arg-type]
        world, rank = trainer.world_size, trainer.global_rank
        shard = range(rank, size, world) if rank < size else range(size)
        batches = _ExtraBatches(
            shard, (self.presample - 1) * datamodule.batch_size, self.seed, rank, start=self._extra_batches
        )
        return DataLoader(
            IndexedDataset(dataset),  # type: ignore[arg-type]
            batch_sampler=batches,
            num_workers=datamodule.num_workers,
            collate_fn=IndexedCollate(datamodule.collate_fn),
            pin_memory=datamodule.pin_memory,
        )

    def _close_extras(self) -> None:
        self._extras = None  # shuts the workers of the extra-points loader down

    # --------------------------------------------------------------------------------------------- scoring
    def _scores_from(self, outputs: Any, batch: PrioritizedBatch) -> Tensor:
        """One score per sample of ``batch`` from what ``training_step`` returned for it (float32, detached)."""
        return self._scores_of(self._score_inputs(outputs, batch))

    def _step_taus(self, entries: list[_Pending]) -> tuple[list[float | None], float]:
        """``tau_step`` of each entry, and the lowest finite score among them (``inf`` if none).

        An entry's own value, or computed from its scores (one host transfer in all).
        """
        taus: list[float | None] = [e if e is None or isinstance(e, float) else None for e in entries]
        positions = [j for j, e in enumerate(entries) if isinstance(e, (Tensor, tuple))]
        parts: list[Tensor | tuple[Tensor, Tensor]] = [e for e in entries if isinstance(e, (Tensor, tuple))]
        lowest = math.inf
        if not parts:
            return taus, lowest
        scores = self._scores_of_steps(parts).double()
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
            lowest = min(lowest, low)
            # no finite positive score: no information, the uniform value 1
            taus[j] = PF.tau_from_sums(total, squares, count, self.tau_form == "rooted") if total > 0 else 1.0
        return taus, lowest

    def _check_scores(self, lowest: float, elsewhere: bool = False) -> None:
        """Refuse negative scores: the importance distribution is proportional to them."""
        if lowest < 0 or elsewhere:
            where = f"({lowest:.4g})" if lowest < 0 else "on another process"
            raise ValueError(
                f"ImportanceSamplingCallback(score={self.score!r}) got a negative score {where}: scores must be "
                "non-negative, as the importance distribution is proportional to them. Return a non-negative "
                "per-sample loss (e.g. cross-entropy, not a log-likelihood), or use a bound (`score='ce'`, 'bce', "
                "'mse' or 'autograd')."
            )

    def _scores_of_steps(self, parts: list[Tensor | tuple[Tensor, Tensor]]) -> Tensor:
        """The scores of several steps, concatenated; a closed-form bound runs once over all of them when it can."""
        if len(parts) == 1:
            return self._scores_of(parts[0])
        ready = [p for p in parts if isinstance(p, Tensor)]
        if len(ready) == len(parts):
            return torch.cat([p.float().reshape(-1) for p in ready])
        pairs = [p for p in parts if isinstance(p, tuple)]
        if len(pairs) == len(parts) and _concatenable([p[0] for p in pairs], [p[1] for p in pairs]):
            return self._scores_of((torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])))
        return torch.cat([self._scores_of(p) for p in parts])

    def _scores_of(self, entry: Tensor | tuple[Tensor, Tensor]) -> Tensor:
        """The scores of a step from what :meth:`_score_inputs` kept of it."""
        if isinstance(entry, Tensor):
            return entry.float().reshape(-1)
        logits, targets = entry
        if self.score == "ce":
            weights = None
            if self.class_weights is not None:
                weights = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
            return PF.softmax_ce_grad_norm(logits, targets, self.label_smoothing, weights, self.ignore_index)
        if self.score == "bce":
            return PF.sigmoid_bce_grad_norm(logits, targets)
        return PF.mse_grad_norm(logits, targets)

    def _score_inputs(self, outputs: Any, batch: PrioritizedBatch) -> Tensor | tuple[Tensor, Tensor]:
        """Check what ``training_step`` returned for ``batch`` and keep what its scores need (detached).

        The closed-form bounds keep ``(logits, targets)`` and are computed at the next ``tau`` update, a few
        steps later, in one go (a small op costs tens of microseconds right after an optimizer step, a few in a
        row); the other kinds keep their scores, computed now (they may depend on the batch).
        """
        n = batch.batch_size
        if self.score == "custom":
            assert self.score_fn is not None
            values = self.score_fn(outputs, batch)
            if not isinstance(values, Tensor) or values.reshape(-1).shape[0] != n:
                got: object = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
                raise ValueError(
                    f"`score_fn` returned {got} for a batch of {n} samples: it must return a tensor with one "
                    "non-negative score per sample, in batch order."
                )
            return values.detach()
        if not isinstance(outputs, Mapping):
            raise ValueError(self._unusable(f"`training_step` returned a {type(outputs).__name__}, not a dict"))
        if self.score == "loss":
            losses = outputs.get(self.loss_key)
            if not isinstance(losses, Tensor) or losses.ndim == 0 or losses.shape[0] != n or losses.numel() != n:
                got = tuple(losses.shape) if isinstance(losses, Tensor) else f"keys {sorted(outputs)}"
                raise ValueError(
                    f"ImportanceSamplingCallback(score='loss') needs one loss per sample under {self.loss_key!r} "
                    f"in what `training_step` returns (batch of {n}); found {got}. Return "
                    '`{"loss": lightning_per.weighted_mean(losses, batch), "per_sample_loss": losses}` with '
                    "`losses = F.cross_entropy(logits, y, reduction='none')`."
                )
            return losses.detach()
        logits, targets = outputs.get(self.logits_key), outputs.get(self.target_key)
        if not isinstance(logits, Tensor) or not isinstance(targets, Tensor):
            found = {k: (tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__) for k, v in outputs.items()}
            raise ValueError(
                self._unusable(
                    f"it needs tensors under {self.logits_key!r} and {self.target_key!r}, but `training_step` "
                    f"returned {found}"
                )
            )
        if logits.ndim == 0 or targets.ndim == 0 or logits.shape[0] != n or targets.shape[0] != n:
            raise ValueError(
                self._unusable(
                    f"{self.logits_key!r} has shape {tuple(logits.shape)} and {self.target_key!r} has shape "
                    f"{tuple(targets.shape)}, but the batch has {n} samples (one row each is needed)"
                )
            )
        logits = logits.detach()
        if self.score == "autograd":
            return self._autograd_bound(logits, targets.detach(), n)
        if self.score == "ce":
            shape_ok = logits.ndim == 2 and (
                (targets.ndim == 1 and not targets.dtype.is_floating_point) or targets.shape == logits.shape
            )
            if not shape_ok:
                raise ValueError(
                    self._unusable(
                        f"softmax cross-entropy needs logits of shape (n, C) and class indices (n,) or "
                        f"probabilities (n, C); got {self.logits_key!r} {tuple(logits.shape)} and "
                        f"{self.target_key!r} {tuple(targets.shape)} ({targets.dtype}). For other shapes use "
                        "`score='autograd'` with `loss_fn`"
                    )
                )
            if self.class_weights is not None and len(self.class_weights) != logits.shape[1]:
                raise ValueError(
                    f"`class_weights` has {len(self.class_weights)} entries but the logits have "
                    f"{logits.shape[1]} classes."
                )
        elif logits.reshape(n, -1).shape != targets.reshape(n, -1).shape:
            raise ValueError(
                self._unusable(
                    f"{self.score} needs outputs and targets of the same shape; got {self.logits_key!r} "
                    f"{tuple(logits.shape)} and {self.target_key!r} {tuple(targets.shape)}"
                )
            )
        return logits, targets.detach()

    def _autograd_bound(self, logits: Tensor, targets: Tensor, n: int) -> Tensor:
        assert self.loss_fn is not None
        with torch.enable_grad():
            z = logits.clone().requires_grad_(True)
            losses = self.loss_fn(z, targets)
            if not isinstance(losses, Tensor) or not (losses.ndim == 0 or losses.shape[0] == n):
                got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
                raise ValueError(
                    f"`loss_fn` returned {got} for a batch of {n} samples: return one loss per sample (e.g. "
                    "`reduction='none'`) or their sum or mean."
                )
            (grad,) = torch.autograd.grad(losses.sum(), z)
        return grad.reshape(n, -1).float().norm(dim=-1)

    def _unusable(self, found: str) -> str:
        return (
            f"ImportanceSamplingCallback(score={self.score!r}) cannot compute the gradient-norm bound: {found}. "
            f'Return the outputs and targets from `training_step` (`return {{"loss": ..., "{self.logits_key}": '
            f'logits, "{self.target_key}": y}}`), point `logits_key`/`target_key` at them, or pass your own score '
            "function: `ImportanceSamplingCallback(score='custom', score_fn=my_score)` (in YAML "
            "`score: custom` and `score_fn: my_package.my_score`), called as `score_fn(outputs, batch)` and "
            "returning one non-negative score per sample."
        )

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        # No collective and no change of state (a checkpoint may be built on one process alone). The steps since the
        # last tau update are saved as their tau_step values, so the resumed run updates on the same steps. The
        # checkpoints Lightning takes (epoch ends, validation ends, `every_n_train_steps`) follow an update and have
        # none; a checkpoint taken at another moment under DDP keeps this process's values, not the average over
        # the processes the update would take.
        taus, _ = self._step_taus(self._pending)
        return {
            "tau": self._tau,
            "active": self._active,
            "pending_taus": list(taus),
            "importance_steps": self._importance_steps,
            "extra_batches": self._extra_batches,
            "run_steps": self._run_steps,
            "run_importance_steps": self._run_importance_steps,
            "tau_peak": self._tau_peak,
            "step_peak": self._step_peak,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._tau = float(state_dict.get("tau", 0.0))
        self._active = bool(state_dict.get("active", False))
        pending: list[_Pending] = [None if t is None else float(t) for t in state_dict.get("pending_taus", [])]
        # rank 0 brings the saved values to the next update alone (the others count as having skipped those steps)
        rank = self._trainer.global_rank if self._trainer is not None else 0
        self._pending = pending if rank == 0 else [None] * len(pending)
        self._importance_steps = int(state_dict.get("importance_steps", 0))
        self._extra_batches = int(state_dict.get("extra_batches", 0))
        self._run_steps = int(state_dict.get("run_steps", 0))
        self._run_importance_steps = int(state_dict.get("run_importance_steps", 0))
        self._tau_peak = float(state_dict.get("tau_peak", self._tau))
        self._step_peak = float(state_dict.get("step_peak", 0.0))
        self._close_extras()


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
            "A custom `score_fn` must return non-negative values (e.g. a gradient norm or a loss)."
        )
    values = torch.where(finite, values, torch.zeros_like(values))
    total = float(values.sum())
    if not total > 0 or not np.isfinite(total):
        return None
    p = values / total
    uniforms = torch.rand(num, generator=generator, dtype=torch.float64)
    positions = PF.inverse_cdf_sample(torch.cumsum(p, 0), uniforms)
    n = int(finite.sum())
    weights = (1.0 / (n * p[positions])).float()
    return positions, weights, p


class _ExtraBatches:
    """Batch sampler without end: batch ``k`` holds ``size`` uniform draws with replacement from ``shard``.

    Batch ``k`` comes from a generator seeded by ``(seed, rank, k)``, so the stream is the same however the
    DataLoader prefetches, and a resumed run continues it from ``start``.
    """

    def __init__(self, shard: range, size: int, seed: int, rank: int, start: int = 0) -> None:
        self.shard = shard
        self.size = size
        self.seed = seed
        self.rank = rank
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, self.rank, k, 1))
            draws = torch.randint(len(self.shard), (self.size,), generator=generator)
            yield [self.shard[j] for j in draws.tolist()]
            k += 1


def _concatenable(*groups: list[Tensor]) -> bool:
    """Whether each group's tensors can be concatenated along dim 0 (same trailing shape, dtype and device)."""
    return all(
        all(t.shape[1:] == g[0].shape[1:] and t.dtype == g[0].dtype and t.device == g[0].device for t in g)
        for g in groups
    )


def _empty_log() -> dict[str, Any]:
    return {
        "steps": 0.0,
        "importance_steps": 0.0,
        "loss_steps": 0.0,
        "per/max_p": 0.0,
        "per/unique_fraction": 0.0,
        "per/loss_unweighted": 0.0,
    }


def _derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (SplitMix64 finalizer over the keys; cheap enough for every step)."""
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (key & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state >> 1


_NOISY_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
