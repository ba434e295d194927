"""The reservoir writer: which slots a batch of stream items goes to, so that the buffer is a uniform sample."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_per._checks import check_int
from lightning_per.functional.reservoir import last_write_per_slot, reservoir_slots

__all__ = ["ReservoirWriter"]


class ReservoirWriter:
    """Reservoir sampling over a stream seen once: item ``j`` (1-based) is kept with probability ``capacity / j``.

    ``plan`` decides, for a batch of ``n`` new items, the slots they overwrite (O(n log n): vectorised draws,
    then the last write per slot wins, as if the items came one by one); it counts the items seen and the slots in
    use. Kept items take a free slot while there is one, else a uniformly chosen slot: exactly the classic
    reservoir for a buffer filled from its start; a buffer restored with fewer items than ``min(seen, capacity)``
    (pooled from other processes' buffers) fills its free slots with the items it keeps.

    Args:
        capacity: the number of slots.

    Raises:
        ValueError: ``capacity`` is not a positive integer.

    Example:
        >>> writer = ReservoirWriter(3)
        >>> writer.plan(2, np.random.default_rng(0))
        (array([0, 1]), array([0, 1]))
        >>> writer.seen, len(writer)
        (2, 2)
    """

    def __init__(self, capacity: int) -> None:
        check_int("capacity", capacity, 1)
        self.capacity = capacity
        self.seen = 0
        self.size = 0

    def like(self, capacity: int) -> ReservoirWriter:
        """An empty reservoir writer for ``capacity`` slots."""
        return ReservoirWriter(capacity)

    def __len__(self) -> int:
        """The number of slots in use: slots ``[0, size)`` hold items."""
        return self.size

    def plan(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Decide where ``n`` new items go and count them as seen.

        Returns:
            ``(slots, items)``: distinct int64 slots and, for each, the index in the batch of the item written there
            (items in increasing order).
        """
        slots = reservoir_slots(self.seen, self.capacity, n, rng)
        if self.size != min(self.seen, self.capacity):  # free slots below the classic fill line: fill them first
            kept = np.flatnonzero(slots >= 0)[: self.capacity - self.size]
            slots[kept] = np.arange(self.size, self.size + kept.size)
            self.size += kept.size
        else:
            self.size = min(self.seen + n, self.capacity)
        self.seen += n
        if self.seen <= self.capacity and self.size == self.seen:  # still filling: slot seen + i for item i
            return slots, np.arange(n, dtype=np.int64)
        return last_write_per_slot(slots)

    def state_dict(self) -> dict[str, Any]:
        """The counts of items seen and of slots in use."""
        return {"seen": self.seen, "size": self.size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict`` (without ``size``: ``min(seen, capacity)``)."""
        self.seen = int(state["seen"])
        self.size = min(int(state.get("size", self.seen)), self.seen, self.capacity)
