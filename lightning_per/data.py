"""The batch type that carries dataset indices and importance weights next to the user's own batch.

A training batch from ``PrioritizedDataModule`` is a ``PrioritizedBatch``. It unpacks and
indexes like the batch the user's collate function made (``x, y = batch`` for tuple and list samples,
``batch["image"]`` and ``batch.keys()`` for dict samples), and adds ``batch.index`` (int64 dataset indices) and
``batch.weight`` (float32 importance weights).

It deliberately defines no ``__iter__``: Lightning then reads it as a dataclass when it infers the batch size for
``self.log(..., on_epoch=True)``, which is right for every kind of batch (a dict batch iterated would give its
keys). Unpacking still works through ``__getitem__``; ``batch.data`` is the user's batch itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, default_collate

__all__ = ["IndexedCollate", "IndexedDataset", "PrioritizedBatch", "holdout_split", "weighted_mean"]


@dataclass
class PrioritizedBatch:
    """A collated batch with the dataset index and the importance weight of every sample.

    It unpacks and indexes like ``data`` (``x, y = batch`` for tuple and list samples, ``batch["image"]`` and
    ``batch.keys()`` for dict samples); ``batch.batch_size`` is the number of samples.

    Args:
        data: the batch the user's collate function made from the samples (tuple, list, dict, tensor, ...).
        index: int64 dataset indices, one per sample.
        weight: float32 importance weights, one per sample (1 for uniform sampling).

    Raises:
        TypeError: ``x, y = batch`` (or an integer key) on a dict batch: read it by key.

    Example:
        >>> batch = PrioritizedBatch((torch.zeros(2, 3), torch.tensor([0, 1])), torch.tensor([4, 7]), torch.ones(2))
        >>> x, y = batch
        >>> x.shape, batch.index.tolist()
        (torch.Size([2, 3]), [4, 7])
    """

    data: Any
    index: Tensor
    weight: Tensor

    def __getitem__(self, key: Any) -> Any:
        data = self.data
        if isinstance(key, int) and isinstance(data, Mapping) and key not in data:
            # `x, y = batch` indexes 0, 1, ...: say how a dict batch is read instead of a bare `KeyError: 0`
            first = next(iter(map(repr, data)), "'x'")
            raise TypeError(
                f"This batch is a dict with the keys {sorted(map(str, data))}: read it by key, e.g. `batch[{first}]`; "
                "`x, y = batch` unpacks tuple and list samples only."
            )
        return data[key]

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: Any) -> bool:
        return key in self.data

    def keys(self) -> Any:
        """The keys of a dict batch."""
        return self.data.keys()

    def values(self) -> Any:
        """The values of a dict batch."""
        return self.data.values()

    def items(self) -> Any:
        """The items of a dict batch."""
        return self.data.items()

    def pin_memory(self) -> PrioritizedBatch:
        """A copy in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        from torch.utils.data._utils.pin_memory import pin_memory

        return PrioritizedBatch(
            data=pin_memory(self.data), index=self.index.pin_memory(), weight=self.weight.pin_memory()
        )

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> PrioritizedBatch:
        """A copy on ``device`` (Lightning calls this to move the batch; the data is moved recursively)."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return PrioritizedBatch(
            data=move_data_to_device(self.data, device),
            index=self.index.to(device, non_blocking=non_blocking),
            weight=self.weight.to(device, non_blocking=non_blocking),
        )

    @property
    def batch_size(self) -> int:
        """Number of samples in the batch."""
        return int(self.index.shape[0])


def weighted_mean(losses: Tensor, batch: Any) -> Tensor:
    """The mean of per-sample ``losses`` weighted by ``batch.weight``; a plain mean for a batch without weights.

    This is the one call that keeps the gradient unbiased under prioritized or importance sampling. ``losses``
    has one row per sample: shape ``(n,)``, ``(n, 1)`` or ``(n, T, ...)`` (e.g. per-token losses; each sample's
    weight multiplies its whole row, then all elements are averaged).

    Raises:
        TypeError: ``losses`` is not a tensor.
        ValueError: ``losses`` does not have one row per sample of the batch.

    Example:
        >>> batch = PrioritizedBatch(None, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
        >>> weighted_mean(torch.tensor([2.0, 2.0]), batch)
        tensor(4.)
    """
    if not isinstance(losses, Tensor):
        raise TypeError(
            f"`losses` must be a tensor of per-sample losses (e.g. `F.cross_entropy(logits, y, reduction='none')`), "
            f"got {type(losses).__name__}."
        )
    weight = getattr(batch, "weight", None)
    if weight is None:
        return losses.mean()
    if losses.ndim == 0 or losses.shape[0] != weight.shape[0]:
        raise ValueError(
            f"`losses` has shape {tuple(losses.shape)} but the batch has {weight.shape[0]} weights: compute the "
            "loss per sample (e.g. `F.cross_entropy(logits, y, reduction='none')`) on the batch as it arrived, "
            "one row per sample."
        )
    if losses.ndim == 1 and losses.dtype == weight.dtype:  # the common case in one op (a step is hot code)
        return torch.dot(losses, weight / weight.shape[0])
    # a sample's weight applies to its whole row: (n,), (n, 1) and per-element (n, T, ...) losses alike
    return (losses * weight.to(losses.dtype).reshape(-1, *[1] * (losses.ndim - 1))).mean()


class IndexedDataset(Dataset):
    """Wraps a map-style dataset so that each item also carries its index and its importance weight.

    The sampler yields either an int index (weight 1) or an ``(index, weight)`` pair; the wrapper returns
    ``(index, weight, sample)``. Weights are computed by the sampler in the main process, so they are always
    current, also with persistent DataLoader workers.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, float]) -> tuple[int, float, Any]:
        index, weight = key if isinstance(key, tuple) else (key, 1.0)
        return index, weight, self.dataset[index]

    def __getitems__(self, keys: Sequence[int | tuple[int, float]]) -> Sequence[tuple[int, float, Any]]:
        """A whole batch at once (the DataLoader calls this when it exists).

        One call of the wrapped dataset's own ``__getitems__`` if it has one, else a plain loop; no per-sample call
        of this wrapper. The result is a sequence of ``(index, weight, sample)`` items that holds the batch's
        indices and weights as tensors, so that ``IndexedCollate`` need not build them item by item.
        """
        indices, index, weight = _split_keys(keys)
        dataset = self.dataset
        many = getattr(dataset, "__getitems__", None)
        samples = many(indices) if many is not None else [dataset[i] for i in indices]
        if len(samples) != len(indices):
            raise ValueError(
                f"The dataset's `__getitems__` returned {len(samples)} samples for {len(indices)} indices."
            )
        return _Items(index, weight, list(samples))


