"""Pure index arithmetic of replay buffers: reservoir slots, the last write per slot, draws without replacement.

Nothing here holds state or touches Lightning; the buffers call these. They take and return NumPy arrays: at replay
batch sizes (hundreds of items) a NumPy call costs a fraction of a torch operator's fixed overhead, and they run once
per training step.
"""

from __future__ import annotations

import numpy as np

__all__ = ["last_write_per_slot", "reservoir_slots", "sample_without_replacement"]


def reservoir_slots(seen: int, capacity: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Where each of ``n`` new stream items goes in a reservoir of ``capacity`` slots (``-1``: not kept).

    The ``j``-th item of the stream (1-based, ``j = seen + i + 1``) takes slot ``j - 1`` while ``j <= capacity``;
    afterwards it draws ``r`` uniformly from ``{0, ..., j - 1}`` (exactly, ``numpy.random.Generator.integers``)
    and replaces slot ``r`` when ``r < capacity``, i.e. it is kept with probability exactly ``capacity / j`` (not
    ``capacity / (j + 1)``, the off-by-one of implementations that draw from ``{0, ..., j}``). Every item seen so far
    is then in the buffer with probability ``capacity / seen``. Several items of one batch may pick the same slot;
    apply them in order (the last one wins), e.g. with ``last_write_per_slot``. O(n) work.

    Args:
        seen: items of the stream seen before these ``n``.
        capacity: the number of slots.
        n: how many new items.
        rng: the random source.

    Returns:
        int64 array of shape ``(n,)``: a slot in ``[0, capacity)`` or ``-1``.

    Example:
        >>> reservoir_slots(seen=0, capacity=3, n=3, rng=np.random.default_rng(0))
        array([0, 1, 2])
    """
    if seen + n <= capacity:
        return np.arange(seen, seen + n, dtype=np.int64)
    j = np.arange(seen + 1, seen + n + 1, dtype=np.int64)
    slots = rng.integers(0, j)
    if seen < capacity:  # the batch straddles the end of the filling
        filling = capacity - seen
        slots[:filling] = j[:filling] - 1
    slots[slots >= capacity] = -1
    return slots


def last_write_per_slot(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Resolve a batch of writes to slots as if applied in order: for each slot written, the last item wins.

    O(n log n) in the number of writes (a sort; a stable sort when a slot is written twice), whatever the number of
    slots.

    Args:
        slots: int64 ``(n,)`` target slots, ``-1`` (any negative) for items not written.

    Returns:
        ``(slot, item)``: the distinct slots written and, for each, the index of the item that ends up there; in the
        order of the items.

    Example:
        >>> last_write_per_slot(np.array([2, -1, 2, 0]))
        (array([2, 0]), array([2, 3]))
    """
    slots = np.asarray(slots, dtype=np.int64).reshape(-1)
    items = np.flatnonzero(slots >= 0)
    kept = slots[items]
    if kept.size > 1:
        ordered = np.sort(kept)
        if (ordered[1:] == ordered[:-1]).any():  # a slot written twice: keep its last write
            order = np.argsort(kept, kind="stable")  # a slot's writes stay in item order: the last comes last
            ordered = kept[order]
            wins = np.empty(kept.size, dtype=bool)
            wins[-1] = True
            np.not_equal(ordered[1:], ordered[:-1], out=wins[:-1])
            items = items[np.sort(order[wins])]
            kept = slots[items]
    return kept, items


def sample_without_replacement(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, n)`` distinct integers of ``[0, n)`` in random order, uniform over ordered tuples, in O(k) work.

    For ``n >= 4 k`` it draws ``k`` plus a few spare integers with replacement and keeps the first occurrences,
    drawing again in the rare case that fewer than ``k`` distinct values come out (expected work O(k), whatever
    ``n``); every decision depends only on which draws are equal, so the result is uniform over ordered tuples of
    distinct values. An integer is ``floor(u * n)`` for a uniform ``u`` with 53 random bits: each value's
    probability is within ``n * 2**-53`` (relative) of ``1 / n``, ~1e-9 at ``n = 10**7`` (``torch.randint``'s
    modulo bias is ~2e-3 there). For ``n < 4 k`` it takes the start of a random permutation of ``n`` (O(n), below
    O(4 k)). ``n * 2 * k`` must fit in an int64.

    Args:
        n: the population size.
        k: how many to draw.
        rng: the random source.

    Returns:
        int64 array of ``min(k, n)`` distinct values.

    Example:
        >>> draw = sample_without_replacement(10**9, 5, np.random.default_rng(0))
        >>> draw.shape, len(set(draw.tolist()))
        ((5,), 5)
    """
    k = max(0, min(k, n))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if n < 4 * k:
        return rng.permutation(n)[:k]
    spare = 4 + (2 * k * k) // n  # about twice the expected number of repeats among k draws
    draw = (rng.random(k + spare) * n).astype(np.int64)  # u < 1, so u * n < n (rounding included)
    if spare == 4:  # repeats are unlikely (k * k < n): a sort tells, and the rare repeat takes the loop below
        ordered = np.sort(draw)
        if not (ordered[1:] == ordered[:-1]).any():
            return draw[:k]
    while True:
        m = draw.size
        keys = draw * m + np.arange(m)  # value, then position: sorting the keys sorts stably
        keys.sort()
        values = keys // m
        repeat = values[1:] == values[:-1]
        if not repeat.any():
            return draw[:k]
        first = np.ones(m, dtype=bool)
        first[keys[1:][repeat] % m] = False  # keep the first occurrence of each value, in draw order
        draw = draw[first]
        if draw.size >= k:
            return draw[:k]
        draw = np.concatenate([draw, (rng.random(k + spare - draw.size) * n).astype(np.int64)])
