"""Replay buffers: a storage, a reservoir writer and a sampler (uniform or prioritized) behind one small class."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from lightning_per._checks import check_int
from lightning_per.replay.prioritized import PrioritizedReplaySampler
from lightning_per.replay.protocols import Sampler, Writer
from lightning_per.replay.storage import TensorStorage
from lightning_per.replay.uniform import UniformReplaySampler
from lightning_per.replay.writer import ReservoirWriter

__all__ = ["PrioritizedReplayBuffer", "ReplayBuffer", "ReplaySample", "ReservoirBuffer"]


class ReplaySample(NamedTuple):
    """A draw from a replay buffer: the samples, their slots and their weights.

    Attributes:
        batch: the stored structure, leading dimension the number drawn, on the buffer's device; ``None`` before
            anything was stored.
        slots: int64 slots on the CPU (give them back to ``PrioritizedReplayBuffer.update_priorities``).
        weight: float32 importance weights on the buffer's device (1 for uniform draws).

    Example:
        >>> batch, slots, weight = ReservoirBuffer(capacity=4).sample(2)  # nothing stored yet
        >>> batch, slots.tolist()
        (None, [])
    """

    batch: Any
    slots: Tensor
    weight: Tensor


class ReplayBuffer:
    """A fixed-capacity memory over a stream, composed of a storage, a writer and a sampler.

    ``add`` copies a batch's items into the slots the writer chooses (reservoir sampling by default, so every item
    seen so far is held with probability ``capacity / seen``); ``sample`` draws held items as the sampler chooses.
    Samples may be any structure of tensors (a tensor, tuples / lists / dicts, nested); the first batch fixes the
    structure, dtypes and per-sample shapes. One seeded generator drives every random decision, and ``state_dict``
    saves it: a buffer restored mid-stream continues exactly as the uninterrupted one.

    Args:
        capacity: the number of items kept.
        sampler: which items a draw returns (default ``lightning_per.replay.uniform.UniformReplaySampler``).
        writer: which slots new items take (default ``lightning_per.replay.writer.ReservoirWriter``).
        device: where the samples are kept (``None``: CPU); draws come back there.
        seed: seed of the buffer's generator.

    Raises:
        ValueError: ``capacity`` is not a positive integer, or the writer or the sampler has another capacity.

    Example:
        >>> buf = ReplayBuffer(capacity=4, seed=0)
        >>> _ = buf.add({"image": torch.randn(10, 3), "label": torch.arange(10)})
        >>> len(buf), buf.seen
        (4, 10)
        >>> draw = buf.sample(2)
        >>> draw.batch["image"].shape, draw.weight
        (torch.Size([2, 3]), tensor([1., 1.]))
    """

    def __init__(
        self,
        capacity: int = 1000,
        sampler: Sampler | None = None,
        writer: Writer | None = None,
        device: str | torch.device | None = None,
        seed: int = 0,
    ) -> None:
        check_int("capacity", capacity, 1)
        check_int("seed", seed)
        _check_part("sampler", sampler, ("sample", "on_write", "state_dict", "load_state_dict"), _SAMPLER_HINT)
        _check_part("writer", writer, ("plan", "state_dict", "load_state_dict"), "e.g. `ReservoirWriter(capacity)`")
        self.storage = TensorStorage(capacity, device)
        self.writer: Writer = ReservoirWriter(capacity) if writer is None else writer
        if self.writer.capacity != capacity:
            raise ValueError(f"The writer has capacity {self.writer.capacity}, the buffer {capacity}.")
        self.sampler: Sampler = UniformReplaySampler() if sampler is None else sampler
        sampler_capacity = getattr(self.sampler, "capacity", capacity)  # a sampler with per-slot state has one
        if sampler_capacity != capacity:
            raise ValueError(f"The sampler has capacity {sampler_capacity}, the buffer {capacity}.")
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def capacity(self) -> int:
        """The number of items kept."""
        return self.storage.capacity

    @property
    def device(self) -> torch.device:
        """Where the samples are kept."""
        return self.storage.device

    @property
    def seen(self) -> int:
        """How many stream items were offered to the buffer."""
        return self.writer.seen

    def __len__(self) -> int:
        return len(self.writer)

    def contents(self) -> Any:
        """The items held, as the stored structure of views of the storage (copy before changing them).

        ``None`` before anything was stored.
        """
        return self.storage.view(len(self))

    def add(self, batch: Any) -> Tensor:
        """Offer a batch of stream items (copied); return the slots written.

        Args:
            batch: a tensor, or tuples / lists / dicts of tensors, each with the same leading batch dimension.

        Returns:
            int64 slots (CPU) that received an item, each once.

        Raises:
            TypeError: a leaf of ``batch`` is not a tensor.
            ValueError: the structure, a dtype or a per-sample shape differs from the stored ones (the message
                names both), or the tensors have different batch sizes.
        """
        leaves, n = self.storage.prepare(batch)
        slots, items = self.writer.plan(n, self._rng)
        if slots.size:
            rows = None if items.size == n else torch.from_numpy(items)  # items ascend: all n means 0..n-1
            self.storage.write(torch.from_numpy(slots), leaves, rows)
            self.sampler.on_write(slots)
        return torch.from_numpy(slots)

    def sample(self, batch_size: int) -> ReplaySample:
        """Draw held items as the sampler decides (what there is while the buffer holds too few: possibly none).

        Raises:
            ValueError: ``batch_size`` is negative.
        """
        if batch_size < 0:
            raise ValueError(f"`batch_size` must be >= 0, got {batch_size}.")
        slots, weights = self.sampler.sample(len(self), batch_size, self._rng)
        index = torch.from_numpy(slots)
        batch = self.storage.read(index) if self.storage.allocated else None
        if weights is None:
            weight = torch.ones(index.numel(), device=self.device)
        else:
            weight = torch.from_numpy(weights)
            if weight.device != self.device:
                weight = weight.to(self.device)
        return ReplaySample(batch, index, weight)

    def like(self, capacity: int, seed: int | None = None, device: str | torch.device | None = None) -> ReplayBuffer:
        """An empty buffer of the same kind and settings with another capacity (a process's share under DDP).

        Args:
            capacity: its number of slots.
            seed: its seed (``None``: this buffer's).
            device: where it keeps its samples (``None``: this buffer's device).

        Example:
            >>> PrioritizedReplayBuffer(capacity=100, alpha=0.7).like(50).sampler.alpha
            0.7
        """
        return ReplayBuffer(
            capacity,
            self.sampler.like(capacity),
            self.writer.like(capacity),
            self.device if device is None else device,
            self.seed if seed is None else seed,
        )

    def state_dict(self) -> dict[str, Any]:
        """Its parts' states, nested (``storage``, ``writer``, ``sampler``), and the generator's; ``weights_only``."""
        size = len(self)
        return {
            "capacity": self.capacity,
            "size": size,
            "storage": self.storage.state_dict(size),
            "writer": self.writer.state_dict(),
            "sampler": self.sampler.state_dict(size),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict``.

        Raises:
            ValueError: the saved buffer holds more items than this one's capacity.
        """
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(
                f"The saved buffer holds {size} items but `capacity` is {self.capacity}; "
                "construct the buffer with the capacity it was saved with."
            )
        size = self.storage.load_state_dict(state["storage"])
        self.writer.load_state_dict({**state["writer"], "size": size})
        self.sampler.load_state_dict(state.get("sampler", {}), size)
        self._rng = np.random.default_rng(self.seed)
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]


class ReservoirBuffer(ReplayBuffer):
    """A reservoir-sampled memory with uniform draws of distinct items (``ReplayBuffer`` with its defaults).

    Args:
        capacity: the number of items kept.
        seed: seed of the buffer's generator (reservoir decisions and draws).
        device: where the samples are kept (``None``: CPU).

    Raises:
        ValueError: ``capacity`` is not a positive integer.

    Example:
        >>> buf = ReservoirBuffer(capacity=4, seed=0)
        >>> _ = buf.add((torch.randn(10, 3), torch.arange(10)))
        >>> x, y = buf.sample(2).batch
        >>> x.shape, len(buf), buf.seen
        (torch.Size([2, 3]), 4, 10)
    """

    def __init__(self, capacity: int = 1000, seed: int = 0, device: str | torch.device | None = None) -> None:
        super().__init__(capacity, UniformReplaySampler(), device=device, seed=seed)

    def like(self, capacity: int, seed: int | None = None, device: str | torch.device | None = None) -> ReplayBuffer:
        """An empty reservoir buffer with another capacity (see ``ReplayBuffer.like``)."""
        return ReservoirBuffer(capacity, self.seed if seed is None else seed, self.device if device is None else device)


class PrioritizedReplayBuffer(ReplayBuffer):
    """A reservoir-sampled memory whose draws follow ``p_i ∝ priority_i ** alpha`` (prioritized experience replay).

    Priorities are the last loss of each item plus ``eps`` (set by ``update_priorities``); a newly written item gets
    the largest priority given so far, so it is replayed soon. Draws are with replacement and carry importance
    weights ``(n p_i) ** -beta`` divided by the largest possible weight ``(n p_min) ** -beta``.

    Args:
        capacity: the number of items kept (reservoir sampling decides which).
        alpha: priority exponent (0 is uniform).
        beta: importance-weight exponent in ``[0, 1]`` (1 is unbiased).
        eps: added to every priority so that no item has zero probability.
        seed: seed of the buffer's generator.
        device: where the samples are kept (``None``: CPU).

    Raises:
        ValueError: ``capacity <= 0``, ``alpha < 0``, ``beta`` outside ``[0, 1]`` or ``eps <= 0``.

    Example:
        >>> buf = PrioritizedReplayBuffer(capacity=8, alpha=1.0, beta=1.0, seed=0)
        >>> _ = buf.add((torch.randn(8, 2), torch.zeros(8, dtype=torch.long)))
        >>> draw = buf.sample(4)
        >>> buf.update_priorities(draw.slots, torch.rand(4))  # the number of non-finite values left out
        0
    """

    sampler: PrioritizedReplaySampler

    def __init__(
        self,
        capacity: int = 1000,
        alpha: float = 0.6,
        beta: float = 0.4,
        eps: float = 1e-3,
        seed: int = 0,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(capacity, PrioritizedReplaySampler(capacity, alpha, beta, eps), device=device, seed=seed)

    def like(self, capacity: int, seed: int | None = None, device: str | torch.device | None = None) -> ReplayBuffer:
        """An empty prioritized buffer with the same exponents and another capacity (see ``ReplayBuffer.like``)."""
        seed = self.seed if seed is None else seed
        device = self.device if device is None else device
        return PrioritizedReplayBuffer(capacity, self.alpha, self.beta, self.eps, seed, device)

    @property
    def alpha(self) -> float:
        """Priority exponent."""
        return self.sampler.alpha

    @property
    def beta(self) -> float:
        """Importance-weight exponent."""
        return self.sampler.beta

    @property
    def eps(self) -> float:
        """Added to every priority."""
        return self.sampler.eps

    @property
    def max_priority(self) -> float:
        """The largest priority given so far (before ``alpha``), given to new items."""
        return self.sampler.max_priority

    def probabilities(self) -> Tensor:
        """float64 draw probabilities of the items held."""
        return self.sampler.probabilities(len(self))

    def update_priorities(self, index: Tensor, priority: Tensor) -> int:
        """Set the priorities of drawn items to ``|priority| + eps`` (e.g. their latest losses).

        A slot given several times keeps the last finite value given for it. Non-finite values (NaN/inf losses) are
        left out: an item given only those keeps its priority, and the max priority given to new items stays
        finite (warned once).

        Returns:
            How many non-finite values were left out.

        Raises:
            ValueError: shapes differ, or an index is not an item held.
        """
        return self.sampler.update(index, priority, len(self))


_SAMPLER_HINT = (
    "e.g. `lightning_per.replay.uniform.UniformReplaySampler()`; for prioritized replay use `PrioritizedReplayBuffer`"
)


def _check_part(name: str, part: Any, methods: tuple[str, ...], hint: str) -> None:
    """Refuse a sampler or writer that lacks the protocol's methods (a name given for an object, say).

    Raises:
        TypeError: a method is missing.
    """
    if part is None:
        return
    missing = [m for m in methods if not callable(getattr(part, m, None))]
    if missing:
        raise TypeError(
            f"`{name}` must be a replay {name} object with {', '.join(methods)} ({hint}); got {part!r} "
            f"({type(part).__name__}), which lacks {', '.join(missing)}."
        )
