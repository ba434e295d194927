"""lightning_per.functional.reservoir: reservoir acceptance, the last write per slot, draws without replacement."""

import math

import numpy as np
from scipy.stats import chisquare

from lightning_per.functional.reservoir import last_write_per_slot, reservoir_slots, sample_without_replacement


def test_reservoir_acceptance_is_exactly_k_over_j() -> None:
    # item j = 20 with k = 10 must be kept with probability 10/20 = 0.5, not 10/21 = 0.476 (the off-by-one).
    rng = np.random.default_rng(0)
    trials = 40_000
    kept = sum(int(reservoir_slots(seen=19, capacity=10, n=1, rng=rng)[0] >= 0) for _ in range(trials))
    se = math.sqrt(0.25 / trials)  # 0.0025
    assert abs(kept / trials - 0.5) < 4 * se  # 0.476 is 9.5 standard errors away
    assert reservoir_slots(seen=0, capacity=10, n=10, rng=rng).tolist() == list(range(10))  # the first k kept
    mixed = reservoir_slots(seen=8, capacity=10, n=5, rng=rng)  # items 9, 10 fill; 11, 12, 13 draw
    assert mixed[:2].tolist() == [8, 9] and bool(((mixed[2:] >= -1) & (mixed[2:] < 10)).all())


def test_last_write_per_slot_matches_applying_the_writes_in_order() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        slots = rng.integers(-1, 6, rng.integers(0, 20))
        written, items = last_write_per_slot(slots)
        expected: dict[int, int] = {}
        for i, s in enumerate(slots.tolist()):
            if s >= 0:
                expected[s] = i
        assert dict(zip(written.tolist(), items.tolist(), strict=True)) == expected
        assert items.tolist() == sorted(items.tolist())  # in item order


def test_uniform_draws_are_distinct_and_uniform_over_ordered_tuples() -> None:
    rng = np.random.default_rng(0)
    for n, k in [(10**9, 50), (1000, 256), (300, 256), (5, 9), (7, 0)]:
        draw = sample_without_replacement(n, k, rng)
        assert draw.size == min(n, k) and np.unique(draw).size == draw.size and (draw < n).all()
    # small population, many repeats in the spare-draw path: every ordered pair of distinct values equally likely
    n, trials = 9, 36_000  # n >= 4 k with k = 2: the with-replacement path
    pairs = np.array([sample_without_replacement(n, 2, rng) for _ in range(trials)])
    counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
    assert (np.diag(counts) == 0).all()
    off = counts[~np.eye(n, dtype=bool)]
    _, p = chisquare(off, np.full(off.size, trials / off.size))
    assert p > 1e-3, f"ordered pairs not uniform (p={p:.2e})"
