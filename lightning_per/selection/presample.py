"""The presample of a selection step: the loader's batch plus extra points drawn uniformly from this process's shard."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader

from lightning_per.batch import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.plumbing.inference import prepare_batch
from lightning_per.plumbing.loaders import shard, shard_loader
from lightning_per.tree import concat_batches, select

__all__ = ["ExtraPoints", "derive_seed"]


class ExtraPoints:
    """The extra points of every presample: uniform draws with replacement from this process's shard.

    Batch ``k`` of the stream comes from a generator seeded by ``(seed, rank, k)``, so the stream is the same however
    the DataLoader prefetches (workers included), and a resumed run continues it from ``batches_drawn``.

    Args:
        factor: ``B / b``, the presample's size in batches; the extras are ``factor - 1`` batches.
        seed: the base seed.
    """

    def __init__(self, factor: int, seed: int) -> None:
        self.factor = factor
        self.seed = seed
        self.batches_drawn = 0
        self._stream: Iterator[PrioritizedBatch] | None = None

    def presample(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch) -> PrioritizedBatch:
        """``batch`` followed by ``(factor - 1) * batch.batch_size`` extra points, on the module's device."""
        extras = self._next(trainer, pl_module, (self.factor - 1) * batch.batch_size)
        return concat_batches(PrioritizedBatch(batch.data, batch.index, batch.weight), extras)

    def close(self) -> None:
        """Shut the extra points' loader (and its workers) down; the next presample starts a new one."""
        self._stream = None

    def _next(self, trainer: Trainer, pl_module: LightningModule, count: int) -> PrioritizedBatch:
        parts: list[PrioritizedBatch] = []
        total = 0
        while total < count:
            if self._stream is None:
                self._stream = iter(self._loader(trainer))
            part = next(self._stream)
            self.batches_drawn += 1
            parts.append(part)
            total += part.batch_size
        joined = parts[0]
        for part in parts[1:]:
            joined = concat_batches(joined, part)
        if total > count:
            joined = select(joined, torch.arange(count))
        return prepare_batch(trainer, pl_module, joined)

    def _loader(self, trainer: Trainer) -> DataLoader:
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        per_batch = (self.factor - 1) * datamodule.batch_size  # fixed, so a resumed stream draws the same batches
        size = len(datamodule.train_dataset)  # type: ignore[arg-type]
        world, rank = trainer.world_size, trainer.global_rank
        share = shard(size, rank, world) or range(size)  # a process without a share draws from every sample
        draws = _Batches(share, per_batch, self.seed, rank, start=self.batches_drawn)
        return shard_loader(datamodule, rank, world, batch_sampler=draws, pin_memory=datamodule.pin_memory)


class _Batches:
    """Batch sampler without end: batch ``k`` holds ``size`` uniform draws with replacement from ``shard``."""

    def __init__(self, shard: range, size: int, seed: int, rank: int, start: int = 0) -> None:
        self.shard = shard
        self.size = size
        self.seed = seed
        self.rank = rank
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        k = self.start
        while True:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.rank, k, 1))
            draws = torch.randint(len(self.shard), (self.size,), generator=generator)
            yield [self.shard[j] for j in draws.tolist()]
            k += 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (SplitMix64 finalizer over the keys; cheap enough for every step).

    Example:
        >>> derive_seed(0, 1) != derive_seed(1, 0)
        True
    """
    mask = (1 << 64) - 1
    state = 0x9E3779B97F4A7C15
    for key in keys:
        state = (state ^ (key & mask)) * 0xBF58476D1CE4E5B9 & mask
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & mask
        state ^= state >> 29
    return state >> 1
