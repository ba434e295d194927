"""PrioritizedDataModule: a LightningDataModule whose training sampler is re-weighted every epoch."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, Dataset

from lightning_per._checks import check_int, check_number
from lightning_per.indexed import IndexedCollate, IndexedDataset, check_map_style, holdout_split
from lightning_per.sampler import PrioritizedSampler, schedule_notices
from lightning_per.score_table import ScoreTable
from lightning_per.strategy import SamplingPlan, SamplingStrategy, StrategyName, as_strategy

__all__ = ["PrioritizedDataModule"]


class PrioritizedDataModule(LightningDataModule):
    """Serves training batches drawn by a ``SamplingStrategy`` from per-sample scores.

    Give it your map-style datasets (or subclass it and set ``train_dataset`` / ``val_dataset`` / ``test_dataset``
    in ``setup``) and add ``LossTracker`` (or a selection callback) to the Trainer. Training batches arrive as
    ``PrioritizedBatch``: your batch, plus ``batch.index`` (dataset indices) and ``batch.weight`` (importance
    weights). Under DDP every process draws its own disjoint share of the same plan. The score table and the
    sampler's epoch are saved in checkpoints; validation and test loaders are plain.

    Args:
        train_dataset: map-style training set (``None``: set ``self.train_dataset`` in ``setup``).
        val_dataset: validation set, or ``None``.
        test_dataset: test set, or ``None``.
        batch_size: training batch size per process.
        strategy: a ``SamplingStrategy``, a strategy name, a dict of its arguments (as in YAML), or ``None`` for
            uniform.
        num_workers: DataLoader workers.
        eval_batch_size: batch size of the validation and test loaders (``None``: ``batch_size``).
        seed: seed of the sampler (``None``: the global torch seed, e.g. from ``seed_everything``, taken from
            rank 0 so all ranks agree).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (with ``num_workers > 0``).
        drop_last: drop the last incomplete training batch.
        collate_fn: collates samples (``None``: ``default_collate``); an import path in YAML.
        holdout_fraction: share of the training set held out as ``holdout_dataset`` (for ``IrreducibleLoss``) and
            removed from training, in [0, 1); sample indices then number the rest.
        holdout_seed: seed of the holdout's random choice.

    Raises:
        ValueError: a bad argument (named in the message).
        TypeError: ``strategy`` of another type, or a dict with a key ``SamplingStrategy`` does not take.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = TensorDataset(torch.randn(8, 3), torch.arange(8))
        >>> dm = PrioritizedDataModule(data, batch_size=4, strategy=SamplingStrategy("rank", alpha=0.7), seed=0)
        >>> batch = next(iter(dm.train_dataloader()))  # epoch 0 is uniform: nothing is scored yet
        >>> x, y = batch
        >>> x.shape, batch.index.shape, batch.weight.tolist()
        (torch.Size([4, 3]), torch.Size([4]), [1.0, 1.0, 1.0, 1.0])
    """

    def __init__(
        self,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        batch_size: int = 32,
        strategy: SamplingStrategy | StrategyName | None = None,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
    ) -> None:
        super().__init__()
        check_number("holdout_fraction", holdout_fraction, 0.0, 1.0, high_open=True)
        check_int("holdout_seed", holdout_seed)
        check_int("batch_size", batch_size, 1)
        check_int("eval_batch_size", eval_batch_size, 1, optional=True)
        check_int("num_workers", num_workers, 0)
        check_int("seed", seed, optional=True)
        self.holdout_fraction = holdout_fraction
        self.holdout_seed = holdout_seed
        self._split: tuple[Dataset, Dataset] | None = None
        strategy = as_strategy(strategy)
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.test_dataset = test_dataset
        self._said_no_validation = False  # the one line in place of Lightning's warning, once
        self.batch_size = batch_size
        self._strategy = strategy
        self.num_workers = num_workers
        self.eval_batch_size = eval_batch_size or batch_size
        self.seed = seed
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self._scores: ScoreTable | None = None
        self._sampler: PrioritizedSampler | None = None
        self._pending_state: dict[str, Any] | None = None
        self._warned_schedule: str | None = None
        self._saved_max_epochs: int | None = None  # of the run a checkpoint came from
        self.recorded_by: str | None = None  # the callback that records scores into the table (set at its setup)

    # ----------------------------------------------------------------------------------------------- data
    @property
    def strategy(self) -> SamplingStrategy:
        """The sampling strategy; setting it (a strategy, a name or a dict) takes effect from the next plan on."""
        return self._strategy

    @strategy.setter
    def strategy(self, strategy: SamplingStrategy | StrategyName | None) -> None:
        self._strategy = as_strategy(strategy)
        if self._sampler is not None:
            self._sampler.strategy = self._strategy

    @property
    def train_dataset(self) -> Dataset | None:
        """The training set: what was given or set, less the ``holdout_fraction`` held out (its indices number it)."""
        if self.holdout_fraction == 0 or self._given_train is None:
            return self._given_train
        return self._holdout_split()[0]

    @train_dataset.setter
    def train_dataset(self, dataset: Dataset | None) -> None:
        check_map_style(dataset)
        self._given_train = dataset
        self._split = None

    @property
    def holdout_dataset(self) -> Dataset | None:
        """The held-out part of the training set (``None`` without ``holdout_fraction``)."""
        if self.holdout_fraction == 0 or self._given_train is None:
            return None
        return self._holdout_split()[1]

    def _holdout_split(self) -> tuple[Dataset, Dataset]:
        if self._split is None:
            self._split = holdout_split(self._given_train, self.holdout_fraction, self.holdout_seed)  # type: ignore[arg-type]
        return self._split

    # ----------------------------------------------------------------------------------------------- state
    @property
    def scores(self) -> ScoreTable:
        """The per-sample score table (created on first use, sized to the training set)."""
        if self._scores is None:
            self._scores = ScoreTable(self._train_length())
            if self._pending_state is not None:
                self._scores.load_state_dict(self._pending_state["scores"])
        return self._scores

    @property
    def sampler(self) -> PrioritizedSampler:
        """The training sampler (created on first use)."""
        if self._sampler is None:
            world, rank = self._world()
            self._sampler = PrioritizedSampler(
                self.train_dataset,  # type: ignore[arg-type]
                scores=self.scores,
                strategy=self.strategy,
                num_replicas=world,
                rank=rank,
                seed=self._resolve_seed(),
                max_epochs=self.trainer.max_epochs if self.trainer is not None else None,
            )
            if self._pending_state is not None:
                self._sampler.load_state_dict(self._pending_state["sampler"])
        return self._sampler

    def state_dict(self) -> dict[str, Any]:
        """Score table and sampler state; tensors and plain values only."""
        if self._scores is None:
            return dict(self._pending_state or {})
        return {"scores": self._scores.state_dict(), "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the score table and sampler state (checked against the training set's length).

        Raises:
            ValueError: the checkpoint was made with a training set of another length.
        """
        if "scores" not in state_dict:
            return
        self._pending_state = state_dict
        self._saved_max_epochs = state_dict.get("sampler", {}).get("max_epochs")
        self._scores, self._sampler = None, None
        if self.train_dataset is not None:
            _ = self.scores  # validates the length now

    def prepare_epoch(self, epoch: int) -> SamplingPlan:
        """Set the sampler to ``epoch`` and build its plan now (called by the callbacks at epoch end)."""
        self.sampler.set_epoch(epoch)
        return self.sampler.plan()

    # ---------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """The prioritized training loader: batches are ``PrioritizedBatch``."""
        self._follow_train_set()
        sampler = self.sampler
        if self.trainer is not None:  # the world may not have been known when the sampler was first used
            sampler.num_replicas, sampler.rank = self._world()
            if self.trainer.max_epochs is not None:
                sampler.max_epochs = self.trainer.max_epochs
            self._check_schedule(self.trainer.max_epochs)
        per_rank = len(sampler)
        drop_last = self.drop_last
        if drop_last and per_rank < self.batch_size:
            full = math.ceil(self._train_length() / sampler.num_replicas)
            if full < self.batch_size:
                raise ValueError(
                    f"`batch_size={self.batch_size}` with `drop_last=True` leaves no batch: each process gets "
                    f"{full} samples. Lower `batch_size` or set `drop_last=False`."
                )
            # this epoch's plan (a pruned one) is shorter than a batch: keep its only, partial batch
            drop_last = False
            rank_zero_warn(
                f"Epoch {sampler.epoch}'s plan gives each process {per_rank} samples, fewer than `batch_size="
                f"{self.batch_size}`: this epoch keeps its partial batch despite `drop_last=True`."
            )
        return DataLoader(
            IndexedDataset(self.train_dataset),  # type: ignore[arg-type]
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=IndexedCollate(self.collate_fn),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
        )

    # Lightning validates (tests) when the DataModule overrides `val_dataloader` (`test_dataloader`), and checks that
    # before `setup`. These properties give Lightning's own undefined hook when there is no such set and none can
    # come (no `setup` of a subclass may set one), so Lightning skips the loop; otherwise the loader, empty while the
    # set is missing. A module with a `validation_step` and no validation set gets one line of ours in place of
    # Lightning's warning (muted by its message, for the process).
    @property
    def val_dataloader(self) -> Callable[[], Any]:
        """A plain loader over ``val_dataset``; undefined (no validation) when there is none."""
        if self.val_dataset is None and not self._sets_datasets_in_setup():
            warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
            module = getattr(self.trainer, "lightning_module", None)
            if module is not None and is_overridden("validation_step", module) and not self._said_no_validation:
                self._said_no_validation = True
                rank_zero_info("PrioritizedDataModule has no `val_dataset`: `validation_step` does not run.")
            return super().val_dataloader
        return self._val_loader

    @property
    def test_dataloader(self) -> Callable[[], Any]:
        """A plain loader over ``test_dataset``; undefined (no testing) when there is none."""
        if self.test_dataset is None and not self._sets_datasets_in_setup():
            return super().test_dataloader
        return self._test_loader

    def _sets_datasets_in_setup(self) -> bool:
        return type(self).setup is not LightningDataModule.setup

    def _val_loader(self) -> Any:
        return [] if self.val_dataset is None else self._eval_loader(self.val_dataset)

    def _test_loader(self) -> Any:
        return [] if self.test_dataset is None else self._eval_loader(self.test_dataset)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    # ---------------------------------------------------------------------------------------------- helpers
    def _train_length(self) -> int:
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError(
                f"{type(self).__name__} has no `train_dataset`: pass one to the constructor or set "
                "`self.train_dataset` in `setup`."
            )
        check_map_style(dataset)
        length = len(dataset)  # type: ignore[arg-type]
        if length == 0:
            raise ValueError("`train_dataset` is empty.")
        return length

    def _follow_train_set(self) -> None:
        """Start the score table and the sampler afresh if ``train_dataset`` was replaced by one of another length.

        A table sized to the old set would leave new samples undrawn or index past the end of a smaller one.
        """
        if self._scores is None:
            return
        length = self._train_length()
        if length == len(self._scores):
            if self._sampler is not None:
                self._sampler.dataset = self.train_dataset  # type: ignore[assignment]
            return
        rank_zero_warn(
            f"`train_dataset` now has {length} samples but the score table was built for {len(self._scores)}: "
            "the scores and the sampler start afresh (the next epoch is uniform). Use a new PrioritizedDataModule "
            "to make this explicit."
        )
        self._scores, self._sampler, self._pending_state = None, None, None

    def _world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 1, 0
        return self.trainer.world_size, self.trainer.global_rank

    def _resolve_seed(self) -> int:
        if self.seed is not None:
            return self.seed
        seed = torch.initial_seed() % (2**31)
        if self.trainer is not None and self.trainer.world_size > 1:
            lightning_strategy = self.trainer.strategy  # Lightning's distributed strategy (DDP), not the sampling one
            seed = int(lightning_strategy.broadcast(seed, src=0))
        return seed

    def _check_schedule(self, max_epochs: int | None) -> None:
        """Warn once when the schedule cannot anneal or never applies; warn when a resume changed it."""
        saved, self._saved_max_epochs = self._saved_max_epochs, None
        notice, rescaled = schedule_notices(self.strategy, max_epochs, saved, self.sampler.epoch, self.scores.seen > 0)
        if notice and notice != self._warned_schedule:  # each distinct notice once
            self._warned_schedule = notice
            rank_zero_warn(notice)
        if rescaled:
            rank_zero_warn(rescaled)

    def teardown(self, stage: str) -> None:
        """Keep the score table across ``fit`` calls; nothing to release."""
        prioritized = self.strategy.name != "uniform"
        unrecorded = self.recorded_by is None and self._scores is not None and self._scores.seen == 0
        if stage == "fit" and prioritized and unrecorded:
            rank_zero_warn(
                "No per-sample score was recorded during fit: add `LossTracker()` to the Trainer's callbacks "
                "so that PrioritizedDataModule can re-weight its sampler."
            )
