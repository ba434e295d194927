"""Pure tensor functions of continual learning: reservoir slots, task masks, Reptile steps and CL metrics.

Nothing here holds state or touches Lightning; :mod:`lightning_per.replay.buffer` and
:mod:`lightning_per.replay.module` call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "last_write_per_slot",
    "output_targets",
    "reptile_interpolate_",
    "reservoir_slots",
    "task_class_mask",
]


def reservoir_slots(seen: int, capacity: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """Where each of ``n`` new stream items goes in a reservoir of ``capacity`` slots (``-1``: not kept).

    The ``j``-th item of the stream (1-based, ``j = seen + i + 1``) takes slot ``j - 1`` while ``j <= capacity``;
    afterwards it draws ``r`` uniformly from ``{0, ..., j - 1}`` and replaces slot ``r`` when ``r < capacity``,
    i.e. it is kept with probability exactly ``capacity / j`` (not ``capacity / (j + 1)``, the off-by-one of
    implementations that draw from ``{0, ..., j}``). Every item seen so far is then in the buffer with
    probability ``capacity / seen``. Several items of one batch may pick the same slot; apply them in order
    (the last one wins), e.g. with :func:`last_write_per_slot`.

    Args:
        seen: items of the stream seen before these ``n``.
        capacity: the number of slots.
        n: how many new items.
        generator: the random source.

    Returns:
        int64 tensor of shape ``(n,)``: a slot in ``[0, capacity)`` or ``-1``.

    Example::

        >>> reservoir_slots(seen=0, capacity=3, n=3)
        tensor([0, 1, 2])
    """
    j = torch.arange(seen + 1, seen + n + 1, dtype=torch.int64)
    u = torch.rand(n, dtype=torch.float64, generator=generator)
    r = (u * j.to(torch.float64)).floor_().to(torch.int64).clamp_(max=j - 1)
    slots = torch.where(j <= capacity, j - 1, r)
    return torch.where(slots < capacity, slots, torch.full_like(slots, -1))


def last_write_per_slot(slots: Tensor, capacity: int) -> tuple[Tensor, Tensor]:
    """Resolve a batch of writes to slots as if applied in order: for each slot written, the last item wins.

    Args:
        slots: int64 ``(n,)`` target slots, ``-1`` for items not written.
        capacity: the number of slots.

    Returns:
        ``(slot, item)``: the distinct slots written and, for each, the index of the item that ends up there.

    Example::

        >>> last_write_per_slot(torch.tensor([2, -1, 2, 0]), capacity=3)
        (tensor([0, 2]), tensor([3, 2]))
    """
    last = torch.full((capacity,), -1, dtype=torch.int64)
    keep = slots >= 0
    items = torch.arange(slots.numel(), dtype=torch.int64)[keep]
    last.scatter_reduce_(0, slots[keep], items, reduce="amax")
    written = torch.nonzero(last >= 0).flatten()
    return written, last[written]


def output_targets(y: Tensor, task: Tensor, classes_per_task: int, scenario: str, shared_classes: bool) -> Tensor:
    """Map labels to output units.

    Labels follow one convention: with ``shared_classes`` every task uses labels ``[0, classes_per_task)``
    (permuted / rotated sequences); otherwise task ``t`` owns labels ``[t * c, (t + 1) * c)`` (split sequences).
    In Task-IL every task has its own block of outputs ``[t * c, (t + 1) * c)``; in Class-IL the label is the
    output unit (one shared head).

    Args:
        y: int64 labels.
        task: int64 task ids, same shape.
        classes_per_task: ``c``.
        scenario: ``"task"`` or ``"class"``.
        shared_classes: whether all tasks share the same ``c`` labels.

    Example::

        >>> output_targets(torch.tensor([3, 3]), torch.tensor([0, 2]), 10, "task", shared_classes=True)
        tensor([ 3, 23])
    """
    if scenario == "task" and shared_classes:
        return y + task * classes_per_task
    return y


def task_class_mask(task: Tensor, classes_per_task: int, num_outputs: int) -> Tensor:
    """Boolean ``(n, num_outputs)`` mask, true on the outputs ``[t * c, (t + 1) * c)`` of each row's task ``t``.

    Example::

        >>> task_class_mask(torch.tensor([0, 1]), 2, 4)
        tensor([[ True,  True, False, False],
                [False, False,  True,  True]])
    """
    units = torch.arange(num_outputs, device=task.device)
    low = (task * classes_per_task).unsqueeze(-1)
    return (units >= low) & (units < low + classes_per_task)


@torch.no_grad()
def reptile_interpolate_(params: Sequence[Tensor], before: Sequence[Tensor], rate: float) -> None:
    """In place, ``theta <- theta_before + rate * (theta - theta_before)`` (a Reptile meta-step).

    ``rate = 1`` keeps the new weights; ``rate = 0`` restores the old ones.

    Example::

        >>> p = [torch.tensor([3.0])]
        >>> reptile_interpolate_(p, [torch.tensor([1.0])], 0.5)
        >>> p[0]
        tensor([2.])
    """
    for p, b in zip(params, before, strict=True):
        p.sub_(b).mul_(rate).add_(b)


def average_accuracy(acc: Tensor) -> float:
    """ACC: mean accuracy over all tasks after the last one, from the matrix ``acc[i, j]`` (after task i, on j).

    Example::

        >>> average_accuracy(torch.tensor([[0.9, 0.1], [0.5, 0.8]]))
        0.65
    """
    return round(float(acc[-1].to(torch.float64).mean()), 6)


def backward_transfer(acc: Tensor) -> float:
    """BWT (Lopez-Paz & Ranzato, 2017): ``mean_{j < T} acc[T, j] - acc[j, j]``; negative is forgetting.

    Example::

        >>> backward_transfer(torch.tensor([[0.9, 0.1], [0.5, 0.8]]))
        -0.4
    """
    num_tasks = acc.shape[0]
    if num_tasks < 2:
        return 0.0
    acc = acc.to(torch.float64)
    diag = torch.diagonal(acc)[:-1]
    return round(float((acc[-1, :-1] - diag).mean()), 6)
