"""A float64 sum tree and min tree over a fixed number of slots: O(k log n) vectorised updates and draws."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SumTree"]

FANOUT = 16  # children of an internal node
MAX_ROOTS = 4096  # nodes of the top level, searched as one sorted array
_SHIFT = FANOUT.bit_length() - 1
_BEFORE = np.triu(np.ones((FANOUT, FANOUT)), 1)  # children @ _BEFORE: the sum of the children before each one
_ALL = np.ones(FANOUT)


class SumTree:
    """Sums and minima of ``capacity`` non-negative float64 values, with prefix-sum search (a sum tree).

    Layout: the values (leaves) are grouped by 16 under internal nodes that keep their total and the minimum of
    their positive leaves; the top level has at most 4096 nodes, whose prefix sums form one sorted array (the root).
    A capacity ``n`` has ``ceil(log16(n / 4096))`` internal levels: none up to 4096 slots, 2 at 10^6, 3 at 10^7.

    - ``find`` of ``k`` targets: the targets are sorted (so that the memory accesses of every level run in
      order), located in the root by a binary search, then, level by level, among the 16 children of their node
      by the sums of the children before each one (one ``(k, 16) @ (16, 16)`` product per level): O(k log n).
    - ``update`` of ``k`` values: the leaves, then per level the touched parents' totals and minima recomputed
      from their 16 children (so the sums stay exact: no accumulated deltas), then the root's prefix sums (at most
      4096 values): O(k log n + 4096).

    Every step is one NumPy (or torch) call over the whole batch; nothing loops over the slots or the batch.

    Args:
        capacity: number of slots; every value starts at 0.

    Raises:
        ValueError: ``capacity`` is not positive.

    Example:
        >>> tree = SumTree(4)
        >>> tree.update(np.array([0, 2]), np.array([1.0, 3.0]))
        >>> tree.total, tree.min
        (4.0, 1.0)
        >>> tree.find(np.array([0.5, 1.0, 3.9]))
        (array([0, 2, 2]), array([1., 3., 3.]))
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"`capacity` must be a positive integer, got {capacity!r}.")
        self.capacity = capacity
        depth = 0
        while -(-capacity // FANOUT**depth) > MAX_ROOTS:
            depth += 1
        self.depth = depth
        self._roots = -(-capacity // FANOUT**depth)
        widths = [self._roots * FANOUT**d for d in range(depth + 1)]
        self._sums = [np.zeros(w) for w in widths]  # node totals per level; the last level holds the values
        self._mins = [np.full(w, np.inf) for w in widths[:-1]]  # internal nodes: minimum of their positive leaves
        self._child_sums = [s.reshape(-1, FANOUT) for s in self._sums[1:]]  # [d]: the children of level d's nodes
        self._child_mins = [m.reshape(-1, FANOUT) for m in self._mins[1:]]
        self._prefix = np.zeros(self._roots + 1)  # [0, prefix sums of the top level's totals]: the root
        self._prefix_t = torch.from_numpy(self._prefix)
        self._top_t = torch.from_numpy(self._sums[0])
        self._min = float("inf")

    @property
    def total(self) -> float:
        """The sum of all values."""
        return float(self._prefix[-1])

    @property
    def min(self) -> float:
        """The smallest positive value (``inf`` while there is none)."""
        return self._min

    @property
    def nbytes(self) -> int:
        """Bytes held by the tree."""
        return sum(a.nbytes for a in (*self._sums, *self._mins, self._prefix))

    def values(self, index: np.ndarray | Tensor | None = None) -> np.ndarray:
        """The values (a copy of all of them, or those at ``index``)."""
        leaves = self._sums[-1]
        return leaves[: self.capacity].copy() if index is None else leaves[np.asarray(index)]

    def update(self, index: np.ndarray | Tensor, value: np.ndarray | Tensor, check: bool = True) -> None:
        """Set ``values[index] = value`` (each index at most once) and refresh the ancestors.

        Args:
            index: int64 slots.
            value: float64 values, same size.
            check: validate the arguments; a caller that guarantees them (the buffers do) skips the checks.

        Raises:
            ValueError: an index is out of range or repeated, or a value is negative or not finite.
        """
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        val = np.asarray(value, dtype=np.float64).reshape(-1)
        if check:
            _check_update(idx, val, self.capacity)
        if idx.size == 0:
            return
        self._sums[-1][idx] = val
        if idx.size * FANOUT > self._sums[-1].size:  # a large batch: rebuilding every level is cheaper
            self._rebuild()
            return
        node = idx
        for d in range(self.depth - 1, -1, -1):
            node = node >> _SHIFT
            children = np.take(self._child_sums[d], node, axis=0)
            self._sums[d][node] = children @ _ALL
            if d == self.depth - 1:
                mins = np.where(children > 0, children, np.inf)
            else:
                mins = np.take(self._child_mins[d], node, axis=0)
            self._mins[d][node] = np.ascontiguousarray(mins.T).min(0)  # a reduction along the long axis: fast
        self._refresh_root()

    def find(self, target: np.ndarray | Tensor) -> tuple[np.ndarray, np.ndarray]:
        """For each ``target`` in ``[0, total)``, the slot ``i`` with ``prefix(i) <= target < prefix(i + 1)``.

        Returns:
            ``(slots, values)``: the slots found and their values. A zero-valued slot is never returned, except when
            float64 rounding carries a target onto the very end of a node's range (about once in 10^16 draws);
            callers that must never see one check the values and draw again.
        """
        target = np.asarray(target, dtype=np.float64).reshape(-1)
        order = np.argsort(target)
        rest = target[order]
        node = np.searchsorted(self._prefix, rest, side="right")  # sorted keys: the fast path
        node -= 1
        np.minimum(node, self._roots - 1, out=node)  # a target rounded up to the total
        rest -= self._prefix[node]
        offsets = np.arange(0, rest.size * FANOUT, FANOUT)
        column = rest[:, None]  # a view: follows the in-place updates of `rest`
        value = self._sums[0][node] if self.depth == 0 else rest  # the top level holds the values, or see below
        for d in range(self.depth):
            children = np.take(self._child_sums[d], node, axis=0)
            before = children @ _BEFORE  # exclusive prefix sums: the start of each child's range, 0 first
            child = (before <= column).argmin(axis=1)  # the first child starting past the target (0: none does)
            child -= 1
            child &= FANOUT - 1  # so the one before it; -1 (none starts past it) becomes the last child
            flat = offsets + child
            if d == self.depth - 1:
                value = children.reshape(-1)[flat]
            else:
                rest -= before.reshape(-1)[flat]  # now relative to the chosen child's start
            node <<= _SHIFT
            node |= child
        slots = np.empty_like(node)
        slots[order] = node
        values = np.empty_like(value)
        values[order] = value
        return slots, values

    def _refresh_root(self) -> None:
        torch.cumsum(self._top_t, 0, out=self._prefix_t[1:])
        top = self._mins[0] if self.depth else np.where(self._sums[0] > 0, self._sums[0], np.inf)
        self._min = float(top.min())

    def _rebuild(self) -> None:
        """Recompute every internal node from the values: O(capacity)."""
        for d in range(self.depth - 1, -1, -1):
            children = self._child_sums[d]
            self._sums[d][:] = children @ _ALL
            mins = np.where(children > 0, children, np.inf) if d == self.depth - 1 else self._child_mins[d]
            self._mins[d][:] = mins.min(axis=1)
        self._refresh_root()

    def state_dict(self) -> dict[str, Any]:
        """The values (tensors and plain values only)."""
        return {"capacity": self.capacity, "values": torch.from_numpy(self.values())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the values and rebuild the internal nodes.

        Raises:
            ValueError: the saved capacity differs, or a value is negative or not finite.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"Saved sum tree has capacity {state['capacity']}, this one {self.capacity}.")
        values = np.asarray(state["values"], dtype=np.float64).reshape(-1)[: self.capacity]
        _check_update(np.arange(values.size), values, self.capacity)
        self._sums[-1][:] = 0.0
        self._sums[-1][: values.size] = values
        self._rebuild()


def _check_update(idx: np.ndarray, val: np.ndarray, capacity: int) -> None:
    if idx.shape != val.shape:
        raise ValueError(f"`index` and `value` must have the same size, got {idx.size} and {val.size}.")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= capacity):
        raise ValueError(f"`index` must be in [0, {capacity}), got values in [{idx.min()}, {idx.max()}].")
    ordered = np.sort(idx)
    if (ordered[1:] == ordered[:-1]).any():
        raise ValueError("`index` must not repeat a slot within one update.")
    if val.size and (not bool(np.isfinite(val).all()) or float(val.min()) < 0):
        raise ValueError("`value` must be finite and non-negative.")
