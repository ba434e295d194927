"""Replay memories: a reservoir buffer over a stream and its prioritized variant."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_per.functional import importance_weights, proportional_priorities
from lightning_per.replay.functional import last_write_per_slot, reservoir_slots
from lightning_per.replay.sumtree import SumTree

__all__ = ["PrioritizedReplayBuffer", "ReplaySample", "ReservoirBuffer", "pool_buffer_states"]


class ReplaySample(NamedTuple):
    """``(x, y, task, slots, weight)`` drawn from a buffer: the buffer slots drawn and their importance weights.

    ``weight`` is 1 for uniform draws.
    """

    x: Tensor
    y: Tensor
    task: Tensor
    slots: Tensor
    weight: Tensor


class ReservoirBuffer:
    """A fixed-capacity memory of ``(x, y, task)`` filled by reservoir sampling over a stream seen once.

    The ``j``-th item (1-based) is kept with probability exactly ``capacity / j`` once the buffer is full, so
    every item seen so far is in the buffer with probability ``capacity / seen``. Items are copied into
    preallocated tensors (CPU, allocated on the first :meth:`add`), so memory is bounded by the capacity and
    no reference to a dataset is held. Inserts are vectorised over a batch.

    Args:
        capacity: the number of items kept.
        seed: seed of the buffer's own random generator (reservoir decisions and draws).

    Raises:
        ValueError: ``capacity <= 0``.

    Example::

        >>> buf = ReservoirBuffer(capacity=4, seed=0)
        >>> _ = buf.add(torch.randn(10, 3), torch.arange(10), torch.zeros(10, dtype=torch.long))
        >>> len(buf), buf.seen
        (4, 10)
        >>> buf.sample(2).x.shape
        torch.Size([2, 3])
    """

    def __init__(self, capacity: int = 1000, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"`capacity` must be a positive integer, got {capacity!r}. Use e.g. `capacity=1000`.")
        self.capacity = capacity
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._x: Tensor | None = None
        self._y = torch.zeros(capacity, dtype=torch.int64)
        self._task = torch.zeros(capacity, dtype=torch.int64)
        self._size = 0
        self._seen = 0

    def __len__(self) -> int:
        return self._size

    @property
    def seen(self) -> int:
        """How many stream items were offered to the buffer."""
        return self._seen

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of one stored ``x`` (``None`` before the first :meth:`add`)."""
        return None if self._x is None else tuple(self._x.shape[1:])

    def contents(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, y, task)`` of the items held (views of the storage; copy before changing them)."""
        if self._x is None:
            return torch.empty(0), self._y[:0], self._task[:0]
        return self._x[: self._size], self._y[: self._size], self._task[: self._size]

    def _check(self, x: Tensor, y: Tensor, task: Tensor) -> None:
        if x.ndim < 1 or y.shape != (x.shape[0],) or task.shape != (x.shape[0],):
            raise ValueError(
                f"`x`, `y` and `task` must be a batch with one label and task id per row, got shapes "
                f"{tuple(x.shape)}, {tuple(y.shape)} and {tuple(task.shape)}."
            )
        if self._x is not None and tuple(x.shape[1:]) != self.sample_shape:
            tasks = sorted(set(task.tolist()))
            raise ValueError(
                f"`x` samples of task(s) {tasks} have shape {tuple(x.shape[1:])}, but the buffer holds samples of "
                f"shape {self.sample_shape}: every task of a sequence must give inputs of the same shape "
                "(resize or pad them in the task's dataset)."
            )

    def _write(self, slots: Tensor, items: Tensor, x: Tensor, y: Tensor, task: Tensor) -> None:
        if self._x is None:
            self._x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype)
        self._x[slots] = x[items].to(self._x.dtype)
        self._y[slots] = y[items].to(torch.int64)
        self._task[slots] = task[items].to(torch.int64)

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Offer a batch of stream items; return the slots written (in the order of ``items``, see below).

        Args:
            x: ``(n, ...)`` inputs (copied to CPU).
            y: ``(n,)`` labels.
            task: ``(n,)`` task ids.

        Returns:
            int64 slots that received an item (each once).

        Raises:
            ValueError: mismatched batch shapes, or samples whose shape differs from those already stored.
        """
        x, y, task = x.detach().cpu(), y.detach().cpu(), task.detach().cpu()
        self._check(x, y, task)
        n = x.shape[0]
        slots = reservoir_slots(self._seen, self.capacity, n, self._generator)
        written, items = last_write_per_slot(slots, self.capacity)
        if written.numel():
            self._write(written, items, x, y, task)
        self._seen += n
        self._size = min(self._seen, self.capacity)
        return written

    def _draw_uniform(self, batch_size: int) -> Tensor:
        count = min(batch_size, self._size)
        return torch.randperm(self._size, generator=self._generator)[:count]

    def sample(self, batch_size: int) -> ReplaySample:
        """Draw ``min(batch_size, len(self))`` distinct items uniformly (fewer than asked while the buffer fills).

        Asking for more than the buffer holds is not an error: what there is is returned (possibly nothing).

        Raises:
            ValueError: ``batch_size`` is negative.
        """
        if batch_size < 0:
            raise ValueError(f"`batch_size` must be >= 0, got {batch_size}.")
        index = self._draw_uniform(batch_size)
        return self._gather(index, torch.ones(index.numel()))

    def _gather(self, index: Tensor, weight: Tensor) -> ReplaySample:
        x, y, task = self.contents()
        if self._x is None:
            return ReplaySample(x, y, task, index, weight.float())
        return ReplaySample(x[index], y[index], task[index], index, weight.float())

    def state_dict(self) -> dict[str, Any]:
        """Contents, counters and generator state: tensors and plain values (loads with ``weights_only=True``)."""
        x, y, task = self.contents()
        return {
            "capacity": self.capacity,
            "seen": self._seen,
            "size": self._size,
            "x": x.clone(),
            "y": y.clone(),
            "task": task.clone(),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Raises:
            ValueError: the saved buffer holds more items than this one's capacity.
        """
        size = int(state["size"])
        if size > self.capacity:
            raise ValueError(
                f"The saved buffer holds {size} items but `capacity` is {self.capacity}; "
                "construct the buffer with the capacity it was saved with."
            )
        self._seen = int(state["seen"])
        self._size = size
        self._y.zero_()
        self._task.zero_()
        self._x = None
        if size:
            x = state["x"]
            self._x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype)
            self._x[:size] = x
            self._y[:size] = state["y"]
            self._task[:size] = state["task"]
        if "generator" in state:
            self._generator.set_state(state["generator"])


class PrioritizedReplayBuffer(ReservoirBuffer):
    """A reservoir buffer whose draws follow ``p_i ∝ priority_i ** alpha`` (prioritized experience replay).

    Priorities are the last loss of each item plus ``eps``; a newly written item gets the largest priority
    seen so far, so it is replayed soon. A float64 sum tree (with a min tree for the largest weight) makes
    draws and updates O(log n) and vectorised over a batch; ``alpha`` is applied exactly once, when a
    priority is written. Draws are with replacement and carry importance weights ``(n p_i) ** -beta``
    divided by the largest possible weight ``(n p_min) ** -beta``.

    Args:
        capacity: the number of items kept (reservoir sampling decides which).
        alpha: priority exponent (0 is uniform).
        beta: importance-weight exponent in ``[0, 1]`` (1 is unbiased).
        eps: added to every priority so that no item has zero probability.
        seed: seed of the buffer's generator.

    Raises:
        ValueError: ``capacity <= 0``, ``alpha < 0``, ``beta`` outside ``[0, 1]`` or ``eps <= 0``.

    Example::

        >>> buf = PrioritizedReplayBuffer(capacity=8, alpha=1.0, beta=1.0, seed=0)
        >>> _ = buf.add(torch.randn(8, 2), torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long))
        >>> batch = buf.sample(4)
        >>> buf.update_priorities(batch.slots, torch.rand(4))  # the number of non-finite values left out
        0
    """

    def __init__(
        self, capacity: int = 1000, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-3, seed: int = 0
    ) -> None:
        super().__init__(capacity=capacity, seed=seed)
        if alpha < 0:
            raise ValueError(f"`alpha` must be >= 0, got {alpha}.")
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"`beta` (importance-weight exponent) must be in [0, 1], got {beta}.")
        if eps <= 0:
            raise ValueError(f"`eps` must be > 0, got {eps}.")
        self.alpha = alpha
        self.beta = beta
        self.eps = eps
        self._tree = SumTree(capacity)
        self._max_priority = 1.0
        self._warned_nonfinite = False

    @property
    def max_priority(self) -> float:
        """The largest priority seen so far (before ``alpha``), given to new items."""
        return self._max_priority

    def probabilities(self) -> Tensor:
        """float64 draw probabilities of the items held."""
        values = self._tree.values()[: self._size]
        return values / self._tree.total

    @torch.no_grad()
    def add(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Offer a batch (see :meth:`ReservoirBuffer.add`); written slots get the current max priority."""
        written = super().add(x, y, task)
        if written.numel():
            value = torch.full((written.numel(),), self._max_priority**self.alpha, dtype=torch.float64)
            self._tree.update(written, value)
        return written

    def sample(self, batch_size: int) -> ReplaySample:
        """Draw ``batch_size`` items with replacement with ``p ∝ priority ** alpha`` (none while empty).

        Raises:
            ValueError: ``batch_size`` is negative.
        """
        if batch_size < 0:
            raise ValueError(f"`batch_size` must be >= 0, got {batch_size}.")
        if self._size == 0 or batch_size == 0:
            return self._gather(torch.zeros(0, dtype=torch.int64), torch.ones(0))
        total = self._tree.total
        u = torch.rand(batch_size, dtype=torch.float64, generator=self._generator)
        index = self._tree.find(u * total)
        p = self._tree.values(index) / total
        max_weight = float((self._size * self._tree.min / total) ** -self.beta)
        weight = importance_weights(p, self._size, self.beta, max_weight)
        return self._gather(index, weight)

    @torch.no_grad()
    def update_priorities(self, index: Tensor, priority: Tensor) -> int:
        """Set the priorities of drawn items to ``|priority| + eps`` (e.g. their latest losses).

        A slot drawn several times keeps the last finite value given for it. Non-finite values (NaN/inf losses) are
        left out: an item given only those keeps its priority, and the max priority given to new items stays
        finite (warned once).

        Returns:
            How many non-finite values were left out.

        Raises:
            ValueError: shapes differ, or an index is not an item held.
        """
        index = index.detach().cpu().to(torch.int64).flatten()
        priority = priority.detach().cpu().to(torch.float64).flatten()
        if index.shape != priority.shape:
            raise ValueError(f"`index` and `priority` must have the same shape, got {index.shape}, {priority.shape}.")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self._size):
            raise ValueError(f"`index` must point at items held, in [0, {self._size}), got {index.tolist()}.")
        finite = torch.isfinite(priority)
        dropped = int(priority.numel() - finite.sum())
        if dropped:
            index, priority = index[finite], priority[finite]
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    f"PrioritizedReplayBuffer.update_priorities got {dropped} non-finite priorities (NaN/inf "
                    "losses); those items keep their previous priorities. Warned once.",
                    stacklevel=2,
                )
        if index.numel() == 0:
            return dropped
        slots, items = last_write_per_slot(index, self.capacity)
        magnitude = priority[items].abs()
        self._max_priority = max(self._max_priority, float(magnitude.max()) + self.eps)
        self._tree.update(slots, proportional_priorities(magnitude, self.alpha, self.eps))
        return dropped

    def state_dict(self) -> dict[str, Any]:
        """Adds the priorities (sum tree leaves) and the max priority to the reservoir state."""
        state = super().state_dict()
        state["tree"] = self._tree.state_dict()
        state["max_priority"] = self._max_priority
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; a uniform buffer's state gives every item the max priority."""
        super().load_state_dict(state)
        self._max_priority = float(state.get("max_priority", 1.0))
        self._tree = SumTree(self.capacity)
        if "tree" in state:
            self._tree.load_state_dict(state["tree"])
        elif self._size:
            value = torch.full((self._size,), self._max_priority**self.alpha, dtype=torch.float64)
            self._tree.update(torch.arange(self._size), value)


