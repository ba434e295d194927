"""Collectives that tolerate a different number of elements on each rank."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["all_gather_variable", "gather_objects_to_rank_zero", "release_process_group"]


def all_gather_variable(tensor: Tensor, world_size: int) -> Tensor:
    """Concatenate the 1-D ``tensor`` of every rank, in rank order; sizes may differ between ranks.

    Gathers the sizes, pads to the largest, gathers and trims (the shape-first recipe of torchmetrics).
    Without an initialised process group, or with one process, the tensor is returned as is.

    Example:
        >>> all_gather_variable(torch.arange(3), world_size=1)
        tensor([0, 1, 2])
    """
    if world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return tensor
    size = torch.tensor([tensor.numel()], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    torch.distributed.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(counts), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.numel()] = tensor
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts, strict=True)])


def gather_objects_to_rank_zero(obj: Any, world_size: int) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (``None`` on the others); a collective on every rank.

    Without an initialised process group, or with one process, ``[obj]``.

    Example:
        >>> gather_objects_to_rank_zero({"a": 1}, world_size=1)
        [{'a': 1}]
    """
    if world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return [obj]
    rank = torch.distributed.get_rank()
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    torch.distributed.gather_object(obj, gathered, dst=0)
    return gathered


def release_process_group() -> None:
    """Destroy the default process group, if one is initialised; call it once training is over.

    Lightning leaves the group alive when ``fit`` returns. Exiting the interpreter with it alive can abort the
    process (``terminate called without an active exception``, exit code -6) while gloo's worker threads are torn
    down, so a script that ran under DDP should end with this call. A no-op without ``torch.distributed``.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
