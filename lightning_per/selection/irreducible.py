"""IrreducibleLoss: the loss of every training sample under a small model trained on a holdout set (RHO-LOSS)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_per._checks import check_choice, check_int
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import IndexedCollate, IndexedDataset
from lightning_per.plumbing.distributed import all_gather_variable
from lightning_per.plumbing.inference import quiet_inner_fit, scoring_mode
from lightning_per.plumbing.loaders import shard_loader
from lightning_per.plumbing.requirements import require_datamodule
from lightning_per.score import Score

__all__ = ["IrreducibleLoss", "find_irreducible", "register_reader"]


class IrreducibleLoss(Callback):
    """Trains a small model on a holdout set once, then records the loss of every training sample under it.

    The irreducible loss of Mindermann et al. (ICML 2022, RHO-LOSS), which the ``reducible`` score subtracts from the
    current loss. At the start of ``fit`` the callback trains ``model`` on the holdout (a short Lightning fit of its
    own, on this process's device, with the main Trainer's accelerator and precision; under DDP every process trains
    its own copy from the same seed), then computes the loss of every training sample under it: one float32 per
    sample, by dataset index, the same on every process (``table``). The table is saved in checkpoints and not
    computed again on resume; its cost in forward-sample units (a forward 1, a forward and backward 3) is
    ``cost_units``.

    Args:
        model: the irreducible-loss model, a LightningModule whose ``training_step`` returns per-sample losses under
            ``loss_key``; trained here unless ``train=False``.
        holdout_dataset: the holdout set (``None``: the DataModule's ``holdout_dataset``, from
            ``PrioritizedDataModule(holdout_fraction=...)``, which removes it from training).
        max_epochs: epochs of the model's training on the holdout.
        batch_size: batch size of that training and of the pass over the training set (``None``: the DataModule's).
        train: train ``model`` on the holdout (``False``: it is already trained).
        loss_key: key of the per-sample losses in ``model``'s ``training_step`` output.
        seed: seed of the model's training (the main run's random state is left as it was).
        token_reduction: per-token losses ``(n, T)`` of sequences to one loss per sequence: ``mean`` over its real
            tokens (as ``Score``'s default) or ``sum``; use the same as the score that reads the table.

    Raises:
        TypeError: ``model`` is not a LightningModule; at setup, training data that does not come from a
            ``PrioritizedDataModule``.
        ValueError: a bad argument; at setup, no ``model`` or no holdout; at fit start, a saved table of another
            length, or a model whose ``training_step`` does not return one loss per sample under ``loss_key``.

    Example:
        >>> from lightning_per.examples import Classifier
        >>> irreducible = IrreducibleLoss(model=Classifier(in_features=4), max_epochs=10)
        >>> irreducible.table is None  # computed at the start of fit
        True
    """

    def __init__(
        self,
        model: LightningModule | None = None,
        holdout_dataset: Dataset | None = None,
        max_epochs: int = 10,
        batch_size: int | None = None,
        train: bool = True,
        loss_key: str = "per_sample_loss",
        seed: int = 0,
        token_reduction: Literal["mean", "sum"] = "mean",
    ) -> None:
        if model is not None and not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a LightningModule, got {type(model).__name__}.")
        check_int("max_epochs", max_epochs, 1)
        check_int("batch_size", batch_size, 1, optional=True)
        check_int("seed", seed)
        check_choice("token_reduction", token_reduction, ("mean", "sum"))
        self.model = model
        self.holdout_dataset = holdout_dataset
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.train = train
        self.loss_key = loss_key
        self.seed = seed
        self.token_reduction = token_reduction
        self.table: Tensor | None = None
        self.cost_units = 0.0
        self.seconds = 0.0
        self._sizes: tuple[int, int] | None = None  # (training set, holdout) the table was computed for
        self._readers = 0  # callbacks that read the table (`score='reducible'`), counted at their setup

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = require_datamodule(trainer, "IrreducibleLoss", why=" (the table is indexed like its samples)")
        if self.model is None:
            raise ValueError("IrreducibleLoss needs `model`: the small model to train on the holdout set.")
        if self._holdout(datamodule) is None and self.train:
            raise ValueError(
                "IrreducibleLoss has no holdout set to train on: pass `holdout_dataset=...`, or hold out part of the "
                "training set with `PrioritizedDataModule(holdout_fraction=0.25)` (removed from training), or pass an "
                "already trained model with `train=False`."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        sizes = (len(datamodule.train_dataset), len(self._holdout(datamodule) or []))  # type: ignore[arg-type]
        if self.table is not None:  # restored from a checkpoint
            self._check_restored(sizes)
            return
        if not self._readers:
            rank_zero_warn(
                "IrreducibleLoss: no callback reads the irreducible losses (only `score='reducible'` does: "
                "`TopKSelection()`, `LossTracker(score='reducible')`, ...), so the holdout model is trained and the "
                "training set scored for nothing. Remove IrreducibleLoss (and `holdout_fraction`), or set "
                "`score='reducible'` on the callback that should use them."
            )
        start = time.perf_counter()
        assert self.model is not None
        if self.train:
            with _from_the_holdout_model(self.model, "training it on the holdout set"):
                self._fit_model(trainer, pl_module, datamodule)
            self.cost_units = 3.0 * self.max_epochs * sizes[1]
        with _from_the_holdout_model(self.model, "scoring the training set with it"):
            self.table = self._compute_table(trainer, pl_module, datamodule)
        self.cost_units += sizes[0]
        self.seconds = time.perf_counter() - start
        self._sizes = sizes
        unknown = int(torch.isnan(self.table).sum())
        if unknown:
            rank_zero_warn(f"IrreducibleLoss: {unknown} training samples have a non-finite irreducible loss (NaN).")
        rank_zero_info(
            f"IrreducibleLoss: {'trained on ' + str(sizes[1]) + ' holdout samples and ' if self.train else ''}scored "
            f"{sizes[0]} training samples in {self.seconds:.2f} s ({self.cost_units:.3g} forward-sample units)."
        )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._readers = 0  # the readers' setups count themselves in again at the next fit

    def _holdout(self, datamodule: PrioritizedDataModule) -> Dataset | None:
        return self.holdout_dataset if self.holdout_dataset is not None else datamodule.holdout_dataset

    def _fit_model(self, trainer: Trainer, pl_module: LightningModule, datamodule: PrioritizedDataModule) -> None:
        """Train the model on the holdout: a fit of its own on this process's device, the main RNG left untouched."""
        assert self.model is not None
        holdout = self._holdout(datamodule)
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            loader = DataLoader(
                IndexedDataset(holdout),  # type: ignore[arg-type]
                batch_size=self.batch_size or datamodule.batch_size,
                shuffle=True,
                collate_fn=IndexedCollate(datamodule.collate_fn),
                num_workers=datamodule.num_workers,
                generator=torch.Generator().manual_seed(self.seed),
            )
            with quiet_inner_fit():  # the user's run prints its own banner; this fit is a step of it
                fitter = Trainer(
                    accelerator=type(trainer.accelerator)(),
                    devices=[device.index or 0] if device.type == "cuda" else 1,
                    precision=trainer.precision,
                    max_epochs=self.max_epochs,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    limit_val_batches=0,
                    default_root_dir=trainer.default_root_dir,
                )
                fitter.fit(self.model, train_dataloaders=loader)

    def _compute_table(self, trainer: Trainer, pl_module: LightningModule, datamodule: PrioritizedDataModule) -> Tensor:
        """Every training sample's loss under the model: this process's shard, gathered from every process."""
        assert self.model is not None
        model = self.model.to(pl_module.device)
        world, rank = trainer.world_size, trainer.global_rank
        loader = shard_loader(datamodule, rank, world, batch_size=self.batch_size)
        index_parts, loss_parts = [], []
        with scoring_mode(model, trainer):
            for i, batch in enumerate(loader):
                batch = batch.to(pl_module.device)
                outputs = model.training_step(batch, i)
                losses = outputs.get(self.loss_key) if isinstance(outputs, Mapping) else None
                if isinstance(losses, Tensor) and losses.ndim > 1 and losses.shape[0] == batch.batch_size:
                    reader = Score(
                        loss_key=self.loss_key, token_reduction=self.token_reduction, owner="IrreducibleLoss"
                    )
                    losses = reader(outputs, batch)  # per-token losses: one per sequence, over its real tokens
                if not isinstance(losses, Tensor) or losses.numel() != batch.batch_size:
                    got = tuple(losses.shape) if isinstance(losses, Tensor) else type(outputs).__name__
                    raise ValueError(
                        f"IrreducibleLoss: the model's `training_step` must return one loss per sample under "
                        f"{self.loss_key!r} (e.g. `F.cross_entropy(logits, y, reduction='none')`); got {got}."
                    )
                index_parts.append(batch.index)
                loss_parts.append(losses.detach().reshape(-1).float())
        device = pl_module.device
        index = torch.cat(index_parts) if index_parts else torch.empty(0, dtype=torch.int64, device=device)
        values = torch.cat(loss_parts) if loss_parts else torch.empty(0, device=device)
        index = all_gather_variable(index.to(device), world).cpu()
        values = all_gather_variable(values.to(device), world).cpu()
        table = torch.full((len(datamodule.train_dataset),), float("nan"), dtype=torch.float32)  # type: ignore[arg-type]
        table[index] = values
        return table

    def _check_restored(self, sizes: tuple[int, int]) -> None:
        assert self.table is not None
        if self.table.numel() != sizes[0] or (self._sizes is not None and self._sizes != sizes):
            saved = self._sizes or (self.table.numel(), -1)
            raise ValueError(
                f"The checkpoint's irreducible losses are for {saved[0]} training samples (holdout {saved[1]}), but "
                f"this run has {sizes[0]} (holdout {sizes[1]}): the table would be read at other samples' indices. "
                "Resume with the same data and `holdout_fraction`, or start a new run without `ckpt_path`."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "sizes": list(self._sizes) if self._sizes is not None else None,
            "cost_units": self.cost_units,
            "seconds": self.seconds,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.table = state_dict.get("table")
        sizes = state_dict.get("sizes")
        self._sizes = (int(sizes[0]), int(sizes[1])) if sizes is not None else None
        self.cost_units = float(state_dict.get("cost_units", 0.0))
        self.seconds = float(state_dict.get("seconds", 0.0))


def find_irreducible(trainer: Trainer, owner: str) -> IrreducibleLoss:
    """The Trainer's ``IrreducibleLoss`` callback, for a ``reducible`` score.

    Raises:
        ValueError: there is none.
    """
    found = [c for c in trainer.callbacks if isinstance(c, IrreducibleLoss)]  # type: ignore[attr-defined]
    if not found:
        raise ValueError(
            f"{owner}(score='reducible') needs the irreducible loss of every training sample: add "
            "`lightning_per.IrreducibleLoss(model=...)` to the Trainer's callbacks (it trains a small model on a "
            "holdout set once and computes them)."
        )
    return found[0]


def register_reader(trainer: Trainer, owner: str) -> IrreducibleLoss:
    """``find_irreducible``, counting ``owner`` as a reader of the table (called once per fit, at setup)."""
    irreducible = find_irreducible(trainer, owner)
    irreducible._readers += 1
    return irreducible


@contextmanager
def _from_the_holdout_model(model: LightningModule, doing: str) -> Iterator[None]:
    """Say that an error raised inside the holdout model's code came from it (a wrong feature size, say).

    Raises:
        ValueError: from the model's ``RuntimeError`` (shape and dtype errors), naming the model and the step.
    """
    try:
        yield
    except RuntimeError as error:
        raise ValueError(
            f"IrreducibleLoss: the holdout model ({type(model).__name__}) failed while {doing}: {error}. It must "
            "take the same batches as your training set (same features and targets) and return per-sample losses."
        ) from error
