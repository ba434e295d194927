"""Where a selection step's presample comes from, besides the indexed extras of ``presample.py``.

- ``DeviceExtras`` (``mode="device"``): the training set is a ``TensorDataset`` (or a ``Subset`` of one, as
  ``holdout_fraction`` makes): its tensors are moved to the module's device once, and each step's extra points are
  drawn and gathered there, with no second DataLoader, no collate and no host synchronisation.
- ``LargeBatch`` (``mode="large_batch"``): the loader yields batches of ``B = presample * b`` points (any loader: map
  style or an ``IterableDataset``, a stream) and the presample is the batch itself; no sample index is needed.
  ``StreamCollate`` turns a plain loader's batches into ``PrioritizedBatch`` so that ``weighted_mean`` finds their
  weights; the engine installs it on the training loader when the batches are not ``PrioritizedBatch`` already.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

from lightning_per.batch import PrioritizedBatch
from lightning_per.selection.presample import derive_seed
from lightning_per.tree import concat_batches

__all__ = ["NO_INDEX", "DeviceExtras", "LargeBatch", "StreamCollate", "tensor_rows"]

NO_INDEX = -1
"""The ``batch.index`` of a sample from a stream, which has no dataset index."""


def tensor_rows(dataset: Dataset | None) -> tuple[tuple[Tensor, ...], Tensor | None] | None:
    """The tensors behind ``dataset`` and the row of each of its samples (``None``: rows 0, 1, ...).

    ``None`` when the dataset is not a ``TensorDataset`` or a (nested) ``Subset`` of one.

    Example:
        >>> base = TensorDataset(torch.arange(5.0), torch.arange(5))
        >>> tensors, rows = tensor_rows(Subset(base, [4, 1]))
        >>> len(tensors), rows.tolist()
        (2, [4, 1])
    """
    rows: Tensor | None = None
    while isinstance(dataset, Subset):
        index = torch.as_tensor(list(dataset.indices), dtype=torch.int64)
        rows = index if rows is None else index[rows]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorDataset):
        return None
    return tuple(dataset.tensors), rows


class DeviceExtras:
    """Extra presample points drawn and gathered on the module's device from the training set's tensors.

    Step ``k``'s draws come from a generator on the device seeded by ``(seed, rank, k)``: uniform with replacement
    from this process's shard, as ``ExtraPoints`` draws them, so a resumed run continues from ``batches_drawn``.

    Args:
        factor: ``B / b``; the extras are ``(factor - 1) * b`` points.
        seed: the base seed.
    """

    def __init__(self, factor: int, seed: int) -> None:
        self.factor = factor
        self.seed = seed
        self.batches_drawn = 0
        self._tensors: tuple[Tensor, ...] = ()
        self._rows: Tensor | None = None  # the tensor row of each shard position
        self._positions: Tensor | None = None  # this process's shard of training-set positions

    def presample(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch) -> PrioritizedBatch:
        """``batch`` followed by ``(factor - 1) * batch.batch_size`` extra points, all on the module's device."""
        if self._positions is None:
            self._load(trainer, pl_module)
        assert self._positions is not None and self._rows is not None
        device = self._positions.device
        generator = torch.Generator(device=device).manual_seed(
            derive_seed(self.seed, trainer.global_rank, self.batches_drawn, 2)
        )
        self.batches_drawn += 1
        count = (self.factor - 1) * batch.batch_size
        draws = torch.randint(self._positions.numel(), (count,), generator=generator, device=device)
        positions = self._positions[draws]
        rows = self._rows[positions]
        fields = [t.index_select(0, rows) for t in self._tensors]
        data = type(batch.data)(fields) if isinstance(batch.data, (list, tuple)) else fields
        extras = PrioritizedBatch(data, positions, torch.ones(count, device=batch.weight.device))
        return concat_batches(PrioritizedBatch(batch.data, batch.index, batch.weight), extras)

    def close(self) -> None:
        """Drop the device copy (a new fit, or its end); the next presample makes it again."""
        self._tensors, self._rows, self._positions = (), None, None

    def _load(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = trainer.datamodule.train_dataset  # type: ignore[attr-defined]
        found = tensor_rows(dataset)
        if found is None:
            raise TypeError(
                f"mode='device' needs the training set as tensors (a TensorDataset or a Subset of one); got "
                f"{type(dataset).__name__}. Use mode='indexed' (extra points through a second DataLoader)."
            )
        tensors, rows = found
        device = pl_module.device
        size = len(dataset)
        self._tensors = tuple(trainer.precision_plugin.convert_input(t.to(device)) for t in tensors)
        self._rows = (torch.arange(size) if rows is None else rows).to(device)
        rank, world = trainer.global_rank, trainer.world_size
        self._positions = torch.arange(rank if rank < size else 0, size, world if rank < size else 1, device=device)


class LargeBatch:
    """The presample is the loader's batch itself: ``B = presample * b`` points, of which the rule keeps about ``b``.

    Args:
        factor: ``B / b``.
    """

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self.batches_drawn = 0  # nothing is drawn: kept for the engine's state

    def presample(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch) -> PrioritizedBatch:
        """The batch, as it came."""
        return PrioritizedBatch(batch.data, batch.index, batch.weight)

    def close(self) -> None:
        """Nothing to release."""


class StreamCollate:
    """Collates samples as ``collate_fn`` does, into a ``PrioritizedBatch`` (weights 1, no dataset index).

    Args:
        collate_fn: the loader's own collate function (``None``: ``default_collate``).
        batched: the loader's dataset yields whole batches (``DataLoader(batch_size=None)``, as with webdataset's
            ``.batched(...)``): ``collate_fn`` converts one batch and its size is read from its first tensor.

    Example:
        >>> batch = StreamCollate()([(torch.zeros(2), 0), (torch.ones(2), 1)])
        >>> batch.batch_size, batch.index.tolist(), batch.weight.tolist()
        (2, [-1, -1], [1.0, 1.0])
    """

    def __init__(self, collate_fn: Callable[[Any], Any] | None = None, batched: bool = False) -> None:
        self.collate_fn = collate_fn or default_collate
        self.batched = batched

    def __call__(self, samples: Any) -> PrioritizedBatch:
        """The collated batch with ``index`` -1 and ``weight`` 1 per sample."""
        data = self.collate_fn(samples)
        n = _first_dim(data) if self.batched else len(samples)
        return PrioritizedBatch(data, torch.full((n,), NO_INDEX, dtype=torch.int64), torch.ones(n))


def _first_dim(data: Any) -> int:
    """The leading size of the first tensor in ``data`` (a batch of any structure).

    Raises:
        TypeError: ``data`` holds no tensor.
    """
    todo = [data]
    while todo:
        node = todo.pop(0)
        if isinstance(node, Tensor) and node.ndim:
            return int(node.shape[0])
        if isinstance(node, Mapping):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
    raise TypeError(f"A batch of the stream holds no tensor to read its size from: {type(data).__name__}.")