def _split_keys(keys: Sequence[int | tuple[int, float]]) -> tuple[list[int], Tensor, Tensor]:
    """A batch's sampler keys as a list of indices, an int64 index tensor and a float32 weight tensor.

    The sampler yields plain ints (a uniform pass, weight 1) or ``(index, weight)`` pairs (weighted) for a whole
    epoch: either is converted in one go. A batch that mixes the two, from a user's own sampler, is taken key by key.
    """
    try:
        if keys and isinstance(keys[0], tuple):  # a weighted strategy's pairs
            indices, weights = zip(*keys, strict=True)
            return list(indices), _as_tensor(indices, np.int64), _as_tensor(weights, np.float32)
        array = np.asarray(keys, dtype=np.int64)  # a uniform pass
        if array.ndim == 1:
            return list(keys), torch.from_numpy(array), torch.ones(len(keys))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # ints and pairs mixed
        pass
    pairs = [key if isinstance(key, tuple) else (key, 1.0) for key in keys]
    indices = [index for index, _ in pairs]
    return indices, _as_tensor(indices, np.int64), _as_tensor([weight for _, weight in pairs], np.float32)


def _as_tensor(values: Sequence[float], dtype: type) -> Tensor:
    """A tensor from Python numbers through NumPy: about 3x faster than ``torch.tensor`` on a list of 100."""
    return torch.from_numpy(np.asarray(values, dtype=dtype))


class _Items(Sequence[tuple[int, float, Any]]):
    """The ``(index, weight, sample)`` items of one batch, kept as an index tensor, a weight tensor and the samples."""

    def __init__(self, index: Tensor, weight: Tensor, samples: list[Any]) -> None:
        self.index_tensor = index
        self.weight_tensor = weight
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return int(self.index_tensor[i]), float(self.weight_tensor[i]), self.samples[i]


class IndexedCollate:
    """Collates ``(index, weight, sample)`` items into a ``PrioritizedBatch`` (picklable for workers).

    Args:
        collate_fn: collates the samples themselves; defaults to ``torch.utils.data.default_collate``.
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, items: Sequence[tuple[int, float, Any]]) -> PrioritizedBatch:
        """Collate the samples with ``collate_fn``; indices become int64, weights float32."""
        if isinstance(items, _Items):  # from IndexedDataset.__getitems__: indices and weights already tensors
            return PrioritizedBatch(
                data=self.collate_fn(items.samples), index=items.index_tensor, weight=items.weight_tensor
            )
        indices, weights, samples = zip(*items, strict=True)
        return PrioritizedBatch(
            data=self.collate_fn(list(samples)),
            index=_as_tensor(indices, np.int64),
            weight=_as_tensor(weights, np.float32),
        )


def holdout_split(dataset: Dataset, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
    """``(rest, holdout)``: a random ``fraction`` of ``dataset`` held out (at least one sample, not all of them).

    Both keep the dataset's order; the choice depends only on the length, ``fraction`` and ``seed``.

    Raises:
        ValueError: ``dataset`` has fewer than 2 samples, or ``fraction`` is outside (0, 1).

    Example:
        >>> rest, holdout = holdout_split(list(range(10)), 0.3, seed=0)
        >>> len(rest), len(holdout), sorted([*rest, *holdout]) == list(range(10))
        (7, 3, True)
    """
    n = len(dataset)  # type: ignore[arg-type]
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be in (0, 1), got {fraction}.")
    if n < 2:
        raise ValueError(f"A holdout needs a training set of at least 2 samples, got {n}.")
    held = min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[held:].sort().values.tolist()), Subset(dataset, order[:held].sort().values.tolist())
