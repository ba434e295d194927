"""The small protocols a replay buffer is composed of: a writer (which slots) and a sampler (which items to draw).

The storage (``TensorStorage``) holds the samples; a writer decides where new
items go; a sampler decides what a draw returns and may weight it. The buffer owns one random generator and hands it
to both, so that its state is the whole of the randomness. Indices cross these protocols as int64 NumPy arrays: at
replay batch sizes a NumPy call costs a fraction of a torch operator's fixed overhead.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

__all__ = ["Sampler", "Writer"]


class Writer(Protocol):
    """Decides which slots new items overwrite (e.g. ``ReservoirWriter``)."""

    capacity: int
    seen: int

    def __len__(self) -> int:
        """The number of slots in use; slots ``[0, len)`` hold items."""
        ...

    def like(self, capacity: int) -> Writer:
        """A fresh writer of the same kind for ``capacity`` slots (a process's share under DDP)."""
        ...

    def plan(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(slots, items)`` for ``n`` new items: distinct slots and the batch index written to each."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors only."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``."""
        ...


class Sampler(Protocol):
    """Decides which held items a draw returns (e.g. ``UniformReplaySampler``)."""

    def like(self, capacity: int) -> Sampler:
        """A fresh sampler of the same kind and settings for ``capacity`` slots."""
        ...

    def sample(self, size: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``(slots, weights)`` for a draw of ``batch_size`` among slots ``[0, size)``; ``weights`` ``None``: all 1."""
        ...

    def on_write(self, slots: np.ndarray) -> None:
        """New items were written to ``slots``."""
        ...

    def state_dict(self, size: int) -> dict[str, Any]:
        """The state about slots ``[0, size)`` (plain values and tensors; keys distinct from the buffer's own)."""
        ...

    def load_state_dict(self, state: dict[str, Any], size: int) -> None:
        """Restore a ``state_dict`` for slots ``[0, size)`` (a state without this sampler's keys: defaults)."""
        ...
