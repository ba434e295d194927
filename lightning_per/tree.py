"""Batch trees: one walker for every structure a batch takes, and the library's operations on it.

A batch is a tree of dicts and tuples / lists (named or not) ending in leaves, the samples along dim 0 of every leaf.
``flatten`` walks it once, ``unflatten`` rebuilds it. *Stored samples* (``n=None``, the replay buffers): every leaf is
a tensor, every tuple or list a container. *Collated batches* (``n`` samples, the data path): leaves are tensors and
NumPy arrays (indexed along dim 0), lists of per-sample values (``default_collate``'s strings) and batch-level
metadata (kept by ``select``, required equal by ``concat``). A list or tuple is *fields* or *per-sample values*: with a
batch of another size at hand (``like``) exactly (only per-sample values follow the batch size); without one, fields
when an entry is a tensor, array, dict, list or tuple, but ``n`` entries only when each is batched along dim 0 or a
list of ``n`` values, so a tuple of per-sample tensors of different shapes (images of several sizes) stays per-sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_per.batch import PrioritizedBatch

__all__ = ["SampleSpec", "concat_batches", "flatten", "join", "select", "unflatten"]

# None: a tensor leaf; ("leaf", kind, container): another leaf ("array", "values" or "meta");
# ("seq", container type, children); ("dict", keys, children)
TreeDef = Any


def flatten(tree: Any, n: int | None = None, like: tuple[Any, int] | None = None) -> tuple[list[Any], TreeDef]:
    """Leaves of ``tree`` (depth first; dict keys sorted) and its tree definition.

    Args:
        tree: the batch.
        n: its number of samples (collated reading; 0: not known yet); ``None``: stored samples, tensors only.
        like: ``(tree, size)`` of the same structure and another size, to tell fields from per-sample values.

    Raises:
        TypeError: stored samples with a leaf that is not a tensor, or dict keys that cannot be sorted.

    Example:
        >>> leaves, treedef = flatten({"label": torch.tensor([1]), "image": (torch.zeros(1, 2), torch.ones(1))})
        >>> [tuple(leaf.shape) for leaf in leaves]
        [(1, 2), (1,), (1,)]
        >>> unflatten([leaf + 1 for leaf in leaves], treedef)["label"]
        tensor([2])
    """
    leaves: list[Any] = []
    try:
        return leaves, _flatten(tree, leaves, n, like)
    except TypeError:
        if n is None:
            _locate(tree, "batch")  # raises with the path of what is wrong
        raise


def _flatten(node: Any, leaves: list[Any], n: int | None, like: tuple[Any, int] | None) -> TreeDef:
    if isinstance(node, Tensor):
        leaves.append(node)
        return None
    if isinstance(node, (tuple, list)):
        if n is not None and not _are_fields(node, n, like):
            leaves.append(node)
            return ("leaf", "values", type(node))
        return ("seq", type(node), tuple([_flatten(v, leaves, n, _child(like, i)) for i, v in enumerate(node)]))
    if isinstance(node, Mapping):
        keys = sorted(node)
        return ("dict", tuple(keys), tuple([_flatten(node[k], leaves, n, _child(like, k)) for k in keys]))
    if n is None:
        raise TypeError(type(node).__name__)
    leaves.append(node)
    return ("leaf", "array" if isinstance(node, np.ndarray) else "meta", None)


def unflatten(leaves: Sequence[Any], treedef: TreeDef, plain: bool = False) -> Any:
    """Rebuild the structure of ``treedef`` around ``leaves`` (the inverse of ``flatten``).

    Args:
        leaves: the leaves in ``flatten`` order.
        treedef: the tree definition.
        plain: rebuild every sequence as a plain tuple or list (a named tuple becomes a tuple), so that the result
            loads with ``torch.load(weights_only=True)``.
    """
    return _unflatten(iter(leaves), treedef, plain)


def _unflatten(it: Any, treedef: TreeDef, plain: bool) -> Any:
    if treedef is None:
        return next(it)
    kind, meta, children = treedef
    if kind == "leaf":
        leaf = next(it)
        return children(leaf) if meta == "values" and not isinstance(leaf, children) else leaf
    values = [_unflatten(it, child, plain) for child in children]
    if kind == "dict":
        return dict(zip(meta, values, strict=True))
    if issubclass(meta, list):
        return values if plain or meta is list else meta(values)
    if plain or meta is tuple:
        return tuple(values)
    return meta(*values) if hasattr(meta, "_fields") else meta(values)  # a named tuple takes its fields


def select(batch: PrioritizedBatch, index: Tensor, like: PrioritizedBatch | None = None) -> PrioritizedBatch:
    """The samples of ``batch`` at positions ``index`` (repeats allowed), in that order.

    Args:
        batch: a collated batch with indices and weights.
        index: int64 positions in ``[0, batch.batch_size)``.
        like: a batch of the same structure and another size (e.g. the one ``batch`` was joined from).

    Example:
        >>> batch = PrioritizedBatch((torch.arange(4), ["a", "b", "c", "d"]), torch.arange(10, 14), torch.ones(4))
        >>> picked = select(batch, torch.tensor([3, 0, 3]))
        >>> picked.data[0].tolist(), picked.data[1], picked.index.tolist()
        ([3, 0, 3], ['d', 'a', 'd'], [13, 10, 13])
    """
    positions = index.long()
    n = batch.batch_size
    hint = (like.data, like.batch_size) if like is not None and like.batch_size != n else None
    leaves, treedef = flatten(batch.data, n, hint)
    kinds = _kinds(treedef)
    listed = positions.tolist() if "array" in kinds or "values" in kinds else []  # tensors only: no host sync
    picked = [_take(leaf, kind, positions, listed) for leaf, kind in zip(leaves, kinds, strict=True)]
    return PrioritizedBatch(
        data=unflatten(picked, treedef),
        index=batch.index[positions.to(batch.index.device)],
        weight=batch.weight[positions.to(batch.weight.device)],
    )


def concat_batches(first: PrioritizedBatch, second: PrioritizedBatch) -> PrioritizedBatch:
    """The samples of ``first`` followed by those of ``second``, as one batch (in ``first``'s devices).

    Raises:
        TypeError: the two batches do not have the same structure (the message gives both).

    Example:
        >>> a = PrioritizedBatch({"x": torch.zeros(2, 3), "id": ["a", "b"]}, torch.tensor([0, 1]), torch.ones(2))
        >>> b = PrioritizedBatch({"x": torch.ones(1, 3), "id": ["c"]}, torch.tensor([5]), torch.ones(1))
        >>> ab = concat_batches(a, b)
        >>> ab["x"].shape, ab["id"], ab.index.tolist()
        (torch.Size([3, 3]), ['a', 'b', 'c'], [0, 1, 5])
    """
    na, nb = first.batch_size, second.batch_size
    left, treedef = flatten(first.data, na, (second.data, nb))
    right, other = flatten(second.data, nb, (first.data, na))
    if _shape_of(treedef) != _shape_of(other):
        raise TypeError(
            f"Cannot join batches of different structures: {_describe_tree(treedef)} and {_describe_tree(other)}; "
            "the collate function must return the same structure for every batch."
        )
    joined = [_cat(a, b, kind) for a, b, kind in zip(left, right, _kinds(treedef), strict=True)]
    return PrioritizedBatch(
        data=unflatten(joined, treedef),
        index=torch.cat([first.index, second.index.to(first.index.device)]),
        weight=torch.cat([first.weight, second.weight.to(first.weight.device)]),
    )


def join(first: Any, second: Any) -> Any:
    """Stored samples: those of ``first`` followed by those of ``second``, in ``first``'s containers and devices.

    Raises:
        ValueError: the structures differ (tuples and lists count as the same).

    Example:
        >>> incoming = {"x": torch.zeros(2, 3), "y": [torch.tensor([0, 1])]}
        >>> joined = join(incoming, {"x": torch.ones(1, 3), "y": (torch.tensor([7]),)})
        >>> joined["x"].shape, joined["y"]
        (torch.Size([3, 3]), [tensor([0, 1, 7])])
    """
    leaves, treedef = flatten(first)
    others, other_def = flatten(second)
    if len(leaves) != len(others) or _shape_of(treedef) != _shape_of(other_def):
        raise ValueError(
            f"Cannot join a batch of samples {SampleSpec.of(first)!r} with one of samples {SampleSpec.of(second)!r}."
        )
    return unflatten([_cat(a, b, None) for a, b in zip(leaves, others, strict=True)], treedef)


@dataclass(frozen=True)
class SampleSpec:
    """Structure, dtypes and per-sample shapes of stored samples (a buffer learns them from its first batch).

    Example:
        >>> spec = SampleSpec.of((torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)))
        >>> spec
        (Tensor[float32, (3,)], Tensor[int64, ()])
        >>> spec.check(*flatten([torch.ones(2, 3), torch.ones(2, dtype=torch.long)]))  # a list matches a tuple
        2
    """

    treedef: TreeDef
    dtypes: tuple[torch.dtype, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, batch: Any) -> SampleSpec:
        """The spec of a batch of stored samples.

        Raises:
            TypeError: see ``flatten``.
            ValueError: no leaves, a 0-dimensional leaf, or leaves with different batch sizes.
        """
        leaves, treedef = flatten(batch)
        _batch_size(leaves)
        return cls(treedef, tuple(x.dtype for x in leaves), tuple(tuple(x.shape[1:]) for x in leaves))

    def check(self, leaves: Sequence[Tensor], treedef: TreeDef | None = None) -> int:
        """The batch size of flattened ``leaves`` if they match this spec (``treedef`` ``None``: this spec's).

        Raises:
            ValueError: another structure, dtype or per-sample shape (the message shows both), or leaves with
                different batch sizes.
        """
        n = _batch_size(leaves)
        if (
            (treedef is None or treedef == self.treedef or _shape_of(treedef) == _shape_of(self.treedef))
            and len(leaves) == len(self.dtypes)
            and all(x.dtype == d and x.shape[1:] == s for x, d, s in zip(leaves, self.dtypes, self.shapes, strict=True))
        ):
            return n
        tree = self.treedef if treedef is None else treedef
        other = SampleSpec(tree, tuple(x.dtype for x in leaves), tuple(tuple(x.shape[1:]) for x in leaves))
        raise ValueError(
            f"The batch holds samples {other!r}, but the buffer holds samples {self!r}: every batch offered to "
            "one buffer must have the same structure, dtypes and per-sample shapes (e.g. every task of a "
            "sequence must give inputs of the same shape; resize or pad them in the dataset)."
        )

    def __repr__(self) -> str:
        leaves = zip(self.dtypes, self.shapes, strict=True)
        return _describe(
            self.treedef, iter([f"Tensor[{str(d).removeprefix('torch.')}, {tuple(s)}]" for d, s in leaves])
        )


# ------------------------------------------------------------------------------------------------ helpers
def _are_fields(value: Sequence[Any], n: int, like: tuple[Any, int] | None) -> bool:
    """Whether ``value`` (of a batch of ``n``) holds fields; ``like`` is the same node of a batch of another size."""
    other = like if like is not None and isinstance(like[0], (list, tuple)) else None
    if other is not None and other[1] != n:  # exact: only per-sample values follow the batch size
        return not (len(value) == n and len(other[0]) == other[1])
    return _is_fields(value, n) or (other is not None and _is_fields(other[0], other[1]))


def _is_fields(value: Sequence[Any], n: int) -> bool:
    if len(value) == n:  # as many entries as samples: fields only if every entry is batched along dim 0
        batched = [isinstance(v, (Tensor, np.ndarray)) and v.ndim >= 1 and v.shape[0] == n for v in value]
        listed = [isinstance(v, list) and len(v) == n for v in value]  # `(x, y, names)`: a field of values
        return any(batched) and all(b or ok for b, ok in zip(batched, listed, strict=True))
    return any(isinstance(v, (Tensor, np.ndarray, Mapping, list, tuple)) for v in value)


def _child(like: tuple[Any, int] | None, key: Any) -> tuple[Any, int] | None:  # like's `key` entry, or None
    if like is None:
        return None
    node, size = like
    if isinstance(node, Mapping) and key in node:
        return node[key], size
    if isinstance(node, (list, tuple)) and isinstance(key, int) and key < len(node):
        return node[key], size
    return None


def _kinds(treedef: TreeDef) -> list[str | None]:  # each leaf's kind in `flatten` order (None: a tensor)
    if treedef is None:
        return [None]
    kind, meta, children = treedef
    return [meta] if kind == "leaf" else [k for child in children for k in _kinds(child)]


def _take(leaf: Any, kind: str | None, positions: Tensor, listed: list[int]) -> Any:
    if kind is None:
        return leaf[positions.to(leaf.device)]
    if kind == "array":
        return leaf[np.asarray(listed, dtype=np.int64)]
    return [leaf[i] for i in listed] if kind == "values" else leaf


def _cat(a: Any, b: Any, kind: str | None) -> Any:
    if kind is None:
        return torch.cat([a, b if b.device == a.device else b.to(a.device)])
    if kind == "array":
        return np.concatenate([a, b])
    if kind == "values":
        return [*a, *b]
    if type(a) is type(b) and a == b:
        return a
    raise TypeError(f"Cannot join batches whose metadata differ: {a!r} and {b!r}.")


def _shape_of(treedef: TreeDef) -> TreeDef:
    """The tree definition without container types (tuple and list compare equal)."""
    if treedef is None or treedef[0] == "leaf":
        return treedef if treedef is None else treedef[:2]
    kind, meta, children = treedef
    return (kind, meta if kind == "dict" else len(children), tuple(_shape_of(c) for c in children))


def _describe_tree(treedef: TreeDef) -> str:
    return _describe(treedef, iter(lambda: "Tensor", None))  # every tensor leaf reads "Tensor"


def _describe(treedef: TreeDef, it: Any) -> str:
    if treedef is None:
        return next(it)
    kind, meta, children = treedef
    if kind == "leaf":
        return {"array": "ndarray", "values": "per-sample values"}.get(meta, "metadata")
    parts = [_describe(child, it) for child in children]
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {p}" for k, p in zip(meta, parts, strict=True)) + "}"
    if issubclass(meta, list):
        return "[" + ", ".join(parts) + "]"
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _locate(node: Any, path: str) -> None:
    """Raise a TypeError naming the first part of stored samples that is not a tensor or a container."""
    if isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            _locate(v, f"{path}[{i}]")
    elif isinstance(node, Mapping):
        keys = list(node.keys())
        try:
            keys.sort()
        except TypeError:
            raise TypeError(f"{path} is a dict with keys {keys!r} that cannot be sorted; use e.g. str keys.") from None
        for k in keys:
            _locate(node[k], f"{path}[{k!r}]")
    elif not isinstance(node, Tensor):
        raise TypeError(
            f"{path} is of type {type(node).__name__}; a buffer stores tensors and tuples / lists / dicts of tensors "
            "only (drop or convert the other fields before offering the batch)."
        )


def _batch_size(leaves: Sequence[Tensor]) -> int:
    if not leaves:
        raise ValueError("A stored sample needs at least one tensor, got an empty structure.")
    if any(x.ndim == 0 for x in leaves):
        raise ValueError("Every tensor of a batch needs a leading batch dimension, got a 0-dimensional tensor.")
    sizes = sorted({int(x.shape[0]) for x in leaves})
    if len(sizes) > 1:
        raise ValueError(f"Every tensor of a batch must have the same batch size (leading dimension), got {sizes}.")
    return sizes[0]
