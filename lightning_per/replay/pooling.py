"""Pooling saved buffers (one per DDP rank) and re-sharding them for another number of processes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lightning_per._checks import check_int
from lightning_per.tree import SampleSpec, flatten, unflatten

__all__ = ["pool_buffer_states"]


def pool_buffer_states(
    states: Sequence[dict[str, Any]], part: int, parts: int, capacity: int, seed: int = 0
) -> dict[str, Any]:
    """Pool saved buffers (e.g. one per DDP rank) and keep share ``part`` of ``parts``, for a buffer of ``capacity``.

    Used when a run resumes on a different number of processes: the items of all ``states`` are concatenated,
    share ``part`` takes every ``parts``-th of them (starting at ``part``), and a uniformly chosen ``capacity``
    of those if more remain. ``seen`` becomes the total seen divided by ``parts``; priorities (when every state
    has them) follow their items and the max priority is the largest saved. The result loads with
    ``load_state_dict`` into a buffer of ``capacity`` slots.

    Args:
        states: ``state_dict`` results.
        part: the share to keep, in ``[0, parts)``.
        parts: the number of shares (the new world size).
        capacity: the slots of the buffer that will load the result.
        seed: seed of the subsampling and of the result's generator.

    Raises:
        ValueError: ``part`` outside ``[0, parts)``, ``capacity <= 0`` or saved items of different structures.

    Example:
        >>> from lightning_per.replay import ReservoirBuffer
        >>> a, b = ReservoirBuffer(4, seed=0), ReservoirBuffer(4, seed=1)
        >>> _ = a.add((torch.zeros(6, 2), torch.zeros(6, dtype=torch.long)))
        >>> _ = b.add((torch.ones(6, 2), torch.ones(6, dtype=torch.long)))
        >>> merged = ReservoirBuffer(8)
        >>> merged.load_state_dict(pool_buffer_states([a.state_dict(), b.state_dict()], part=0, parts=1, capacity=8))
        >>> len(merged), merged.seen, merged.contents()[1].tolist()
        (8, 12, [0, 0, 0, 0, 1, 1, 1, 1])
    """
    if not 0 <= part < parts:
        raise ValueError(f"`part` must be in [0, {parts}), got {part}.")
    check_int("capacity", capacity, 1)
    held = [s for s in states if int(s["size"]) > 0 and s["storage"].get("items") is not None]
    rng = np.random.default_rng(seed)
    seen = sum(int(s["writer"]["seen"]) for s in states) // parts
    prioritized = bool(states) and all("priorities" in s.get("sampler", {}) for s in states)
    max_priority = max((float(s.get("sampler", {}).get("max_priority", 1.0)) for s in states), default=1.0)
    items, value, size = None, torch.zeros(0, dtype=torch.float64), 0
    if held:
        flat = [flatten(s["storage"]["items"]) for s in held]
        spec = SampleSpec.of(held[0]["storage"]["items"])
        for (leaves, treedef), s in zip(flat[1:], held[1:], strict=True):
            try:
                spec.check(leaves, treedef)
            except ValueError:
                raise ValueError(
                    f"The saved buffers hold samples of different structures, {spec!r} and "
                    f"{SampleSpec.of(s['storage']['items'])!r}; they cannot be pooled."
                ) from None
        sizes = [int(s["size"]) for s in held]
        leaves = [torch.cat([f[0][i][:n] for f, n in zip(flat, sizes, strict=True)]) for i in range(len(flat[0][0]))]
        keep = np.arange(part, sum(sizes), parts)
        if keep.size > capacity:
            keep = np.sort(keep[rng.permutation(keep.size)[:capacity]])
        index = torch.from_numpy(keep)
        items = unflatten([x[index] for x in leaves], flat[0][1], plain=True)
        size = int(keep.size)
        if prioritized:
            value = torch.cat(
                [
                    torch.as_tensor(s["sampler"]["priorities"][:n], dtype=torch.float64)
                    for s, n in zip(held, sizes, strict=True)
                ]
            )[index]
    sampler = {"priorities": value, "max_priority": max_priority} if prioritized else {}
    return {
        "capacity": capacity,
        "size": size,
        "storage": {"items": items},
        "writer": {"seen": max(seen, size), "size": size},
        "sampler": sampler,
        "rng": rng.bit_generator.state,
    }
