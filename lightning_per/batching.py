"""Concatenate and index collated batches of any structure, along the sample dimension.

A collated batch is a tree: tensors and NumPy arrays (samples along dim 0), dicts, tuples (named or not) and
lists of fields, and lists of per-sample non-tensor values (what ``default_collate`` makes of strings). These
helpers walk that tree so that the importance-sampling callback can join a presample from two batches and keep
the points it chose, whatever the user's collate function returns.

A list or tuple is read as *fields* (walked element by element) or as *per-sample values* (joined and indexed as a
whole). With two batches of different sizes at hand the reading is exact: fields keep their count, per-sample
values have one entry per sample. ``concat_batches`` compares its two inputs so; ``select`` compares its
batch with ``like``, a batch of the same structure and another size (the importance callback passes the incoming
batch). Without one, a heuristic decides: fields when any element is a tensor, array, dict, list or tuple;
but a list or tuple with exactly one entry per sample only when every entry is a tensor or array batched along
dim 0 or a list of one value per sample (with at least one tensor or array), so a tuple of per-sample tensors of
different shapes (images of several sizes, detection targets) stays per-sample. Any other leaf (``None``, a
number, a string) is batch-level metadata: kept as is by ``select``, and required to be equal by
``concat_batches``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        A new ``PrioritizedBatch``; the inputs are not modified.

    Raises:
        TypeError: the two batches do not have the same structure (the message gives the path and the types).

    Example:
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


def select(batch: PrioritizedBatch, index: Tensor, like: PrioritizedBatch | None = None) -> PrioritizedBatch:
    """The samples of ``batch`` at positions ``index`` (repeats allowed), in that order.

    Args:
        batch: a collated batch with indices and weights.
        index: int64 positions in ``[0, batch.batch_size)``.
        like: a batch of the same structure and another size (e.g. the one ``batch`` was joined from): it tells
            fields from per-sample values exactly where the count of a tuple equals the number of samples.

    Returns:
        A new ``PrioritizedBatch`` with ``len(index)`` samples.

    Example:
        >>> batch = PrioritizedBatch((torch.arange(4), ["a", "b", "c", "d"]), torch.arange(10, 14), torch.ones(4))
        >>> picked = select(batch, torch.tensor([3, 0, 3]))
        >>> picked.data[0].tolist(), picked.data[1], picked.index.tolist()
        ([3, 0, 3], ['d', 'a', 'd'], [13, 10, 13])
    """
    positions = index.long()
    n = batch.batch_size
    hint = (like.data, like.batch_size) if like is not None and like.batch_size != n else None
    return PrioritizedBatch(
        data=_select(batch.data, positions, positions.tolist(), n, hint),
        index=batch.index[positions.to(batch.index.device)],
        weight=batch.weight[positions.to(batch.weight.device)],
    )


def _is_fields(value: Sequence[Any], n: int) -> bool:
    if len(value) == n:  # as many entries as samples: fields only if every entry is batched along dim 0
        batched = [isinstance(v, (Tensor, np.ndarray)) and v.ndim >= 1 and v.shape[0] == n for v in value]
        # a field of per-sample values (a list of n strings) next to batched tensors: `(x, y, names)`
        listed = [isinstance(v, list) and len(v) == n for v in value]
        return any(batched) and all(b or ok for b, ok in zip(batched, listed, strict=True))
    return any(isinstance(v, (Tensor, np.ndarray, Mapping, list, tuple)) for v in value)


def _are_fields(value: Sequence[Any], n: int, other: Sequence[Any] | None, m: int | None) -> bool:
    """Whether ``value`` (of a batch of ``n``) holds fields; ``other`` is the same node of a batch of ``m``."""
    if other is not None and m is not None and m != n:  # exact: only per-sample values follow the batch size
        return not (len(value) == n and len(other) == m)
    return _is_fields(value, n) or (other is not None and m is not None and _is_fields(other, m))


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
        if _are_fields(a, na, b, nb):
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


def _select(value: Any, index: Tensor, positions: list[int], n: int, like: tuple[Any, int] | None = None) -> Any:
    """``like``: the same node of a batch of another size, with that size (``None``: no such batch)."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)]
    if isinstance(value, np.ndarray):
        return value[np.asarray(positions, dtype=np.int64)]
    if isinstance(value, Mapping):
        return type(value)(  # type: ignore[call-arg]
            {k: _select(v, index, positions, n, _child(like, k)) for k, v in value.items()}
        )
    if isinstance(value, (list, tuple)):
        other = like if like is not None and isinstance(like[0], (list, tuple)) else None
        if _are_fields(value, n, *(other or (None, None))):
            return _rebuild(value, [_select(v, index, positions, n, _child(like, i)) for i, v in enumerate(value)])
        return _rebuild(value, [value[i] for i in positions])
    return value


def _child(like: tuple[Any, int] | None, key: Any) -> tuple[Any, int] | None:
    """The ``key`` entry of ``like``'s node, with its size; ``None`` where the structures part."""
    if like is None:
        return None
    node, size = like
    if isinstance(node, Mapping) and key in node:
        return node[key], size
    if isinstance(node, (list, tuple)) and isinstance(key, int) and key < len(node):
        return node[key], size
    return None
