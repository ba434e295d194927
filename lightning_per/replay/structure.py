"""The structure of a stored sample: a tensor, or tuples / lists / dicts (nested) of tensors, flattened to leaves.

A buffer learns the structure, dtypes and per-sample shapes from the first batch it is given (``SampleSpec.of``)
and refuses any later batch that differs (``SampleSpec.check``). Tuples and lists count as the same kind of
container (a DataLoader collates tuples into lists); draws come back as the container of the first batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SampleSpec", "flatten", "join", "unflatten"]

# A tree definition: None for a tensor leaf, ("seq", container type, children) or ("dict", keys, children).
TreeDef = Any


def flatten(batch: Any) -> tuple[list[Tensor], TreeDef]:
    """Leaves of ``batch`` (depth first; dict keys in sorted order) and its tree definition.

    Raises:
        TypeError: a leaf is not a tensor, or a dict's keys cannot be sorted (mixed types).

    Example:
        >>> leaves, treedef = flatten({"label": torch.tensor([1]), "image": (torch.zeros(1, 2), torch.ones(1))})
        >>> [tuple(leaf.shape) for leaf in leaves]
        [(1, 2), (1,), (1,)]
        >>> unflatten([leaf + 1 for leaf in leaves], treedef)["label"]
        tensor([2])
    """
    leaves: list[Tensor] = []
    try:
        return leaves, _flatten(batch, leaves)
    except TypeError:
        _locate(batch, "batch")  # raises with the path of what is wrong
        raise


def _flatten(node: Any, leaves: list[Tensor]) -> TreeDef:  # hot: no path bookkeeping (see _locate)
    if isinstance(node, Tensor):
        leaves.append(node)
        return None
    if isinstance(node, (tuple, list)):
        return ("seq", type(node), tuple([_flatten(v, leaves) for v in node]))
    if isinstance(node, (dict, Mapping)):
        keys = sorted(node)
        return ("dict", tuple(keys), tuple([_flatten(node[k], leaves) for k in keys]))
    raise TypeError(type(node).__name__)


def _locate(node: Any, path: str) -> None:
    """Raise a TypeError naming the first part of ``node`` that a buffer cannot store."""
    if isinstance(node, Tensor):
        return
    if isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            _locate(v, f"{path}[{i}]")
        return
    if isinstance(node, Mapping):
        keys = list(node.keys())
        try:
            keys.sort()
        except TypeError:
            raise TypeError(f"{path} is a dict with keys {keys!r} that cannot be sorted; use e.g. str keys.") from None
        for k in keys:
            _locate(node[k], f"{path}[{k!r}]")
        return
    raise TypeError(
        f"{path} is of type {type(node).__name__}; a buffer stores tensors and tuples / lists / dicts of tensors only "
        "(drop or convert the other fields before offering the batch)."
    )


def unflatten(leaves: Sequence[Tensor], treedef: TreeDef, plain: bool = False) -> Any:
    """Rebuild the structure of ``treedef`` around ``leaves`` (the inverse of ``flatten``).

    Args:
        leaves: tensors in ``flatten`` order.
        treedef: the tree definition.
        plain: rebuild every sequence as a plain tuple or list (a named tuple becomes a tuple), so that the result
            loads with ``torch.load(weights_only=True)``.
    """
    it = iter(leaves)
    return _unflatten(it, treedef, plain)


def _unflatten(it: Any, treedef: TreeDef, plain: bool) -> Any:
    if treedef is None:
        return next(it)
    kind, meta, children = treedef
    values = [_unflatten(it, child, plain) for child in children]
    if kind == "dict":
        return dict(zip(meta, values, strict=True))
    if issubclass(meta, list):
        return values if plain or meta is list else meta(values)
    if plain or meta is tuple:
        return tuple(values)
    return meta(*values) if hasattr(meta, "_fields") else meta(values)  # a named tuple takes its fields


def join(first: Any, second: Any) -> Any:
    """The samples of ``first`` followed by those of ``second``, leaf by leaf, in ``first``'s containers and device.

    Args:
        first: a batch (tensor, or tuples / lists / dicts of tensors).
        second: a batch of the same structure and dtypes (e.g. a buffer draw); tuples and lists count as the same.

    Raises:
        ValueError: the structures differ.

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
    return unflatten(
        [torch.cat([a, b if b.device == a.device else b.to(a.device)]) for a, b in zip(leaves, others, strict=True)],
        treedef,
    )


def _shape_of(treedef: TreeDef) -> TreeDef:
    """The tree definition without container types (tuple and list compare equal)."""
    if treedef is None:
        return None
    kind, meta, children = treedef
    return (kind, meta if kind == "dict" else len(children), tuple(_shape_of(c) for c in children))


@dataclass(frozen=True)
class SampleSpec:
    """Structure, dtypes and per-sample shapes of the samples a buffer stores.

    Args:
        treedef: the tree definition of ``flatten``.
        dtypes: one dtype per leaf.
        shapes: one per-sample shape (the leaf's shape without its leading batch dimension) per leaf.

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
        """The spec of a batch (every leaf with the same leading batch dimension).

        Raises:
            TypeError: see ``flatten``.
            ValueError: no leaves, a 0-dimensional leaf, or leaves with different batch sizes.
        """
        leaves, treedef = flatten(batch)
        _batch_size(leaves)
        return cls(treedef, tuple(x.dtype for x in leaves), tuple(tuple(x.shape[1:]) for x in leaves))

    def check(self, leaves: Sequence[Tensor], treedef: TreeDef | None = None) -> int:
        """The batch size of flattened ``leaves`` if they match this spec.

        Args:
            leaves: the leaves of a batch.
            treedef: their tree definition (``None``: assume this spec's).

        Raises:
            ValueError: a different structure, dtype or per-sample shape (the message shows both), or leaves with
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
        it = iter(zip(self.dtypes, self.shapes, strict=True))
        return _describe(self.treedef, it)


def _describe(treedef: TreeDef, it: Any) -> str:
    if treedef is None:
        dtype, shape = next(it)
        return f"Tensor[{str(dtype).removeprefix('torch.')}, {tuple(shape)}]"
    kind, meta, children = treedef
    parts = [_describe(child, it) for child in children]
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {p}" for k, p in zip(meta, parts, strict=True)) + "}"
    if issubclass(meta, list):
        return "[" + ", ".join(parts) + "]"
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def _batch_size(leaves: Sequence[Tensor]) -> int:
    if not leaves:
        raise ValueError("A stored sample needs at least one tensor, got an empty structure.")
    first = leaves[0]
    n = int(first.shape[0]) if first.ndim else -1
    for x in leaves:
        if x.ndim == 0 or x.shape[0] != n:
            break
    else:
        return n
    if any(x.ndim == 0 for x in leaves):
        raise ValueError("Every tensor of a batch needs a leading batch dimension, got a 0-dimensional tensor.")
    sizes = sorted({int(x.shape[0]) for x in leaves})
    raise ValueError(f"Every tensor of a batch must have the same batch size (leading dimension), got {sizes}.")
