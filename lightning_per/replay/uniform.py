"""Uniform replay: a draw is ``k`` distinct held items, chosen uniformly, in O(k) work whatever the capacity."""

from __future__ import annotations

from typing import Any

import numpy as np

from lightning_per.functional.reservoir import sample_without_replacement

__all__ = ["UniformReplaySampler"]


class UniformReplaySampler:
    """Draw ``min(batch_size, size)`` distinct held items uniformly, in random order, without weights.

    Without replacement, as the reference ER implementations draw their replay batch; the work is O(batch_size)
    (``sample_without_replacement``), never a permutation of the buffer.

    Example:
        >>> slots, weights = UniformReplaySampler().sample(10**9, 4, np.random.default_rng(0))
        >>> len(set(slots.tolist())), weights
        (4, None)
    """

    def like(self, capacity: int) -> UniformReplaySampler:
        """Another uniform sampler (it holds no per-slot state)."""
        return UniformReplaySampler()

    def sample(self, size: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, None]:
        """Slots of a uniform draw without replacement (fewer than asked while fewer are held)."""
        return sample_without_replacement(size, batch_size, rng), None

    def on_write(self, slots: np.ndarray) -> None:
        """Nothing to do: every held item is as likely."""

    def state_dict(self, size: int) -> dict[str, Any]:
        """No state."""
        return {}

    def load_state_dict(self, state: dict[str, Any], size: int) -> None:
        """No state."""
