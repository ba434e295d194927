"""Pure functions of continual learning: output targets and class masks per task, Reptile, ACC and BWT.

Nothing here holds state or touches Lightning; ``MER``, ``TaskAccuracyMatrix`` and the example models call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["average_accuracy", "backward_transfer", "output_targets", "reptile_interpolate_", "task_class_mask"]


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

    Example:
        >>> output_targets(torch.tensor([3, 3]), torch.tensor([0, 2]), 10, "task", shared_classes=True)
        tensor([ 3, 23])
    """
    if scenario == "task" and shared_classes:
        return y + task * classes_per_task
    return y


def task_class_mask(task: Tensor, classes_per_task: int, num_outputs: int) -> Tensor:
    """Boolean ``(n, num_outputs)`` mask, true on the outputs ``[t * c, (t + 1) * c)`` of each row's task ``t``.

    Example:
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

    Example:
        >>> p = [torch.tensor([3.0])]
        >>> reptile_interpolate_(p, [torch.tensor([1.0])], 0.5)
        >>> p[0]
        tensor([2.])
    """
    for p, b in zip(params, before, strict=True):
        p.sub_(b).mul_(rate).add_(b)


def average_accuracy(acc: Tensor) -> float:
    """ACC: mean accuracy over all tasks after the last one, from the matrix ``acc[i, j]`` (after task i, on j).

    Example:
        >>> average_accuracy(torch.tensor([[0.9, 0.1], [0.5, 0.8]]))
        0.65
    """
    return round(float(acc[-1].to(torch.float64).mean()), 6)


def backward_transfer(acc: Tensor) -> float:
    """BWT (Lopez-Paz & Ranzato, 2017): ``mean_{j < T} acc[T, j] - acc[j, j]``; negative is forgetting.

    Example:
        >>> backward_transfer(torch.tensor([[0.9, 0.1], [0.5, 0.8]]))
        -0.4
    """
    num_tasks = acc.shape[0]
    if num_tasks < 2:
        return 0.0
    acc = acc.to(torch.float64)
    diag = torch.diagonal(acc)[:-1]
    return round(float((acc[-1, :-1] - diag).mean()), 6)
