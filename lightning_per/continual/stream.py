"""The order of a task sequence's stream: task after task, sharded over DDP ranks, resumable mid-stream."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

__all__ = ["TaskStreamSampler"]


class TaskStreamSampler(DistributedSampler):
    """Indices of a ``ConcatDataset`` of tasks, task after task, shuffled within each task.

    The whole stream's order depends only on ``seed``, ``epoch`` and the task lengths; it is padded to a multiple
    of ``num_replicas`` by repeating its last items (so the padding stays in the last task) and rank ``r`` keeps the
    positions ``r, r + num_replicas, ...``: every rank sees its share of every task, in task order. Because it
    subclasses ``DistributedSampler``, Lightning leaves it alone under DDP. ``start`` skips the first items of this
    rank's share once (the next pass starts from the beginning): that is how a fit resumed mid-stream continues
    where it stopped; ``__len__`` stays the full share so Lightning's batch count matches. ``streamed_tasks``
    restricts the stream to some tasks (one fit per task); indices stay those of the whole ``ConcatDataset``.

    Args:
        lengths: the number of samples of each task.
        shuffle: shuffle within each task.
        seed: seed of the order, shared by all ranks.
        num_replicas: number of ranks.
        rank: this rank.
        start: items of this rank's share to skip on the next pass.
        streamed_tasks: the ids of the tasks streamed, in this order (``None``: all).

    Raises:
        ValueError: a negative length, ``num_replicas < 1``, ``rank`` outside ``[0, num_replicas)``, ``start < 0``
            or an unknown task.

    Example:
        >>> list(TaskStreamSampler([3, 2], shuffle=False))
        [0, 1, 2, 3, 4]
        >>> list(TaskStreamSampler([3, 2], shuffle=False, num_replicas=2, rank=1))
        [1, 3, 4]
        >>> list(TaskStreamSampler([3, 2], shuffle=False, streamed_tasks=[1]))
        [3, 4]
    """

    def __init__(
        self,
        lengths: Sequence[int],
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start: int = 0,
        streamed_tasks: Sequence[int] | None = None,
    ) -> None:
        if any(n < 0 for n in lengths):
            raise ValueError(f"`lengths` must be non-negative task sizes, got {list(lengths)}.")
        if num_replicas < 1:
            raise ValueError(f"`num_replicas` must be >= 1, got {num_replicas}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}.")
        if start < 0:
            raise ValueError(f"`start` must be >= 0, got {start}.")
        self.streamed_tasks = list(range(len(lengths))) if streamed_tasks is None else [int(t) for t in streamed_tasks]
        if any(not 0 <= t < len(lengths) for t in self.streamed_tasks):
            raise ValueError(f"`streamed_tasks` must be task ids in [0, {len(lengths)}), got {self.streamed_tasks}.")
        # DistributedSampler's own __init__ asks torch.distributed for the world; set its attributes directly.
        self.lengths = [int(n) for n in lengths]
        self.offsets = [0, *accumulate(self.lengths)]
        streamed = sum(self.lengths[t] for t in self.streamed_tasks)
        self.dataset = range(streamed)  # type: ignore[assignment]
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.drop_last = False
        self.start = start
        self.num_samples = math.ceil(streamed / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self._ends = list(
            accumulate(self.lengths[t] for t in self.streamed_tasks)
        )  # stream position where each task ends

    def set_epoch(self, epoch: int) -> None:
        """Change the order of the next pass."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def stream_order(self) -> Tensor:
        """The whole stream's order (all ranks), before padding and sharding."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        parts: dict[int, Tensor] = {}
        for t, n in enumerate(
            self.lengths
        ):  # every task draws its permutation: its order does not depend on `streamed_tasks`
            parts[t] = (torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)) + self.offsets[t]
        ordered = [parts[t] for t in self.streamed_tasks]
        return torch.cat(ordered) if ordered else torch.zeros(0, dtype=torch.int64)

    def task_at(self, position: int) -> int:
        """The task of the item at ``position`` of this rank's share (padding counts as the last task)."""
        if not self.streamed_tasks:
            return 0
        stream_position = self.rank + position * self.num_replicas
        i = bisect.bisect_right(self._ends, stream_position)
        return self.streamed_tasks[min(i, len(self.streamed_tasks) - 1)]

    def __iter__(self) -> Iterator[int]:
        order = self.stream_order()
        padding = self.total_size - order.numel()
        if padding > 0 and order.numel():
            order = torch.cat(
                [order, order[-padding:] if padding <= order.numel() else order.repeat(padding)[:padding]]
            )
        mine = order[self.rank :: self.num_replicas][self.start :]
        self.start = 0
        return iter(mine.tolist())


class StreamLoader(DataLoader):
    """The stream's DataLoader: each batch ``repeats`` times in a row; resumable mid-stream without state of its own.

    On a restarted fit the ``TaskStreamSampler`` starts after the batches that the trainer's progress says were
    trained (``skip`` repeats of the first one are left out); the empty ``state_dict`` tells Lightning that the
    loader is resumable.
    """

    def __init__(self, *args: Any, repeats: int = 1, skip: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repeats = repeats
        self.skip = skip

    def __len__(self) -> int:
        return super().__len__() * self.repeats

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self.skip = self.skip, 0
        for batch in super().__iter__():
            for _ in range(self.repeats - skip):
                yield batch
            skip = 0

    def state_dict(self) -> dict[str, Any]:
        """No state: the position comes from the trainer's batch progress."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see ``state_dict``)."""


def resume_batches(trainer: Any) -> int:
    """Batches of the current epoch already trained when ``trainer`` resumes a fit mid-epoch (0 otherwise)."""
    try:
        loop = trainer.fit_loop
        if not loop.restarting:
            return 0
        epochs = loop.epoch_progress.total
        if epochs.started != epochs.processed + 1:  # not restarted in the middle of an epoch
            return 0
        return int(loop.epoch_loop.batch_progress.current.processed)
    except AttributeError:  # pragma: no cover - another Lightning layout: restart the pass
        return 0
