"""Concatenate and index collated batches of any structure, along the sample dimension.

A collated batch is a tree: tensors and NumPy arrays (samples along dim 0), dicts, tuples (named or not) and
lists of fields, and lists of per-sample non-tensor values (what ``default_collate`` makes of strings). These
helpers walk that tree so that the importance-sampling callback can join a presample from two batches and keep
the points it chose, whatever the user's collate function returns.

A list or tuple is read as *fields* (walked element by element) when any element is a tensor, array, dict, list
or tuple, and as *per-sample values* (joined and indexed as a whole) otherwise; a list or tuple with exactly one
entry per sample is read as fields only when every entry is a tensor or array batched along dim 0 or a list of
one value per sample, with at least one tensor or array (``(x, y, names)``), so a tuple of per-sample tensors of
different shapes (images of several sizes, detection targets) stays per-sample. Any other
leaf (``None``, a number, a string) is batch-level metadata: kept as is by :func:`select`, and required to be
equal by :func:`concat_batches`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_per.data import PrioritizedBatch

__all__ = ["concat_batches", "select"]


def concat_batches(first: PrioritizedBatch, second: PrioritizedBatch) -> PrioritizedBatch:
    """The samples of ``first`` followed by those of ``second``, as one batch (tensors joined along dim 0).

    Args:
        first: a collated batch with indices and weights.
        second: a batch of the same structure (same dict keys, same number of fields).

    Returns:
        A new :class:`~lightning_per.PrioritizedBatch`; the inputs are not modified.

    Raises:
        TypeError: the two batches do not have the same structure (the message gives the path and the types).

    Example::

        >>> a = PrioritizedBatch({"x": torch.zeros(2, 3), "id": ["a", "b"]}, torch.tensor([0, 1]), torch.ones(2))
        >>> b = PrioritizedBatch({"x": torch.ones(1, 3), "id": ["c"]}, torch.tensor([5]), torch.ones(1))
        >>> ab = concat_batches(a, b)
        >>> ab["x"].shape, ab["id"], ab.index.tolist()
        (torch.Size([3, 3]), ['a', 'b', 'c'], [0, 1, 5])
    """
    return PrioritizedBatch(
        data=_concat(first.data, second.data, first.batch_size, second.batch_size, "batch"),
        index=torch.cat([first.index, second.index.to(first.index.device)]),
        weight=torch.cat([first.weight, second.weight.to(first.weight.device)]),
    )


def select(batch: PrioritizedBatch, index: Tensor) -> PrioritizedBatch:
    """The samples of ``batch`` at positions ``index`` (repeats allowed), in that order.

    Args:
        batch: a collated batch with indices and weights.
        index: int64 positions in ``[0, batch.batch_size)``.

    Returns:
        A new :class:`~lightning_per.PrioritizedBatch` with ``len(index)`` samples.

    Example::

        >>> batch = PrioritizedBatch((torch.arange(4), ["a", "b", "c", "d"]), torch.arange(10, 14), torch.ones(4))
        >>> picked = select(batch, torch.tensor([3, 0, 3]))
        >>> picked.data[0].tolist(), picked.data[1], picked.index.tolist()
        ([3, 0, 3], ['d', 'a', 'd'], [13, 10, 13])
    """
    positions = index.long()
    return PrioritizedBatch(
        data=_select(batch.data, positions, positions.tolist(), batch.batch_size),
        index=batch.index[positions.to(batch.index.device)],
        weight=batch.weight[positions.to(batch.weight.device)],
    )


def _is_fields(value: list[Any] | tuple[Any, ...], n: int) -> bool:
    if len(value) == n:  # as many entries as samples: fields only if every entry is batched along dim 0
        batched = [isinstance(v, (Tensor, np.ndarray)) and v.ndim >= 1 and v.shape[0] == n for v in value]
        # a field of per-sample values (a list of n strings) next to batched tensors: `(x, y, names)`
        listed = [isinstance(v, list) and len(v) == n for v in value]
        return any(batched) and all(b or ok for b, ok in zip(batched, listed, strict=True))
    return any(isinstance(v, (Tensor, np.ndarray, Mapping, list, tuple)) for v in value)


def _rebuild(template: list[Any] | tuple[Any, ...], items: list[Any]) -> Any:
    if isinstance(template, tuple) and hasattr(template, "_fields"):  # a namedtuple
        return type(template)(*items)
    return type(template)(items)


def _concat(a: Any, b: Any, na: int, nb: int, path: str) -> Any:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return torch.cat([a, b.to(a.device)])
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.concatenate([a, b])
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            raise TypeError(f"Cannot join batches: {path} has keys {sorted(a)} in one and {sorted(b)} in the other.")
        return type(a)({k: _concat(a[k], b[k], na, nb, f"{path}[{k!r}]") for k in a})  # type: ignore[call-arg]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if _is_fields(a, na) or _is_fields(b, nb):
            if len(a) != len(b):
                raise TypeError(f"Cannot join batches: {path} has {len(a)} fields in one and {len(b)} in the other.")
            items = [_concat(x, y, na, nb, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
            return _rebuild(a, items)
        return _rebuild(a, [*a, *b])
    if type(a) is type(b) and a == b:
        return a
    raise TypeError(
        f"Cannot join batches: {path} is {type(a).__name__} in one and {type(b).__name__} in the other; "
        "the collate function must return the same structure for every batch."
    )


def _select(value: Any, index: Tensor, positions: list[int], n: int) -> Any:
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[np.asarray(positions, dtype=np.int64)]
    if isinstance(value, Mapping):
        return type(value)({k: _select(v, index, positions, n) for k, v in value.items()})  # type: ignore[call-arg]
    if isinstance(value, (list, tuple)):
        if _is_fields(value, n):
            return _rebuild(value, [_select(v, index, positions, n) for v in value])
        return _rebuild(value, [value[i] for i in positions])
    return value
