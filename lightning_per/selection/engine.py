"""The presample engine shared by the online batch selection callbacks.

Each selection step: the loader's ``b`` points and ``B - b`` extra points drawn uniformly with replacement from this
process's shard form a presample of ``B = presample * b`` points; one call of ``training_step`` in eval mode without
gradients (logging suppressed, training mode restored) scores it; a rule (``OnlineSelection._choose``) picks
points and weights; the incoming batch is replaced in place by them, so only they go through forward and backward.
The loader, its epochs and the number of steps are untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_per._checks import check_int
from lightning_per.batching import select
from lightning_per.callbacks._inference import scoring_step
from lightning_per.callbacks._logging import logs_this_step, publish
from lightning_per.callbacks._sync import checkpoint_due
from lightning_per.data import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.scoring import Score, ScoreName, as_score
from lightning_per.selection.cost import SelectionCost
from lightning_per.selection.irreducible import find_irreducible, register_reader
from lightning_per.selection.presample import ExtraPoints, derive_seed

__all__ = ["OnlineSelection"]

ScoreArg = ScoreName | Score | Callable[[Any, Any], Tensor]
_NOISY_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class OnlineSelection(Callback):
    """Base of the callbacks that choose each step's training points from a scored presample (see the module).

    Subclasses define the rule (``_choose``) and may decide which steps select (``_selects``) and what to
    bring up to date at synchronisation points (``_synchronise``: validation starts, epoch ends, the steps where
    a ``ModelCheckpoint`` saves, logging steps and the end of training; every process calls it on the same steps).
    """

    def __init__(self, presample: int, score: ScoreArg, warmup_steps: int, seed: int) -> None:
        check_int("presample", presample, 2, hint="The presample has `presample * batch_size` points.")
        check_int("warmup_steps", warmup_steps, 0)
        check_int("seed", seed, 0)
        self.presample = presample
        self.score = score
        self.warmup_steps = warmup_steps
        self.seed = seed
        self._scorer = as_score(score, type(self).__name__)
        self._extras = ExtraPoints(presample, seed)
        self._selection_steps = 0  # seeds each step's draw
        self._step_selected = False
        self._step_stats: dict[str, float] = {}
        self._since_log: dict[str, Any] = {}
        self._log_epoch = -1
        self._run_steps = 0  # of this run (a resumed run counts on), for the summary at its end
        self._run_selected = 0
        self._cost = SelectionCost()
        self._noted_eval = False
        self._warned_nonfinite = False
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None

    @property
    def last_step_was_selected(self) -> bool:
        """Whether the last (or current) training step trained on points chosen from a presample."""
        return self._step_selected

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        self._run_steps = self._run_selected = 0  # a resumed run's counts are restored after this
        self._cost = SelectionCost()
        name = type(self).__name__
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        others = [type(c).__name__ for c in callbacks if isinstance(c, OnlineSelection) and c is not self]
        if others:
            raise ValueError(
                f"{name} and {others[0]} are both in the Trainer's callbacks: each replaces every training batch by "
                "the points it selects, so their selections would compound (a selection of a selection) and neither "
                "would do what it says. Keep one online-selection callback per Trainer."
            )
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, PrioritizedDataModule):
            raise TypeError(
                f"{name} needs the training data to come from a `lightning_per.PrioritizedDataModule` with "
                "`strategy='uniform'`, passed as `trainer.fit(model, datamodule=...)`; got "
                f"{type(datamodule).__name__}. Wrap your datasets: "
                "`PrioritizedDataModule(train_dataset, val_dataset, batch_size=..., strategy='uniform')`."
            )
        if datamodule.strategy.name != "uniform":
            raise ValueError(
                f"{name} does its own per-step selection, so the DataModule must serve uniform batches; got "
                f"`strategy={datamodule.strategy.name!r}`. Use `strategy='uniform'` with this callback, or remove it "
                "and use `LossTracker` with a prioritized strategy."
            )
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{name} scores each presample by calling `training_step` without gradients, which needs automatic "
                "optimization (a manual `training_step` runs its own backward and optimizer step); got "
                "`automatic_optimization=False`."
            )
        if self._scorer.name == "reducible":
            register_reader(trainer, name)  # refused now rather than at the first step
        if not self._noted_eval and any(isinstance(m, _NOISY_LAYERS) for m in pl_module.modules()):
            self._noted_eval = True
            rank_zero_info(
                f"{name}: the model has BatchNorm or Dropout layers; presamples are scored in eval mode (running "
                "statistics, no dropout) and training mode is restored."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._extras.close()
        if self._scorer.name == "reducible":
            table = find_irreducible(trainer, type(self).__name__).table
            assert table is not None  # computed at fit start
            self._scorer.attach_irreducible(table)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, PrioritizedBatch):
            raise TypeError(
                f"{type(self).__name__} got a training batch of type {type(batch).__name__} without sample indices: "
                "train with `trainer.fit(model, datamodule=PrioritizedDataModule(..., strategy='uniform'))`, not "
                "with your own dataloader."
            )
        self._step_selected = False
        self._step_stats = {}
        self._before_step()
        if self._selects(trainer):
            self._selection_step(trainer, pl_module, batch, batch_idx)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._after_step(outputs, batch)
        acc = self._since_log
        acc["steps"] = acc.get("steps", 0) + 1
        self._run_steps += 1
        self._cost.trained += batch.batch_size if isinstance(batch, PrioritizedBatch) else 0
        if self._step_selected:
            self._run_selected += 1
            acc["selected"] = acc.get("selected", 0) + 1
            for key, value in self._step_stats.items():
                acc[key] = acc.get(key, 0.0) + value
            losses = outputs.get(self._scorer_loss_key) if isinstance(outputs, Mapping) else None
            if isinstance(losses, Tensor) and losses.ndim >= 1 and losses.numel():
                acc["loss_steps"] = acc.get("loss_steps", 0) + 1
                acc["loss"] = acc.get("loss", 0.0) + losses.detach().float().mean()  # a tensor: no host sync
        writes = logs_this_step(trainer)
        epoch_end = batch_idx + 1 >= trainer.num_training_batches
        if writes or epoch_end or checkpoint_due(trainer) or self._due():
            self._synchronise(trainer, pl_module)
        if writes or (epoch_end and self._log_epoch != trainer.current_epoch):
            self._log(trainer, writes)
            self._log_epoch = trainer.current_epoch

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._synchronise(trainer, pl_module)  # a checkpoint saved at the validation's end holds every step

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._synchronise(trainer, pl_module)  # every process ends training together
        self._extras.close()
        self._summarise()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._extras.close()

    # -------------------------------------------------------------------------------------- for subclasses
    def _selects(self, trainer: Trainer) -> bool:
        """Whether this step selects from a presample (else it trains on the incoming batch as it is)."""
        return trainer.global_step >= self.warmup_steps

    def _choose(self, scores: Tensor, b: int, generator: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """The positions in the presample to train on and their weights; ``None``: train on the incoming batch."""
        raise NotImplementedError

    def _before_step(self) -> None:
        """Called at the start of every training step."""

    def _after_scoring(self, scores: Tensor) -> None:
        """Called with the presample's scores of a selection step."""

    def _after_step(self, outputs: Any, batch: PrioritizedBatch) -> None:
        """Called at the end of every training step, before the statistics."""

    def _due(self) -> bool:
        """Whether to synchronise after this step (besides epoch ends, logging and checkpoint steps)."""
        return False

    def _synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Bring what the processes share up to date; every process calls this on the same steps."""

    def _metrics(self) -> dict[str, float]:
        """Extra metrics for the progress bar and the loggers."""
        return {}

    _prog_bar: tuple[str, ...] = ("per/is_active",)
    """The figures the progress bar shows (the rest go to the loggers only)."""

    def _summarise(self) -> None:
        """Say at the end of training how many steps selected, and what the selection cost."""
        steps, selected = self._run_steps, self._run_selected
        if steps and not selected:
            rank_zero_warn(
                f"{type(self).__name__}: none of the {steps} training steps selected from a presample "
                f"(`warmup_steps={self.warmup_steps}`); this run was plain uniform training."
            )
        elif steps:
            rank_zero_info(
                f"{type(self).__name__}: {selected} of {steps} training steps selected from a presample; "
                f"{self._cost.describe(self._auxiliary_units())}."
            )

    def _auxiliary_units(self) -> float:
        """Forward-sample units spent by a helper model before training (``IrreducibleLoss``), 0 without one."""
        if self._scorer.name != "reducible" or self._trainer is None:
            return 0.0
        return find_irreducible(self._trainer, type(self).__name__).cost_units

    # ------------------------------------------------------------------------------------------ the step
    @property
    def _scorer_loss_key(self) -> str:
        return getattr(self._scorer, "loss_key", "per_sample_loss")

    def _selection_step(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch, i: int) -> None:
        start = time.perf_counter()
        try:
            self._select(trainer, pl_module, batch, i)
        finally:  # the host's time of the whole selection: the extra points' loading, the scoring forward, the rule
            self._cost.seconds += time.perf_counter() - start

    def _select(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch, i: int) -> None:
        presample = self._extras.presample(trainer, pl_module, batch)
        self._cost.scored += presample.batch_size
        outputs = scoring_step(pl_module, presample, i, trainer)
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # `training_step` skips this presample (returned None): the incoming batch trains as it is
        scores = self._scorer(outputs, presample)
        self._after_scoring(scores)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, trainer.global_rank, self._selection_steps))
        self._selection_steps += 1
        chosen = self._choose(scores, batch.batch_size, generator)
        if chosen is None:
            if not bool(torch.isfinite(scores).any()) and not self._warned_nonfinite:
                self._warned_nonfinite = True
                rank_zero_warn(
                    f"{type(self).__name__}: no finite score in a presample of {scores.numel()} points (NaN/inf from "
                    "the model or the score); this step trained on the incoming batch. Warned once."
                )
            return
        positions, weights = chosen
        picked = select(presample, positions, like=batch)  # the incoming batch (b points) tells fields apart
        batch.data = picked.data
        batch.index = picked.index
        batch.weight = weights.to(device=batch.weight.device, dtype=batch.weight.dtype)
        self._step_selected = True
        self._step_stats.setdefault("unique_fraction", float(torch.unique(positions).numel()) / positions.numel())

    def _log(self, trainer: Trainer, writes: bool) -> None:
        """Means since the last logger write; only a writing step starts new means (see ``_logging``)."""
        acc = self._since_log
        steps, selected = acc.get("steps", 0), acc.get("selected", 0)
        metrics = {"per/is_active": selected / max(1, steps), **self._cost.metrics(), **self._metrics()}
        for key, value in acc.items():
            if key not in ("steps", "selected", "loss_steps", "loss") and selected:
                metrics[f"per/{key}"] = float(value) / selected
        if acc.get("loss_steps"):
            metrics["per/loss_unweighted"] = float(acc["loss"]) / acc["loss_steps"]
        publish(trainer, metrics, to_loggers=writes, prog_bar=self._prog_bar)
        if writes:
            self._since_log = {}

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        # no collective and no change of state: a checkpoint may be built on one process alone
        return {
            "selection_steps": self._selection_steps,
            "extra_batches": self._extras.batches_drawn,
            "run_steps": self._run_steps,
            "run_selected": self._run_selected,
            "cost": self._cost.state_dict(),
            "score": self._scorer.state_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._selection_steps = int(state_dict.get("selection_steps", 0))
        self._extras.batches_drawn = int(state_dict.get("extra_batches", 0))
        self._run_steps = int(state_dict.get("run_steps", 0))
        self._run_selected = int(state_dict.get("run_selected", 0))
        self._cost.load_state_dict(state_dict.get("cost", {}))
        self._scorer.load_state_dict(state_dict.get("score", {}))
        self._extras.close()

    def _rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0
