"""Where a selection step's presample comes from, besides the indexed extras of ``presample.py``.

- ``DeviceExtras`` (``mode="device"``): the training set is a ``TensorDataset`` (or a ``Subset`` of one, as
  ``holdout_fraction`` makes): its tensors are moved to the module's device once, and each step's extra points are
  drawn and gathered there, with no second DataLoader and no collate (the gather reads nothing back to the host).
- ``LargeBatch`` (``mode="large_batch"``): the loader yields batches of ``B = presample * b`` points (any loader: map
  style or an ``IterableDataset``, a stream) and the presample is the batch itself; no sample index is needed.
  ``StreamCollate`` turns a plain loader's batches into ``PrioritizedBatch`` so that ``weighted_mean`` finds their
  weights; the engine installs it on the training loader when the batches are not ``PrioritizedBatch`` already.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset, default_collate

from lightning_per.batch import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import IndexedCollate
from lightning_per.plumbing.internals import train_loader_given
from lightning_per.plumbing.requirements import require_datamodule
from lightning_per.selection.presample import ExtraPoints, derive_seed
from lightning_per.tree import concat_batches, flatten, select

__all__ = ["NO_INDEX", "DeviceExtras", "LargeBatch", "StreamCollate", "keep_points", "resolve_source", "tensor_rows"]

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
        self._generator: torch.Generator | None = None  # re-seeded for every draw

    def presample(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch) -> PrioritizedBatch:
        """``batch`` followed by ``(factor - 1) * batch.batch_size`` extra points, all on the module's device."""
        if self._positions is None:
            self._load(trainer, pl_module)
        assert self._positions is not None and self._rows is not None
        device = self._positions.device
        if self._generator is None:
            self._generator = torch.Generator(device=device)
        generator = self._generator.manual_seed(derive_seed(self.seed, trainer.global_rank, self.batches_drawn, 2))
        self.batches_drawn += 1
        count = (self.factor - 1) * batch.batch_size
        draws = torch.randint(self._positions.numel(), (count,), generator=generator, device=device)
        positions = self._positions[draws]
        rows = self._rows[positions]
        fields = [t.index_select(0, rows) for t in self._tensors]
        data, ones = batch.data, torch.ones(count, device=batch.weight.device)
        if type(data) in (list, tuple) and len(data) == len(fields):  # default_collate's list: one cat per field
            joined = type(data)(torch.cat([a, b]) for a, b in zip(data, fields, strict=True))
            return PrioritizedBatch(joined, torch.cat([batch.index, positions]), torch.cat([batch.weight, ones]))
        extras = PrioritizedBatch(type(data)(fields) if isinstance(data, (list, tuple)) else fields, positions, ones)
        return concat_batches(PrioritizedBatch(data, batch.index, batch.weight), extras)

    def close(self) -> None:
        """Drop the device copy (a new fit, or its end); the next presample makes it again."""
        self._tensors, self._rows, self._positions, self._generator = (), None, None, None

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
        index_key: the field of the collated batch that holds each sample's integer id (a key of a dict batch, or a
            position in a tuple one), made the batch's ``index``, for ``IrreducibleLoss(table_path=...)``; the field
            stays in the batch. ``None``: no ids (``index`` -1).

    Raises:
        TypeError: ``index_key`` is neither a string nor an int; at collate, a batch with no such integer field.

    Example:
        >>> batch = StreamCollate()([(torch.zeros(2), 0), (torch.ones(2), 1)])
        >>> batch.batch_size, batch.index.tolist(), batch.weight.tolist()
        (2, [-1, -1], [1.0, 1.0])
        >>> StreamCollate(index_key=2)([(torch.zeros(2), 0, 17), (torch.ones(2), 1, 4)]).index.tolist()
        [17, 4]
    """

    def __init__(
        self, collate_fn: Callable[[Any], Any] | None = None, batched: bool = False, index_key: str | int | None = None
    ) -> None:
        if index_key is not None and (isinstance(index_key, bool) or not isinstance(index_key, (str, int))):
            raise TypeError(f"`index_key` must be a key (str) or a position (int), got {index_key!r}.")
        self.collate_fn = collate_fn or default_collate
        self.batched = batched
        self.index_key = index_key

    def __call__(self, samples: Any) -> PrioritizedBatch:
        """The collated batch with ``weight`` 1 per sample and its ids (or -1) as ``index``."""
        data = self.collate_fn(samples)
        n = _first_dim(data) if self.batched else len(samples)
        index = torch.full((n,), NO_INDEX, dtype=torch.int64) if self.index_key is None else self._ids(data, n)
        return PrioritizedBatch(data, index, torch.ones(n))

    def _ids(self, data: Any, n: int) -> Tensor:
        key = self.index_key
        try:
            ids = data[key]
        except (KeyError, IndexError, TypeError):
            ids = None
        if (
            not isinstance(ids, Tensor)
            or ids.shape != (n,)
            or ids.is_floating_point()
            or ids.is_complex()
            or ids.dtype == torch.bool
        ):
            got = f"{type(ids).__name__} {tuple(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(
                f"StreamCollate(index_key={key!r}): the collated batch must hold one integer id per sample there "
                f"(a tensor of shape ({n},)), got {got}. Name the field of each sample that holds its integer id."
            )
        return ids.to(torch.int64)


def _first_dim(data: Any) -> int:
    """The leading size of the first tensor in ``data`` (a batch of any structure, walked by ``flatten``).

    Raises:
        TypeError: ``data`` holds no tensor.
    """
    leaves, _ = flatten(data, n=0)  # its size not known yet: every sequence that holds tensors is walked
    sizes = [int(leaf.shape[0]) for leaf in leaves if isinstance(leaf, Tensor) and leaf.ndim]
    if not sizes:
        raise TypeError(f"A batch of the stream holds no tensor to read its size from: {type(data).__name__}.")
    return sizes[0]


def resolve_source(
    mode: str, trainer: Trainer, presample: int, seed: int, owner: str
) -> tuple[str, ExtraPoints | DeviceExtras | LargeBatch]:
    """The mode a fit runs in (``auto`` resolved) and its presample source; refuses what cannot work.

    ``auto``: ``device`` for a ``PrioritizedDataModule`` over tensors with the default collate, ``indexed`` for any
    other ``PrioritizedDataModule``, ``large_batch`` for any other loader. In ``large_batch`` mode a loader given to
    ``trainer.fit`` gets ``StreamCollate`` around its collate function, before Lightning first iterates it.

    Raises:
        TypeError: ``indexed`` or ``device`` without a ``PrioritizedDataModule``.
        ValueError: a ``PrioritizedDataModule`` with a prioritized strategy.
    """
    datamodule = getattr(trainer, "datamodule", None)
    indexed = isinstance(datamodule, PrioritizedDataModule)
    if mode == "auto":
        tensors = isinstance(datamodule, PrioritizedDataModule) and datamodule.collate_fn is None
        tensors = tensors and tensor_rows(datamodule.train_dataset) is not None  # type: ignore[union-attr]
        mode = ("device" if tensors else "indexed") if indexed else "large_batch"
    if mode in ("indexed", "device"):
        require_datamodule(trainer, owner, uniform=True, why=f" (mode={mode!r} draws extra points from it)")
    elif isinstance(datamodule, PrioritizedDataModule) and datamodule.strategy.name != "uniform":
        require_datamodule(trainer, owner, uniform=True)  # refuses the prioritized strategy, with its message
    loader = train_loader_given(trainer)
    collate = getattr(loader, "collate_fn", None)
    if mode == "large_batch" and collate is not None and not isinstance(collate, (StreamCollate, IndexedCollate)):
        loader.collate_fn = StreamCollate(collate, batched=getattr(loader, "batch_size", 1) is None)
    if mode == "device":
        return mode, DeviceExtras(presample, seed)
    if mode == "large_batch":
        return mode, LargeBatch(presample)
    return mode, ExtraPoints(presample, seed)


def keep_points(
    source: PrioritizedBatch,
    positions: Tensor,
    weights: Tensor | None,
    like: PrioritizedBatch | None = None,
    into: PrioritizedBatch | None = None,
) -> None:
    """Replace ``into`` (default ``source``) in place by ``source``'s points at ``positions``, with ``weights``.

    A batch of tensors batched along dim 0 (what ``default_collate`` makes of tensor samples) is indexed directly;
    any other structure goes through ``tree.select``.
    """
    target = into if into is not None else source
    data, n = source.data, source.batch_size
    if type(data) in (list, tuple) and all(isinstance(t, Tensor) and t.ndim and t.shape[0] == n for t in data):
        target.data = type(data)(t[positions] for t in data)
        target.index = source.index[positions]
        weight = source.weight[positions] if weights is None else weights
    else:
        picked = select(source, positions, like=like)
        target.data, target.index = picked.data, picked.index
        weight = picked.weight if weights is None else weights
    target.weight = weight.to(device=target.weight.device, dtype=target.weight.dtype)
