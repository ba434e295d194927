"""Seeds: two chosen the learning rate, others report it, never the same; methods interleaved in a rotating order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

SELECTION_SEEDS = (1000, 1001)
REPORT_SEEDS = (0, 1, 2)
EXTRA_SEEDS = (3, 4)  # for a method whose difference to uniform is within one standard deviation


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of a study: ``selection`` choose the learning rates, ``report`` (then ``extra``) are reported."""

    selection: tuple[int, ...] = SELECTION_SEEDS
    report: tuple[int, ...] = REPORT_SEEDS
    extra: tuple[int, ...] = EXTRA_SEEDS

    def __post_init__(self) -> None:
        groups = (self.selection, self.report, self.extra)
        every = [s for group in groups for s in group]
        if len(set(every)) != len(every):
            raise ValueError(f"selection, report and extra seeds must be disjoint and distinct, got {groups}")
        if not self.selection or not self.report:
            raise ValueError("a seed plan needs at least one selection and one report seed")


def rotation(items: Sequence[T], index: int) -> list[T]:
    """``items`` rotated left by ``index``: the order of the methods for the ``index``-th seed.

    Every method takes every place in turn, so a slow spell of the machine does not always hit the same one.
    Example: ``rotation("abc", 1)`` is ``["b", "c", "a"]``.
    """
    if not items:
        return []
    k = index % len(items)
    return [*items[k:], *items[:k]]


def is_close(differences: Sequence[float]) -> bool:
    """Whether paired differences to uniform are within one sample standard deviation of zero (more seeds needed).

    One difference has no spread to compare with: ``False`` (a smoke run is not extended).
    """
    n = len(differences)
    if n < 2:
        return False
    mean = sum(differences) / n
    std = (sum((d - mean) ** 2 for d in differences) / (n - 1)) ** 0.5
    return abs(mean) <= std
