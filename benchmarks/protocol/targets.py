"""Time to target: the compute and the training seconds at which a run's curve first reaches a value.

Between two evaluation points the curve is interpolated linearly (in the logarithm for a loss, which falls
geometrically), so the figure is not rounded up to the next evaluation point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.protocol.stats import describe

UNIFORM_FINAL = "uniform_final"


@dataclass(frozen=True)
class Target:
    """A level of ``key`` to reach: ``value`` (``None``: uniform's final value of the same seed), and its direction."""

    name: str
    key: str
    value: float | None
    higher_is_better: bool = True

    @property
    def log(self) -> bool:
        """Interpolate in the logarithm (a loss)."""
        return not self.higher_is_better


def reached(value: float, level: float, higher_is_better: bool) -> bool:
    return value >= level - 1e-12 if higher_is_better else value <= level + 1e-12


def first_reach(
    curve: Sequence[dict[str, Any]], key: str, level: float, higher_is_better: bool
) -> dict[str, float] | None:
    """The ``cost`` and ``seconds`` at which ``curve[key]`` first reaches ``level``, interpolated; ``None`` if never."""
    previous: dict[str, Any] | None = None
    for point in curve:
        value = point.get(key)
        if value is None or not math.isfinite(value):
            previous = None
            continue
        if reached(value, level, higher_is_better):
            if previous is None:
                return {"cost": float(point["cost"]), "seconds": float(point["seconds"])}
            a, b, t = float(previous[key]), float(value), float(level)
            if not higher_is_better and min(a, b, t) > 0:
                a, b, t = math.log(a), math.log(b), math.log(t)
            frac = 0.0 if b == a else min(1.0, max(0.0, (t - a) / (b - a)))
            return {
                name: float(previous[name]) + frac * (float(point[name]) - float(previous[name]))
                for name in ("cost", "seconds")
            }
        previous = point
    return None


def _spread(values: list[float], total: int) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n_reached": 0, "n": total}
    stats = describe(values)
    return {"mean": stats["mean"], "std": stats["std"], "n_reached": len(values), "n": total, "ci95": stats["ci95"]}


def time_to_target(
    curves: dict[int, Sequence[dict[str, Any]]], target: Target, levels: dict[int, float] | None = None
) -> dict[str, Any]:
    """Per seed, the compute and seconds to reach ``target``; over the seeds that reached it, their mean and std.

    ``levels`` (by seed) replace ``target.value`` (uniform's final value of each seed). JSON:
    ``{"compute": {mean, std, n_reached, n}, "seconds": {...}, "per_seed": {...}}``.
    """
    per_seed: dict[str, dict[str, float] | None] = {}
    for seed, curve in sorted(curves.items()):
        level = target.value if levels is None else levels.get(seed)
        per_seed[str(seed)] = None if level is None else first_reach(curve, target.key, level, target.higher_is_better)
    hits = [p for p in per_seed.values() if p is not None]
    return {
        "compute": _spread([p["cost"] for p in hits], len(per_seed)),
        "seconds": _spread([p["seconds"] for p in hits], len(per_seed)),
        "per_seed": per_seed,
    }
