"""A float64 sum tree and min tree over a fixed number of slots: O(log n) vectorised update and draw."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["SumTree"]


class SumTree:
    """Segment trees of the sums and the minima of ``capacity`` non-negative float64 values.

    Leaves live at ``[size, 2 * size)`` of a heap-ordered array (``size`` the next power of two); an internal node
    holds the sum (min) of its two children. Updates recompute the touched ancestors from their children, so
    the sums stay exact (no accumulated deltas). Every method works on a batch of indices at once, one level
    of the tree per array operation. The trees are float64 tensors; the per-level work runs on NumPy views of
    them, because at replay batch sizes the fixed cost of a tiny tensor operation (microseconds) dominates.

    Args:
        capacity: number of slots; every value starts at 0 (and is "empty" for the min tree).

    Raises:
        ValueError: ``capacity`` is not positive.

    Example::

        >>> tree = SumTree(4)
        >>> tree.update(torch.tensor([0, 2]), torch.tensor([1.0, 3.0], dtype=torch.float64))
        >>> tree.total, tree.min
        (4.0, 1.0)
        >>> tree.find(torch.tensor([0.5, 1.0, 3.9], dtype=torch.float64))
        tensor([0, 2, 2])
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"`capacity` must be a positive integer, got {capacity}.")
        self.capacity = capacity
        self._size = 1 << max(capacity - 1, 0).bit_length()
        self._depth = self._size.bit_length() - 1
        self._sum = torch.zeros(2 * self._size, dtype=torch.float64)
        self._min = torch.full((2 * self._size,), float("inf"), dtype=torch.float64)
        self._sum_np: np.ndarray = self._sum.numpy()  # views: writes through them change the tensors
        self._min_np: np.ndarray = self._min.numpy()

    @property
    def total(self) -> float:
        """The sum of all values."""
        return float(self._sum_np[1])

    @property
    def min(self) -> float:
        """The smallest value written so far (``inf`` while nothing is)."""
        return float(self._min_np[1])

    def values(self, index: Tensor | None = None) -> Tensor:
        """The leaf values (all of them, or at ``index``)."""
        leaves = self._sum[self._size : self._size + self.capacity]
        return leaves.clone() if index is None else leaves[index]

    def update(self, index: Tensor, value: Tensor) -> None:
        """Set ``values[index] = value`` (each index at most once) and refresh the ancestors.

        Raises:
            ValueError: an index is out of range, repeated, or a value is negative or not finite.
        """
        idx = index.detach().cpu().to(torch.int64).flatten().numpy()
        val = value.detach().cpu().to(torch.float64).flatten().numpy()
        if idx.size == 0:
            return
        if idx.shape != val.shape:
            raise ValueError(f"`index` and `value` must have the same size, got {idx.size} and {val.size}.")
        if int(idx.min()) < 0 or int(idx.max()) >= self.capacity:
            raise ValueError(f"`index` must be in [0, {self.capacity}), got values in [{idx.min()}, {idx.max()}].")
        if np.unique(idx).size != idx.size:
            raise ValueError("`index` must not repeat a slot within one update.")
        if not bool(np.isfinite(val).all()) or float(val.min()) < 0:
            raise ValueError("`value` must be finite and non-negative.")
        sums, mins = self._sum_np, self._min_np
        node = idx + self._size
        sums[node] = val
        mins[node] = val
        for _ in range(self._depth):
            node = node >> 1  # repeated parents recompute the same value: no need to deduplicate
            left = node << 1
            sums[node] = sums[left] + sums[left + 1]
            mins[node] = np.minimum(mins[left], mins[left + 1])

    def find(self, target: Tensor) -> Tensor:
        """For each ``target`` in ``[0, total)``, the slot ``i`` with ``prefix(i) <= target < prefix(i + 1)``.

        A descent never enters an all-zero subtree, so zero-valued slots are never returned (even when rounding
        pushes ``target`` to ``total``).
        """
        rest = target.detach().cpu().to(torch.float64).flatten().numpy().copy()
        sums = self._sum_np
        node = np.ones(rest.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = node << 1
            left_sum = sums[left]
            go_right = ((rest >= left_sum) & (sums[left + 1] > 0)) | (left_sum <= 0)
            rest = np.where(go_right, rest - left_sum, rest)
            node = left + go_right
        return torch.from_numpy(node - self._size).reshape(target.shape)

    def state_dict(self) -> dict[str, Any]:
        """Leaf values (tensors and plain values only)."""
        return {"capacity": self.capacity, "values": self.values(), "written": torch.isfinite(self._min[self._size :])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the leaves and rebuild the internal nodes.

        Raises:
            ValueError: the saved capacity differs.
        """
        if int(state["capacity"]) != self.capacity:
            raise ValueError(f"Saved sum tree has capacity {state['capacity']}, this one {self.capacity}.")
        self._sum_np.fill(0.0)
        self._min_np.fill(np.inf)
        written = torch.nonzero(state["written"][: self.capacity]).flatten()
        self.update(written, state["values"][written])
