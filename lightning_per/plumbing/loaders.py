"""The one builder of loaders over this process's share of the training set, in the DataModule's own settings.

The scoring passes (``LossTracker(refresh_every_n_epochs=...)``, ``IrreducibleLoss``'s table) read a shard in order;
the presample's extra points are drawn from it by a batch sampler. Both collate into ``PrioritizedBatch`` with the
DataModule's collate function and workers.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch.utils.data import DataLoader, Subset

from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import IndexedCollate, IndexedDataset

__all__ = ["shard", "shard_loader"]


def shard(size: int, rank: int, world: int) -> range:
    """The indices of process ``rank``'s share of ``size`` samples: ``rank, rank + world, ...``, every sample once.

    Example:
        >>> list(shard(5, 1, 2)), list(shard(2, 3, 4))
        ([1, 3], [])
    """
    return range(rank, size, world)


def shard_loader(
    datamodule: PrioritizedDataModule,
    rank: int,
    world: int,
    batch_size: int | None = None,
    batch_sampler: Iterable[list[int]] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of ``PrioritizedBatch`` over process ``rank``'s shard of ``datamodule.train_dataset``.

    Args:
        datamodule: whose training set, collate function and workers are used.
        rank: this process.
        world: the number of processes.
        batch_size: batches of the shard in order (``None``: the DataModule's ``eval_batch_size``).
        batch_sampler: yields lists of dataset indices instead (e.g. draws from the shard); ``batch_size`` is ignored.
        pin_memory: DataLoader ``pin_memory``.
    """
    dataset = IndexedDataset(datamodule.train_dataset)  # type: ignore[arg-type]
    common = dict(collate_fn=IndexedCollate(datamodule.collate_fn), num_workers=datamodule.num_workers)
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, pin_memory=pin_memory, **common)  # type: ignore[arg-type]
    indices = shard(len(dataset), rank, world)
    size = batch_size or datamodule.eval_batch_size
    return DataLoader(Subset(dataset, indices), batch_size=size, pin_memory=pin_memory, **common)  # type: ignore[arg-type]
