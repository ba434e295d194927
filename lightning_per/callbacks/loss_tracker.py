"""LossTracker: records per-sample scores from training steps and re-weights the sampler every epoch."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per import functional as PF
from lightning_per.callbacks._inference import prepare_batch, scoring_mode
from lightning_per.callbacks._logging import publish
from lightning_per.data import IndexedCollate, IndexedDataset, PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.distributed import all_gather_variable
from lightning_per.strategy import SamplingPlan

__all__ = ["LossTracker", "ScoreKind"]

ScoreKind = Literal["loss", "deviation", "margin", "grad_norm", "novelty", "custom"]
_KINDS = ("loss", "deviation", "margin", "grad_norm", "novelty", "custom")

TWO_LINE_FIX = """Change two lines of `training_step`:
    losses = F.cross_entropy(logits, y, reduction="none")           # one loss per sample
    return {"loss": lightning_per.weighted_mean(losses, batch), "per_sample_loss": losses}"""


class LossTracker(Callback):
    """Records a score for every trained sample and re-weights :class:`~lightning_per.PrioritizedDataModule`.

    Scores are taken from what ``training_step`` returns, at no extra cost (stale scores), or from a fresh
    scoring pass over the training set every ``refresh_every_n_epochs`` epochs (eval mode, no grad, each rank
    scores its shard). At the end of each epoch the scores of all ranks are merged into the DataModule's score
    table (the same on every rank) and the sampler's plan for the next epoch is built. Non-finite scores are
    dropped, counted and logged (``per/nonfinite``), never stored.

    Score kinds (``score``):
        - ``loss``: the per-sample loss under ``loss_key``.
        - ``deviation``: ``1 - p_y`` from ``logits_key`` and ``target_key``.
        - ``margin``: ``1 - (p_y - max_{k≠y} p_k)`` from ``logits_key`` and ``target_key``.
        - ``grad_norm``: the gradient-norm bound ``||softmax(z) - onehot(y)||`` (Katharopoulos & Fleuret).
        - ``novelty``: distance of the embedding under ``embedding_key`` from a running mean of the embeddings
          of the samples trained on before.
        - ``custom``: any non-negative per-sample value under ``score_key``.

    Logged every epoch: ``per/ess``, ``per/seen_fraction``, ``per/max_weight``, ``per/pruned_fraction``
    (prune), ``per/score_q10``/``q50``/``q90``, ``per/nonfinite``. They go to the loggers directly (as Lightning's
    ``LearningRateMonitor`` does; ``self.log`` would cost about a millisecond per metric), to
    ``trainer.callback_metrics`` (so ``ModelCheckpoint``/``EarlyStopping`` can monitor them) and to ``last_stats``.

    Args:
        score: the score kind.
        loss_key: key of the per-sample losses in the ``training_step`` output.
        logits_key: key of the logits (``deviation``, ``margin``, ``grad_norm``).
        target_key: key of the integer targets (``deviation``, ``margin``, ``grad_norm``, ``class_balance``).
        embedding_key: key of the embeddings (``novelty``).
        score_key: key of the per-sample values (``custom``).
        ema: weight of the old score in ``s <- ema * s + (1 - ema) * new`` (0: the latest score).
        refresh_every_n_epochs: run a fresh scoring pass every this many epochs (0: never).
        class_balance: exponent ``γ`` of the class-frequency factor ``(n_c / mean_c n_c)^-γ`` (0: off).
        novelty_momentum: momentum of the running mean embedding.
        flush_every_n_steps: move recorded scores from the device to the CPU every this many steps.

    Raises:
        ValueError: a bad argument (named in the message).

    Example::

        trainer = Trainer(callbacks=[LossTracker(score="loss", ema=0.5)])
    """

    def __init__(
        self,
        score: ScoreKind = "loss",
        loss_key: str = "per_sample_loss",
        logits_key: str = "logits",
        target_key: str = "target",
        embedding_key: str = "embedding",
        score_key: str = "score",
        ema: float = 0.0,
        refresh_every_n_epochs: int = 0,
        class_balance: float = 0.0,
        novelty_momentum: float = 0.9,
        flush_every_n_steps: int = 256,
    ) -> None:
        if score not in _KINDS:
            raise ValueError(f"`score` must be one of {', '.join(_KINDS)}; got {score!r}.")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"`ema` must be in [0, 1), got {ema}.")
        if refresh_every_n_epochs < 0:
            raise ValueError(f"`refresh_every_n_epochs` must be >= 0, got {refresh_every_n_epochs}.")
        if class_balance < 0:
            raise ValueError(f"`class_balance` must be >= 0, got {class_balance}.")
        if not 0.0 <= novelty_momentum < 1.0:
            raise ValueError(f"`novelty_momentum` must be in [0, 1), got {novelty_momentum}.")
        if flush_every_n_steps <= 0:
            raise ValueError(f"`flush_every_n_steps` must be > 0, got {flush_every_n_steps}.")
        self.score = score
        self.loss_key = loss_key
        self.logits_key = logits_key
        self.target_key = target_key
        self.embedding_key = embedding_key
        self.score_key = score_key
        self.ema = ema
        self.refresh_every_n_epochs = refresh_every_n_epochs
        self.class_balance = class_balance
        self.novelty_momentum = novelty_momentum
        self.flush_every_n_steps = flush_every_n_steps
        self._pending: list[tuple[Tensor, Tensor, Tensor | None]] = []
        self._flushed: list[tuple[Tensor, Tensor, Tensor | None]] = []
        self._trainer: Trainer | None = None
        self._module: LightningModule | None = None
        self._novelty_mean: Tensor | None = None
        self._labels: Tensor | None = None
        self._nonfinite_total = 0
        self._warned_nonfinite = False
        self.last_plan: SamplingPlan | None = None
        self.last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer, self._module = trainer, pl_module
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, PrioritizedDataModule):
            raise TypeError(
                "LossTracker needs the training data to come from a `lightning_per.PrioritizedDataModule` "
                f"passed as `trainer.fit(model, datamodule=...)`; got {type(datamodule).__name__}. Wrap your "
                "datasets: `PrioritizedDataModule(train_dataset, val_dataset, batch_size=...)`."
            )
        strategy = datamodule.strategy
        varies = strategy.name == "prune" or (strategy.num_samples is not None and strategy.name != "uniform")
        if varies and trainer.reload_dataloaders_every_n_epochs != 1:  # type: ignore[attr-defined]
            # the epoch length changes (a pruned epoch, or `num_samples` draws after the uniform epoch 0):
            # Lightning must re-read the loader's length every epoch
            trainer.reload_dataloaders_every_n_epochs = 1  # type: ignore[attr-defined]
            why = "`prune`" if strategy.name == "prune" else "`num_samples`"
            rank_zero_info(f"LossTracker: {why} changes the epoch length; set `reload_dataloaders_every_n_epochs=1`.")
        if self.refresh_every_n_epochs and not pl_module.automatic_optimization:
            raise ValueError(
                "`refresh_every_n_epochs` calls `training_step` without optimizer steps, which needs automatic "
                "optimization; set `refresh_every_n_epochs=0` for a module with manual optimization."
            )

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pending.clear()
        self._flushed.clear()

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, PrioritizedBatch):
            raise TypeError(
                f"LossTracker got a training batch of type {type(batch).__name__} without sample indices: train "
                "with `trainer.fit(model, datamodule=PrioritizedDataModule(...))`, not with your own dataloader."
            )
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # a skipped step (`training_step` returned None): nothing was trained, nothing to record
        values, targets = self._scores_from(outputs, batch)
        # as little as possible per step (each op costs tens of microseconds right after the optimizer step): the
        # index needs no detach (an integer tensor), the float conversion and reshape wait for the flush
        self._pending.append((batch.index, values.detach(), targets))
        if len(self._pending) >= self.flush_every_n_steps:
            self._flush()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        refresh = self.refresh_every_n_epochs and (trainer.current_epoch + 1) % self.refresh_every_n_epochs == 0
        if refresh:
            self._pending.clear()
            self._flushed.clear()
            self._refresh(trainer, pl_module, datamodule)
        self._flush()
        index, values, targets = self._merge(trainer, pl_module)
        table = datamodule.scores
        if self.class_balance and targets is not None:
            values = values * self._class_factor(index, targets, len(table))
        dropped = table.update(index, values, ema=0.0 if refresh else self.ema)  # checks the indices
        seen = torch.zeros(len(table), dtype=torch.bool)
        seen[index] = True  # linear in the table, cheaper than sorting the epoch's indices
        seen_fraction = float(seen.sum()) / len(table)
        self._record_nonfinite(dropped)
        self.last_plan = plan = datamodule.prepare_epoch(trainer.current_epoch + 1)
        metrics = {f"per/{k}": v for k, v in (plan.stats or {}).items()}
        metrics["per/seen_fraction"] = seen_fraction
        metrics["per/nonfinite"] = float(dropped)
        metrics.update(_quantiles(table.scores))
        self.last_stats = metrics
        publish(trainer, metrics)  # the same on every rank (merged records); not `self.log`: see `_logging`

    # --------------------------------------------------------------------------------------------- scoring
    @property
    def _needs_targets(self) -> bool:
        return self.score in ("deviation", "margin", "grad_norm") or bool(self.class_balance)

    def _scores_from(self, outputs: Any, batch: PrioritizedBatch) -> tuple[Tensor, Tensor | None]:
        n = batch.batch_size
        kind = self.score
        raw = targets = None
        soft = False
        if self._needs_targets:
            raw = self._get(outputs, self.target_key, n)
            soft = raw.ndim == 2 and raw.shape[1] > 1  # class probabilities (mixup, smoothing) or one-hot rows
            targets = raw.argmax(-1) if soft else raw.reshape(-1)  # class labels, kept for `class_balance`
        if kind == "loss":
            return self._get(outputs, self.loss_key, n, scalar=True), targets  # flattened at the flush
        if kind == "custom":
            return self._get(outputs, self.score_key, n, scalar=True), targets
        if kind == "novelty":
            return self._novelty(self._get(outputs, self.embedding_key, n)), targets
        logits = self._get(outputs, self.logits_key, n)
        assert raw is not None and targets is not None
        fn: Callable[[Tensor, Tensor], Tensor] = {
            "deviation": PF.prediction_deviation,
            "margin": PF.margin_score,
            "grad_norm": PF.softmax_ce_grad_norm,
        }[kind]
        return fn(logits.detach(), raw if kind == "grad_norm" and soft else targets), targets

    def _get(self, outputs: Any, key: str, n: int, scalar: bool = False) -> Tensor:
        """``outputs[key]``, checked: a tensor with one row per sample (``scalar``: one value per sample)."""
        if not isinstance(outputs, dict) or key not in outputs:
            found = sorted(outputs) if isinstance(outputs, dict) else type(outputs).__name__
            hint = TWO_LINE_FIX if key == self.loss_key else f'Return it: `return {{"loss": loss, "{key}": ...}}`.'
            raise KeyError(
                f"LossTracker(score={self.score!r}) needs per-sample values under the key {key!r} in what "
                f"`training_step` returns; it returned {found}.\n{hint}"
            )
        value = outputs[key]
        if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != n or (scalar and value.numel() != n):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"`training_step` returned {key!r} with shape {got}, but the batch has {n} samples: return one "
                f"value per sample (e.g. `reduction='none'`), in batch order.\n{TWO_LINE_FIX}"
            )
        return value

    def _novelty(self, embeddings: Tensor) -> Tensor:
        flat = embeddings.detach().float().reshape(embeddings.shape[0], -1)
        # a non-finite embedding scores NaN (dropped at the epoch end and counted) but never enters the running
        # mean; masked rather than filtered, so no host sync per step
        finite = torch.isfinite(flat).all(dim=1, keepdim=True)
        count = finite.sum()
        batch_mean = torch.where(finite, flat, 0.0).sum(0) / count.clamp(min=1)
        if self._novelty_mean is None or self._novelty_mean.shape != batch_mean.shape:
            if int(count) == 0:  # nothing to start the mean from yet (one host sync, on the first batch only)
                return flat.norm(dim=-1) * math.nan
            self._novelty_mean = batch_mean
        mean = self._novelty_mean.to(flat.device)
        scores = (flat - mean).norm(dim=-1)
        keep = torch.where(count > 0, self.novelty_momentum, 1.0)  # a batch without a finite row changes nothing
        self._novelty_mean = keep * mean + (1.0 - keep) * batch_mean
        return scores

    def _class_factor(self, index: Tensor, targets: Tensor, num_samples: int) -> Tensor:
        if self._labels is None or self._labels.numel() != num_samples:  # none yet, or a new training set
            self._labels = torch.full((num_samples,), -1, dtype=torch.int32)
        self._labels[index] = targets.to(torch.int32)
        known = self._labels[self._labels >= 0].long()
        counts = torch.bincount(known).double()
        present = counts > 0
        factor = torch.ones_like(counts)
        factor[present] = (counts[present] / counts[present].mean()).pow(-self.class_balance)
        return factor[targets.long()].float()

    def _refresh(self, trainer: Trainer, pl_module: LightningModule, datamodule: PrioritizedDataModule) -> None:
        """Score this rank's shard of the training set with the current model: eval mode, no grad, no logging."""
        world, rank = trainer.world_size, trainer.global_rank
        dataset = IndexedDataset(datamodule.train_dataset)  # type: ignore[arg-type]
        shard = list(range(rank, len(dataset), world))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, shard),
            batch_size=datamodule.eval_batch_size,
            collate_fn=IndexedCollate(datamodule.collate_fn),
            num_workers=datamodule.num_workers,
        )
        with scoring_mode(pl_module, trainer):
            for i, batch in enumerate(loader):
                batch = prepare_batch(trainer, pl_module, batch)
                outputs = pl_module.training_step(batch, i)
                values, targets = self._scores_from(outputs, batch)
                self._pending.append((batch.index, values.float(), targets))

    # ------------------------------------------------------------------------------------------- bookkeeping
    def _flush(self) -> None:
        if not self._pending:
            return
        index = torch.cat([p[0] for p in self._pending]).cpu()
        values = torch.cat([p[1].reshape(-1) for p in self._pending]).float().cpu()
        targets = None if self._pending[0][2] is None else torch.cat([p[2] for p in self._pending]).cpu()  # type: ignore[misc]
        self._flushed.append((index, values, targets))
        self._pending.clear()

    def _merge(self, trainer: Trainer, pl_module: LightningModule) -> tuple[Tensor, Tensor, Tensor | None]:
        """This epoch's records of every rank, concatenated in rank order (the same on all ranks); clears them."""
        merged = self._gather(trainer, pl_module)
        self._flushed.clear()
        return merged

    def _gather(
        self, trainer: Trainer | None, pl_module: LightningModule | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        if self._flushed:
            index = torch.cat([f[0] for f in self._flushed])
            values = torch.cat([f[1] for f in self._flushed])
            targets = None if self._flushed[0][2] is None else torch.cat([f[2] for f in self._flushed])  # type: ignore[misc]
        else:
            index = torch.empty(0, dtype=torch.int64)
            values = torch.empty(0)
            targets = torch.empty(0, dtype=torch.int64) if self._needs_targets else None
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            assert pl_module is not None
            device = pl_module.device
            index = all_gather_variable(index.to(device), world).cpu()
            values = all_gather_variable(values.to(device), world).cpu()
            if targets is not None:
                targets = all_gather_variable(targets.to(device), world).cpu()
        return index, values, targets

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
        # Records not yet merged into the score table (a checkpoint saved before this epoch's end, e.g. at a
        # mid-epoch validation or by `every_n_train_steps`) are saved too, gathered from every rank: Lightning
        # builds the checkpoint on every rank, so the collective is safe.
        self._flush()
        records: tuple[Tensor, Tensor, Tensor | None] | None = self._gather(self._trainer, self._module)
        if records is not None and records[0].numel() == 0:  # every rank joins the gather, also one without records
            records = None
        return {
            "nonfinite_total": self._nonfinite_total,
            "novelty_mean": self._novelty_mean.cpu() if self._novelty_mean is not None else None,
            "labels": self._labels,
            "unmerged_index": records[0] if records else None,
            "unmerged_values": records[1] if records else None,
            "unmerged_targets": records[2] if records else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._nonfinite_total = int(state_dict.get("nonfinite_total", 0))
        self._novelty_mean = state_dict.get("novelty_mean")
        self._labels = state_dict.get("labels")
        self._pending.clear()
        self._flushed.clear()
        index = state_dict.get("unmerged_index")
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if index is not None and index.numel() and rank == 0:
            # the records of all ranks, restored once: the epoch-end merge gathers them from rank 0 to every rank
            # (restored on every rank they would count world_size times against the steps trained after resume)
            self._flushed.append((index, state_dict["unmerged_values"], state_dict.get("unmerged_targets")))


def _quantiles(scores: Tensor, max_points: int = 1 << 20) -> dict[str, float]:
    seen = scores[~torch.isnan(scores)]
    if seen.numel() == 0:
        return {}
    if seen.numel() > max_points:
        seen = seen[torch.randint(seen.numel(), (max_points,), generator=torch.Generator().manual_seed(0))]
    q = torch.quantile(seen.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {"per/score_q10": float(q[0]), "per/score_q50": float(q[1]), "per/score_q90": float(q[2])}
