"""Prioritized replay: draws with ``p ∝ priority ** alpha`` from a float64 sum tree, with importance weights."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_per._checks import check_int, check_number
from lightning_per.functional.reservoir import last_write_per_slot
from lightning_per.replay.sumtree import SumTree

__all__ = ["PrioritizedReplaySampler"]


class PrioritizedReplaySampler:
    """Draw held items with replacement with ``p_i ∝ priority_i ** alpha``; weight them ``(n p_i) ** -beta / max``.

    The sum tree holds ``(priority + eps) ** alpha`` per slot: ``alpha`` is applied exactly once, when a priority is
    written. New items get the largest priority given so far (so they are replayed soon). The weights are divided by
    the largest possible one, ``(n p_min) ** -beta``, which the tree's minimum gives exactly. Draws and updates
    touch O(k log n) tree nodes (``SumTree``).

    Args:
        capacity: the number of slots.
        alpha: priority exponent (0 is uniform).
        beta: importance-weight exponent in ``[0, 1]`` (1 is unbiased).
        eps: added to every priority so that no item has zero probability.

    Raises:
        ValueError: ``alpha < 0``, ``beta`` outside ``[0, 1]`` or ``eps <= 0``.

    Example:
        >>> sampler = PrioritizedReplaySampler(4, alpha=1.0, beta=1.0)
        >>> sampler.on_write(np.arange(4))
        >>> sampler.update(torch.tensor([0]), torch.tensor([3.0]), size=4)  # the number of values left out
        0
        >>> slots, weights = sampler.sample(4, 2, np.random.default_rng(0))
        >>> weights.dtype
        dtype('float32')
    """

    def __init__(self, capacity: int, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-3) -> None:
        check_int("capacity", capacity, 1)
        check_number("alpha", alpha, 0.0, hint="It is the priority exponent; 0 is uniform.")
        check_number("beta", beta, 0.0, 1.0, hint="It is the importance-weight exponent; 1 is unbiased.")
        check_number("eps", eps, 0.0, low_open=True)
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self.tree = SumTree(capacity)
        self.max_priority = 1.0  # the largest priority given so far (before alpha)
        self._warned_nonfinite = False

    def like(self, capacity: int) -> PrioritizedReplaySampler:
        """An empty prioritized sampler with the same ``alpha``, ``beta`` and ``eps`` for ``capacity`` slots."""
        return PrioritizedReplaySampler(capacity, self.alpha, self.beta, self.eps)

    @property
    def capacity(self) -> int:
        """The number of slots."""
        return self.tree.capacity

    def sample(self, size: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Slots and float32 weights of ``batch_size`` draws with replacement (none while nothing is held)."""
        if size == 0 or batch_size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        total = self.tree.total
        slots, values = self.tree.find(rng.random(batch_size) * total)
        while values.min() <= 0:  # a target rounded onto the end of a node's range (about once in 10^16 draws)
            empty = values <= 0
            slots[empty], values[empty] = self.tree.find(rng.random(int(empty.sum())) * total)
        if self.beta == 0:
            return slots, np.ones(slots.size, dtype=np.float32)
        values /= self.tree.min  # (n p) ** -beta / (n p_min) ** -beta == (value / min value) ** -beta
        np.power(values, -self.beta, out=values)
        return slots, values.astype(np.float32)

    def on_write(self, slots: np.ndarray) -> None:
        """New items start at the largest priority given so far."""
        self.tree.update(slots, np.full(slots.size, self.max_priority**self.alpha), check=False)

    def probabilities(self, size: int) -> Tensor:
        """float64 draw probabilities of slots ``[0, size)``."""
        return torch.from_numpy(self.tree.values(np.arange(size)) / self.tree.total)

    @torch.no_grad()
    def update(self, index: Tensor | np.ndarray, priority: Tensor | np.ndarray, size: int) -> int:
        """Set the priorities of held items to ``|priority| + eps`` (e.g. their latest losses).

        A slot given several times keeps the last finite value given for it. Non-finite values (NaN/inf losses) are
        left out: an item given only those keeps its priority, and the max priority given to new items stays finite
        (warned once).

        Args:
            index: slots of held items, in ``[0, size)``.
            priority: one value per slot.
            size: the number of slots in use.

        Returns:
            How many non-finite values were left out.

        Raises:
            ValueError: shapes differ, or an index is not an item held.
        """
        idx = _numpy(index, np.int64)
        value = _numpy(priority, np.float64)
        if idx.shape != value.shape:
            raise ValueError(f"`index` and `priority` must have the same shape, got {idx.shape}, {value.shape}.")
        if idx.size == 0:
            return 0
        if int(idx.min()) < 0 or int(idx.max()) >= size:
            raise ValueError(f"`index` must point at items held, in [0, {size}), got {idx.tolist()}.")
        magnitude = np.abs(value)
        powered = magnitude + self.eps
        if self.alpha != 1:
            powered **= self.alpha
        finite = np.isfinite(magnitude + powered)  # NaN/inf losses (NaN ** 0 is 1), or too large once powered
        dropped = 0
        if not finite.all():
            dropped = int(finite.size - np.count_nonzero(finite))
            idx, magnitude, powered = idx[finite], magnitude[finite], powered[finite]
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    f"PrioritizedReplayBuffer.update_priorities got {dropped} non-finite priorities (NaN/inf "
                    "losses); those items keep their previous priorities. Warned once.",
                    stacklevel=3,
                )
            if idx.size == 0:
                return dropped
        slots, items = last_write_per_slot(idx)
        self.max_priority = max(self.max_priority, float(magnitude.max()) + self.eps)
        self.tree.update(slots, powered[items], check=False)
        return dropped

    def state_dict(self, size: int) -> dict[str, Any]:
        """The priorities of slots ``[0, size)`` (after ``alpha``) and the max priority."""
        return {
            "priorities": torch.from_numpy(self.tree.values(np.arange(size))),
            "max_priority": self.max_priority,
        }

    def load_state_dict(self, state: dict[str, Any], size: int) -> None:
        """Restore a ``state_dict``; a state without priorities (a uniform buffer's) gives every item the max."""
        self.max_priority = float(state.get("max_priority", 1.0))
        self.tree = SumTree(self.tree.capacity)
        if "priorities" in state:
            values = _numpy(state["priorities"], np.float64)[:size]
        else:
            values = np.full(size, self.max_priority**self.alpha)
        if values.size:
            self.tree.update(np.arange(values.size), values)


def _numpy(x: Tensor | np.ndarray, dtype: type) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        x = x.numpy()
    return np.asarray(x, dtype=dtype).reshape(-1)
