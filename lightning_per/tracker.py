"""LossTracker: records per-sample scores from training steps and re-weights the sampler every epoch."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per import functional as PF
from lightning_per._checks import check_int, check_number
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.plumbing.distributed import all_gather_variable
from lightning_per.plumbing.inference import prepare_batch, scoring_mode
from lightning_per.plumbing.loaders import shard_loader
from lightning_per.plumbing.publish import publish
from lightning_per.plumbing.requirements import require_batch, require_datamodule
from lightning_per.plumbing.sync import checkpoint_due
from lightning_per.score import Captured, ScoreArg, as_score
from lightning_per.selection.irreducible import find_irreducible, register_reader
from lightning_per.strategy import SamplingPlan

__all__ = ["LossTracker"]

_STREAMS = (  # what the refusal of other data says
    " (its sampler draws by index; a stream has none: train it with an online method, `TopKSelection`, "
    "`SelectiveBackprop` or `ImportanceSamplingCallback`, which select inside large batches)"
)


class LossTracker(Callback):
    """Records a score for every trained sample and re-weights ``PrioritizedDataModule``'s sampler every epoch.

    Scores come from what ``training_step`` returns (free, possibly stale), or from a fresh scoring pass over the
    training set every ``refresh_every_n_epochs`` epochs (eval mode, no gradients). At each epoch end the records of
    all processes are merged into the DataModule's score table, the same on every process, and the next epoch's plan
    is built; non-finite scores are dropped and counted. Under DDP the records are gathered at synchronisation points,
    never in ``state_dict``. Each epoch end logs that epoch's ``per/`` statistics (``per/ess``, ``per/max_weight``,
    ``per/top10_mass``, ``per/seen_fraction``, ...); ``last_stats`` and ``last_plan`` hold the latest.

    Args:
        score: the score (a name, a ``Score`` or ``fn(outputs, batch)`` returning one value per sample): by default
            ``loss``, the per-sample losses ``training_step`` returns under ``"per_sample_loss"``; ``reducible``
            needs an ``IrreducibleLoss`` callback and, as it can be negative, the ``rank`` or ``prune`` strategy.
        ema: weight of the old score in ``s <- ema * s + (1 - ema) * new``, in [0, 1) (0: the latest score).
        refresh_every_n_epochs: run a fresh scoring pass every this many epochs (0: never).
        class_balance: exponent ``γ`` of the class-frequency factor ``(n_c / mean_c n_c)^-γ`` that multiplies the
            scores (0: off); reads the class labels under the score's ``target_key``.
        flush_every_n_steps: move recorded scores from the device to the CPU (under DDP: gather them from every
            process) every this many steps.

    Raises:
        ValueError: a bad argument; at setup, ``refresh_every_n_epochs`` with manual optimization or
            ``score='reducible'`` without an ``IrreducibleLoss`` callback; during training, a negative score under
            the ``proportional`` strategy.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> tracker = LossTracker(score="loss", ema=0.5)
        >>> tracker.ema, tracker.last_stats
        (0.5, {})
    """

    def __init__(
        self,
        score: ScoreArg = "loss",
        ema: float = 0.0,
        refresh_every_n_epochs: int = 0,
        class_balance: float = 0.0,
        flush_every_n_steps: int = 256,
    ) -> None:
        check_number("ema", ema, 0.0, 1.0, high_open=True)
        check_int("refresh_every_n_epochs", refresh_every_n_epochs, 0)
        check_number("class_balance", class_balance, 0.0)
        check_int("flush_every_n_steps", flush_every_n_steps, 1)
        self.score = score
        self._scorer = as_score(score, "LossTracker")
        self.ema = ema
        self.refresh_every_n_epochs = refresh_every_n_epochs
        self.class_balance = class_balance
        self.flush_every_n_steps = flush_every_n_steps
        # per step: index, what the score needs (resolved at the synchronisation), class labels, (epoch, batch_idx)
        self._pending: list[tuple[Tensor, Captured, Tensor | None, tuple[int, int]]] = []
        self._restored: list[tuple[Tensor, Tensor, Tensor | None]] = []  # from a checkpoint, not yet synchronised
        self._records: list[tuple[Tensor, Tensor, Tensor | None]] = []  # every process's, synchronised, on CPU
        self._steps_since_sync = 0
        self._synced_once = False
        self._nonnegative = False
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None
        self._labels: Tensor | None = None
        self._nonfinite_total = 0
        self._skipped_steps = 0  # of this fit: steps whose `training_step` returned None
        self._varies = False  # whether the epoch length changes from epoch to epoch (prune, num_samples)
        self._warned_nonfinite = False
        self.last_plan: SamplingPlan | None = None
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        self._pending.clear()
        self._restored.clear()
        self._records.clear()
        self._steps_since_sync = 0
        self._synced_once = False
        datamodule = require_datamodule(trainer, "LossTracker", why=_STREAMS)
        datamodule.recorded_by = "LossTracker"
        self._skipped_steps = 0
        strategy = datamodule.strategy
        self._nonnegative = strategy.name == "proportional"
        varies = strategy.name == "prune" or (strategy.num_samples is not None and strategy.name != "uniform")
        self._varies = varies
        if varies and trainer.reload_dataloaders_every_n_epochs != 1:  # type: ignore[attr-defined]
            # the epoch length changes (a pruned epoch, or `num_samples` draws after the uniform epochs):
            # Lightning must re-read the loader's length every epoch
            previous = trainer.reload_dataloaders_every_n_epochs  # type: ignore[attr-defined]
            trainer.reload_dataloaders_every_n_epochs = 1  # type: ignore[attr-defined]
            why = "`prune` shortens epochs" if strategy.name == "prune" else "`num_samples` sets the epoch length"
            rank_zero_info(
                f"LossTracker: {why}, so it set the Trainer's `reload_dataloaders_every_n_epochs` from {previous} to "
                "1 (the training loader is rebuilt every epoch); nothing to do on your side."
            )
        if self.refresh_every_n_epochs and not pl_module.automatic_optimization:
            raise ValueError(
                "`refresh_every_n_epochs` calls `training_step` without optimizer steps, which needs automatic "
                "optimization; set `refresh_every_n_epochs=0` for a module with manual optimization."
            )
        if self._scorer.name == "reducible":
            register_reader(trainer, "LossTracker", self._scorer)  # refused now, not at a step

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._scorer.name == "reducible":
            irreducible = find_irreducible(trainer, "LossTracker")
            self._scorer.attach_irreducible(irreducible.source())

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        require_batch(batch, "LossTracker")
        self._steps_since_sync += 1
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            self._skipped_steps += 1  # `training_step` skipped this batch: nothing to record
        else:
            # as little as possible per step (each op costs tens of microseconds right after the optimizer step):
            # the index needs no detach (an integer tensor); scores of a closed form wait for the synchronisation
            captured = self._scorer.capture(outputs, batch)
            labels = self._scorer.labels(outputs, batch.batch_size) if self.class_balance else None
            self._pending.append((batch.index, captured, labels, (trainer.current_epoch, batch_idx)))
        # every process counts the same steps (skipped ones too), so all of them synchronise on the same ones: the
        # first step of a fit (a negative score is refused at once), every `flush_every_n_steps`, and before a
        # `ModelCheckpoint` saves by step count
        if not self._synced_once or self._steps_since_sync >= self.flush_every_n_steps or checkpoint_due(trainer):
            self._sync(trainer, pl_module)

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._sync(trainer, pl_module)  # a checkpoint saved at the validation's end then holds every record

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        if datamodule.scores.seen or datamodule.strategy.name == "uniform":
            return
        reasons = []
        if self._nonfinite_total:
            reasons.append(f"{self._nonfinite_total} per-sample scores were NaN or inf (dropped, `per/nonfinite`)")
        if self._skipped_steps:
            reasons.append(f"{self._skipped_steps} training steps returned None from `training_step` (skipped)")
        rank_zero_warn(
            f"LossTracker recorded no finite score during fit ({'; '.join(reasons) or 'no epoch ended'}), so the "
            "sampler drew uniformly throughout. Check the model for NaN losses (e.g. a learning rate too high) and "
            "that `training_step` returns the per-sample losses."
        )

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        trained = datamodule.sampler.plan()  # the plan this epoch was drawn from (cached; the table is unchanged)
        refresh = self.refresh_every_n_epochs and (trainer.current_epoch + 1) % self.refresh_every_n_epochs == 0
        if refresh:
            self._pending.clear()
            self._restored.clear()
            self._records.clear()
            self._refresh(trainer, pl_module, datamodule)
        self._sync(trainer, pl_module)
        index, values, targets = _concat(self._records, self._with_labels)
        self._records.clear()
        table = datamodule.scores
        if self.class_balance and targets is not None:
            values = values * self._class_factor(index, targets, len(table))
        dropped = table.update(index, values, ema=0.0 if refresh else self.ema)  # checks the indices
        seen = torch.zeros(len(table), dtype=torch.bool)
        seen[index] = True  # linear in the table, cheaper than sorting the epoch's indices
        self._record_nonfinite(dropped)
        # every value describes the epoch just trained: its plan, what it recorded, the scores it left
        metrics = {f"per/{k}": v for k, v in (trained.stats or {}).items()}
        metrics["per/seen_fraction"] = float(seen.sum()) / len(table)
        metrics["per/nonfinite"] = float(dropped)
        metrics.update({f"per/score_q{round(100 * q)}": v for q, v in table.quantiles((0.1, 0.5, 0.9)).items()})
        self.last_plan, self.last_stats = trained, metrics
        # the same on every rank (merged records); not `self.log`: see `plumbing/publish.py`
        publish(trainer, metrics, prog_bar=("per/ess",))
        datamodule.prepare_epoch(trainer.current_epoch + 1)  # the next epoch's plan, from the updated table
        if self._varies:  # Lightning's note on a short epoch names its batch count: it would repeat with each length
            warnings.filterwarnings(
                "ignore", message=r"The number of training batches \(\d+\) is smaller than the logging"
            )

    # --------------------------------------------------------------------------------------------- scoring
    @property
    def _with_labels(self) -> bool:
        return bool(self.class_balance)

    def _class_factor(self, index: Tensor, targets: Tensor, num_samples: int) -> Tensor:
        if self._labels is None or self._labels.numel() != num_samples:  # none yet, or a new training set
            self._labels = torch.full((num_samples,), -1, dtype=torch.int32)
        self._labels[index] = targets.to(torch.int32)
        return PF.class_frequency_factor(self._labels, targets, self.class_balance)

    def _refresh(self, trainer: Trainer, pl_module: LightningModule, datamodule: PrioritizedDataModule) -> None:
        """Score this rank's shard of the training set with the current model: eval mode, no grad, no logging."""
        loader = shard_loader(datamodule, trainer.global_rank, trainer.world_size)
        with scoring_mode(pl_module, trainer):
            for i, batch in enumerate(loader):
                batch = prepare_batch(trainer, pl_module, batch)
                outputs = pl_module.training_step(batch, i)
                captured = self._scorer.capture(outputs, batch)
                labels = self._scorer.labels(outputs, batch.batch_size) if self.class_balance else None
                self._pending.append((batch.index, captured, labels, (trainer.current_epoch, -1)))

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _local(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """This process's records since the last synchronisation (restored ones first), on the module's device."""
        device = self._module.device if self._module is not None else None
        values = self._scorer.resolve_many([p[1] for p in self._pending]) if self._pending else None
        parts = [*self._restored]
        if values is not None:
            index = torch.cat([p[0].reshape(-1) for p in self._pending])
            labels = None if self._pending[0][2] is None else torch.cat([p[2] for p in self._pending])  # type: ignore[misc]
            parts.append((index, values, labels))
        return _concat(parts, self._with_labels, device)

    def _sync(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Move this process's new records to the CPU, gathered from every process (the same on all of them).

        Every process calls this on the same steps. With ``proportional`` sampling, a negative score stops every
        process here, naming the step that returned it.
        """
        self._synced_once = True
        self._steps_since_sync = 0
        if not self._pending and not self._restored and trainer.world_size <= 1:
            return
        index, values, targets = self._local()
        world = trainer.world_size
        if world > 1:  # one gather per field for all the steps since the last synchronisation
            index = all_gather_variable(index, world)
            values = all_gather_variable(values, world)
            targets = None if targets is None else all_gather_variable(targets, world)
        index, values = index.cpu(), values.cpu()
        if self._nonnegative:
            self._check_nonnegative(values)
        self._pending.clear()
        self._restored.clear()
        if index.numel():
            self._records.append((index, values, None if targets is None else targets.cpu()))

    def _check_nonnegative(self, values: Tensor) -> None:
        finite = values[torch.isfinite(values)]
        if not finite.numel() or float(finite.min()) >= 0:
            return
        steps = [step for _, c, _, step in self._pending if bool((self._scorer.resolve(c) < 0).any())]
        if not steps:
            where = "on another process"
        elif steps[0][1] < 0:
            where = f"in the scoring pass at the end of epoch {steps[0][0]}"
        else:
            where = f"in epoch {steps[0][0]}, batch_idx {steps[0][1]}"
        raise ValueError(
            f"LossTracker(score={self._scorer.label}) recorded a negative score ({float(finite.min()):.4g}) {where}, "
            "but `proportional` sampling draws in proportion to the scores, so they must be non-negative. Use "
            "`strategy='rank'` (any real scores) or `'prune'`, or report a non-negative score (e.g. a loss, not a "
            "log-likelihood)."
        )

    def _record_nonfinite(self, dropped: int) -> None:
        self._nonfinite_total += dropped
        if dropped and not self._warned_nonfinite:
            self._warned_nonfinite = True
            rank_zero_warn(
                f"LossTracker dropped {dropped} non-finite per-sample scores (NaN/inf) this epoch; they never "
                "enter the score table. The count is logged as `per/nonfinite` (warned once)."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        # No collective and no change of state (a checkpoint may be built on one process alone): the records of
        # every process up to the last synchronisation, and this process's own since then. Checkpoints taken by
        # Lightning at epoch ends, validation ends and `every_n_train_steps` follow a synchronisation, so they hold
        # every record; at another moment the other processes' records since the last one are not in it.
        index, values, targets = _concat([*self._records, self._local()], self._with_labels)
        return {
            "nonfinite_total": self._nonfinite_total,
            "score": self._scorer.state_dict(),
            "labels": self._labels,
            "unmerged_index": index if index.numel() else None,
            "unmerged_values": values if index.numel() else None,
            "unmerged_targets": targets if index.numel() else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._nonfinite_total = int(state_dict.get("nonfinite_total", 0))
        self._scorer.load_state_dict(state_dict.get("score", {}))
        self._labels = state_dict.get("labels")
        self._pending.clear()
        self._restored.clear()
        self._records.clear()
        index = state_dict.get("unmerged_index")
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if index is not None and index.numel() and rank == 0:
            # the records of all processes, restored once: the next synchronisation gathers them from process 0 to
            # every process (restored on every process they would count world_size times)
            self._restored.append((index, state_dict["unmerged_values"], state_dict.get("unmerged_targets")))


def _concat(
    parts: list[tuple[Tensor, Tensor, Tensor | None]], with_targets: bool, device: torch.device | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Records ``(index, values, targets)`` joined into one of each (float32 values), on ``device`` (CPU: None)."""
    device = device or torch.device("cpu")
    parts = [p for p in parts if p[0].numel()]
    if not parts:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, torch.empty(0, device=device), empty if with_targets else None
    index = torch.cat([p[0].reshape(-1).to(device) for p in parts])
    values = torch.cat([p[1].reshape(-1).to(device, torch.float32) for p in parts])
    targets = None if parts[0][2] is None else torch.cat([p[2].to(device) for p in parts if p[2] is not None])
    return index, values, targets
