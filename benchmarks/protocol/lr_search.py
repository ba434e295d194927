"""Learning-rate search on a geometric grid that does not stop at an edge.

The grid starts with the values given (factor 2 apart); every value is scored (the caller's mean validation metric
over the selection seeds), and while the best value is the smallest or the largest of the grid, the grid is extended
by one value in that direction (half the smallest, twice the largest), up to ``max_points`` values. A choice still at
an edge then is flagged ``at_edge``: its row is marked on the results page and never quoted in the README.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

FACTOR = 2.0
MAX_POINTS = 7  # the initial 3 values and up to 4 extensions


def normalise(lr: float) -> float:
    """A learning rate rounded to 6 significant digits, so that a value reached by halving keys the same record."""
    return float(f"{lr:.6g}")


def geometric_grid(low: float, points: int = 3, factor: float = FACTOR) -> list[float]:
    """``points`` values from ``low`` up, each ``factor`` times the last (``geometric_grid(0.05)``: 0.05, 0.1, 0.2)."""
    return [normalise(low * factor**i) for i in range(points)]


@dataclass
class LrChoice:
    """The outcome of a search: every value tried with its score, the choice, and whether it is still at an edge."""

    scores: dict[float, float] = field(default_factory=dict)
    chosen: float = math.nan
    at_edge: bool = True
    higher_is_better: bool = True

    @property
    def grid(self) -> list[float]:
        return sorted(self.scores)

    def record(self) -> dict[str, Any]:
        """The JSON record: ``{"grid": [...], "chosen": x, "at_edge": false, "selection_metric": {...}}``."""
        return {
            "grid": self.grid,
            "chosen": self.chosen,
            "at_edge": self.at_edge,
            "selection_metric": {f"{lr:g}": self.scores[lr] for lr in self.grid},
        }


def _best(choice: LrChoice) -> float:
    """The best-scoring value; the smallest of equals; a non-finite score ranks last."""
    sign = 1.0 if choice.higher_is_better else -1.0

    def rank(lr: float) -> tuple[float, float]:
        score = choice.scores[lr]
        return (sign * score if math.isfinite(score) else -math.inf, -lr)

    return max(choice.scores, key=rank)


def search_lr(
    score: Callable[[float], float],
    grid: Sequence[float],
    *,
    factor: float = FACTOR,
    max_points: int = MAX_POINTS,
    higher_is_better: bool = True,
) -> LrChoice:
    """Score every value of ``grid``, then extend it at the edge the best value sits on until that value is interior.

    ``score(lr)`` is the selection metric at ``lr`` (the mean over the selection seeds). Returns the values tried,
    their scores, the choice and ``at_edge``: true when the cap of ``max_points`` values stopped the search with the
    choice at an end of the grid. A grid of one value is a fixed rate: not scored, and flagged ``at_edge``.
    """
    if not grid or max_points < len(grid):
        raise ValueError(f"the grid needs 1 to max_points ({max_points}) values, got {list(grid)}")
    choice = LrChoice(higher_is_better=higher_is_better)
    if len(grid) == 1:  # a fixed rate (a smoke run): nothing is searched or scored, and it counts as at an edge
        choice.scores[normalise(grid[0])] = math.nan
        choice.chosen = normalise(grid[0])
        return choice
    for lr in grid:
        choice.scores[normalise(lr)] = score(normalise(lr))
    while True:
        best = _best(choice)
        low, high = choice.grid[0], choice.grid[-1]
        choice.chosen = best
        choice.at_edge = best in (low, high)
        if not choice.at_edge or len(choice.scores) >= max_points:
            return choice
        new = normalise(low / factor if best == low else high * factor)
        choice.scores[new] = score(new)