def pool_buffer_states(
    states: Sequence[dict[str, Any]], part: int, parts: int, capacity: int, seed: int = 0
) -> dict[str, Any]:
    """Pool saved buffers (e.g. one per DDP rank) and keep share ``part`` of ``parts``, for a buffer of ``capacity``.

    Used when a run resumes on a different number of processes: the items of all ``states`` are concatenated,
    share ``part`` takes every ``parts``-th of them (starting at ``part``), and a uniformly chosen ``capacity``
    of those if more remain. ``seen`` becomes the total seen divided by ``parts``; priorities (when every state
    has them) follow their items and the max priority is the largest saved. The result loads with
    :meth:`ReservoirBuffer.load_state_dict` (or the prioritized one) into a buffer of ``capacity`` slots.

    Args:
        states: :meth:`ReservoirBuffer.state_dict` results.
        part: the share to keep, in ``[0, parts)``.
        parts: the number of shares (the new world size).
        capacity: the slots of the buffer that will load the result.
        seed: seed of the subsampling and of the result's generator.

    Raises:
        ValueError: ``part`` outside ``[0, parts)``, ``capacity <= 0`` or saved items of different shapes.

    Example::

        >>> a, b = ReservoirBuffer(4, seed=0), ReservoirBuffer(4, seed=1)
        >>> _ = a.add(torch.zeros(6, 2), torch.zeros(6, dtype=torch.long), torch.zeros(6, dtype=torch.long))
        >>> _ = b.add(torch.ones(6, 2), torch.ones(6, dtype=torch.long), torch.ones(6, dtype=torch.long))
        >>> merged = ReservoirBuffer(8)
        >>> merged.load_state_dict(pool_buffer_states([a.state_dict(), b.state_dict()], part=0, parts=1, capacity=8))
        >>> len(merged), merged.seen, merged.contents()[1].tolist()
        (8, 12, [0, 0, 0, 0, 1, 1, 1, 1])
    """
    if not 0 <= part < parts:
        raise ValueError(f"`part` must be in [0, {parts}), got {part}.")
    if capacity <= 0:
        raise ValueError(f"`capacity` must be a positive integer, got {capacity}.")
    held = [s for s in states if int(s["size"]) > 0]
    shapes = {tuple(s["x"].shape[1:]) for s in held}
    if len(shapes) > 1:
        raise ValueError(f"The saved buffers hold samples of different shapes {sorted(shapes)}; they cannot be pooled.")
    generator = torch.Generator().manual_seed(seed)
    seen = sum(int(s["seen"]) for s in states) // parts
    prioritized = bool(states) and all("tree" in s for s in states)
    max_priority = max((float(s.get("max_priority", 1.0)) for s in states), default=1.0)
    if held:
        x = torch.cat([s["x"][: int(s["size"])] for s in held])
        y = torch.cat([s["y"][: int(s["size"])] for s in held])
        task = torch.cat([s["task"][: int(s["size"])] for s in held])
        sizes = [int(s["size"]) for s in held]
        value = torch.cat(
            [
                s["tree"]["values"][:n].to(torch.float64) if prioritized else torch.ones(n)
                for s, n in zip(held, sizes, strict=True)
            ]
        )
        keep = torch.arange(part, x.shape[0], parts)
        if keep.numel() > capacity:
            keep = keep[torch.randperm(keep.numel(), generator=generator)[:capacity]].sort().values
        x, y, task, value = x[keep], y[keep], task[keep], value[keep]
    else:
        x, y, task, value = torch.empty(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), None
    size = int(y.numel())
    state: dict[str, Any] = {
        "capacity": capacity,
        "seen": max(seen, size),
        "size": size,
        "x": x,
        "y": y,
        "task": task,
        "generator": generator.get_state(),
    }
    if prioritized:
        values = torch.zeros(capacity, dtype=torch.float64)
        written = torch.zeros(capacity, dtype=torch.bool)
        if value is not None:
            values[:size] = value
            written[:size] = True
        state["tree"] = {"capacity": capacity, "values": values, "written": written}
        state["max_priority"] = max_priority
    return state
