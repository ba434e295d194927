"""Summaries over seeds: mean, sample standard deviation and a 95% t-interval; paired differences and ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# two-sided 95% quantiles of Student's t, t_{0.975, df}, df = 1..30; beyond 30 the normal's 1.96 is within 2%
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (``t975(2)`` = 4.303)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_of(records: Sequence[dict[str, Any]], key: str) -> float | None:
    """The mean of ``key`` over the records (runs or evaluation points) that have it; ``None`` when none has.

    A record may lack a key when it was measured before the key existed, or when the quantity is undefined there.
    """
    values = [r[key] for r in records if r.get(key) is not None]
    return math.fsum(values) / len(values) if values else None


def describe(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std, n, min, max and the 95% t-interval of the mean (``None`` bounds for one value)."""
    if not values:
        raise ValueError("describe needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = t975(n - 1) * std / math.sqrt(n) if n > 1 else None
    return {
        "mean": mean,
        "std": std,
        "n": n,
        "min": min(values),
        "max": max(values),
        "ci95": [mean - half, mean + half] if half is not None else None,
    }


def paired(values: dict[int, float], base: dict[int, float], ratio: bool = False) -> dict[str, Any] | None:
    """``describe`` of ``values[s] - base[s]`` (or ``/``) over the seeds both have; ``None`` when they share none."""
    seeds = sorted(set(values) & set(base))
    if not seeds:
        return None
    if ratio:
        return describe([values[s] / base[s] for s in seeds])
    return describe([values[s] - base[s] for s in seeds])


def excludes_zero(stats: dict[str, Any] | None, level: float = 0.0) -> int:
    """+1 when the 95% interval lies above ``level``, -1 below it, 0 when it contains it (or there is none)."""
    if stats is None or stats.get("ci95") is None:
        return 0
    low, high = stats["ci95"]
    return 1 if low > level else -1 if high < level else 0
