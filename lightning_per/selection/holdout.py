"""The holdout model of ``IrreducibleLoss`` and ``TokenSelection``: its holdout set, its fit, its pass, its errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_per.batch import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import IndexedCollate, IndexedDataset
from lightning_per.plumbing.distributed import all_gather_variable
from lightning_per.plumbing.inference import quiet_inner_fit, scoring_mode
from lightning_per.plumbing.loaders import shard_loader

__all__ = ["fit_holdout_model", "from_the_holdout_model", "resolve_holdout", "score_training_set"]


def resolve_holdout(given: Dataset | None, datamodule: object) -> Dataset | None:
    """The holdout set: ``given``, else a ``PrioritizedDataModule``'s ``holdout_dataset``, else ``None``."""
    if given is not None:
        return given
    return datamodule.holdout_dataset if isinstance(datamodule, PrioritizedDataModule) else None


def fit_holdout_model(
    model: LightningModule,
    holdout: Dataset,
    trainer: Trainer,
    device: torch.device,
    datamodule: object,
    max_epochs: int,
    batch_size: int | None,
    seed: int,
) -> float:
    """Train ``model`` on ``holdout``: a quiet fit of its own on ``device``, the caller's RNG left untouched.

    It uses the main ``trainer``'s accelerator and precision, and the batch size, collate function and workers of a
    ``PrioritizedDataModule`` (``batch_size`` overrides the batch size; 32 without a DataModule). Returns its cost in
    forward-sample units: a forward and backward (3) per holdout sample and epoch.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        indexed = isinstance(datamodule, PrioritizedDataModule)
        loader = DataLoader(
            IndexedDataset(holdout),
            batch_size=batch_size or (datamodule.batch_size if indexed else 32),  # type: ignore[attr-defined]
            shuffle=True,
            collate_fn=IndexedCollate(datamodule.collate_fn if indexed else None),  # type: ignore[attr-defined]
            num_workers=datamodule.num_workers if indexed else 0,  # type: ignore[attr-defined]
            generator=torch.Generator().manual_seed(seed),
        )
        with quiet_inner_fit():  # the user's run prints its own banner; this fit is a step of it
            fitter = Trainer(
                accelerator=type(trainer.accelerator)(),
                devices=[device.index or 0] if device.type == "cuda" else 1,
                precision=trainer.precision,
                max_epochs=max_epochs,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                limit_val_batches=0,
                default_root_dir=trainer.default_root_dir,
            )
            fitter.fit(model, train_dataloaders=loader)
    return 3.0 * max_epochs * len(holdout)  # type: ignore[arg-type]


def score_training_set(
    model: LightningModule,
    trainer: Trainer,
    datamodule: PrioritizedDataModule,
    batch_size: int | None,
    per_sample: Callable[[Any, PrioritizedBatch], Tensor],
) -> Tensor:
    """Every training sample's loss under ``model`` (already on the device): this process's shard, gathered.

    ``per_sample(outputs, batch)`` reads the batch's losses, one per sample, from a ``training_step`` output. The
    table is by dataset index, float32, on the CPU and the same on every process; a sample no process scored is NaN.
    """
    device = model.device
    world, rank = trainer.world_size, trainer.global_rank
    loader = shard_loader(datamodule, rank, world, batch_size=batch_size)
    index_parts, loss_parts = [], []
    with scoring_mode(model, trainer):
        for i, batch in enumerate(loader):
            batch = batch.to(device)
            index_parts.append(batch.index)
            loss_parts.append(per_sample(model.training_step(batch, i), batch))
    index = torch.cat(index_parts) if index_parts else torch.empty(0, dtype=torch.int64, device=device)
    values = torch.cat(loss_parts) if loss_parts else torch.empty(0, device=device)
    index = all_gather_variable(index.to(device), world).cpu()
    values = all_gather_variable(values.to(device), world).cpu()
    table = torch.full((len(datamodule.train_dataset),), float("nan"), dtype=torch.float32)  # type: ignore[arg-type]
    table[index] = values
    return table


@contextmanager
def from_the_holdout_model(model: LightningModule, doing: str) -> Iterator[None]:
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
