"""What a study is: its settings, its methods, one training run, its targets, its goals and its results section.

A study subclasses :class:`Study` and fills in the parts that are its own; the protocol (``runner``) does the rest:
learning-rate search on the selection seeds, report seeds with the methods interleaved, more seeds where a method is
close to uniform, uniform at the compute of every method that saved some, the summaries and the JSON.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.protocol.targets import UNIFORM_FINAL, Target


@dataclass(frozen=True)
class Setting:
    """One table of a study: a compute ``budget`` (uniform's), its options, and an optional epoch cap.

    With ``max_epochs`` a run stops after that many epochs or at the budget, whichever comes first, so a method with
    shorter epochs (``prune``) saves compute; without it every method spends the whole budget.
    """

    key: str
    label: str
    budget: float
    max_epochs: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Headline:
    """One cell of the README's "which method when" table: a method's figure in one setting, and its verdict."""

    method: str
    where: str
    figure: str
    verdict: int  # +1 paid (the interval clears uniform), -1 lost, 0 level or undecided
    quotable: bool = True  # false: a learning rate at its grid's edge, or too few seeds


class Study:
    """Base of the studies; the class attributes name the metrics the protocol reads from each evaluation point."""

    name = ""
    doc: str | None = None
    selection_key, selection_higher = "val_acc", True  # chooses the learning rate (final point, selection seeds)
    primary_key, primary_higher = "test_acc", True  # paired against uniform; decides when 5 seeds are needed
    early_stop: tuple[str, str, bool] | None = ("val_acc", "test_acc", True)  # (chosen on, reported, higher better)
    reported: tuple[str, ...] = ("test_acc", "val_acc")  # final values summarised and paired
    default_lrs: tuple[float, ...] = (0.05, 0.1, 0.2)
    default_methods: tuple[str, ...] = ()
    all_methods: tuple[str, ...] = ()
    legend: tuple[tuple[str, str], ...] = ()  # (name, what it runs) of the study's own methods, beyond LEGEND's

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The study's own options."""

    def check(self, args: argparse.Namespace) -> str | None:
        """An error message for bad options, or ``None``."""
        return None

    def settings(self, args: argparse.Namespace) -> list[Setting]:
        raise NotImplementedError

    def methods(self, args: argparse.Namespace, setting: Setting) -> list[str]:
        return ["uniform", *(m for m in args.methods if m != "uniform")]

    def targets(self, args: argparse.Namespace, setting: Setting) -> list[Target]:
        """Uniform's final value of the primary metric, plus the study's fixed levels."""
        return [Target(UNIFORM_FINAL, self.primary_key, None, self.primary_higher)]

    def run(
        self, args: argparse.Namespace, setting: Setting, method: str, seed: int, lr: float, budget: float
    ) -> dict[str, Any]:
        """One training run; its record (``ComputeBudget.record()`` and the study's own figures)."""
        raise NotImplementedError

    def extras(self, setting: Setting, method: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The study's own per-method figures over the report runs."""
        return {}

    def goals(self, setting: Setting, methods: dict[str, Any]) -> dict[str, Any]:
        """The issue's goals on one table."""
        return {}

    def section(self, data: dict[str, Any], json_path: Path) -> list[str]:
        """The study's section of the results page (Markdown lines) from its JSON."""
        raise NotImplementedError

    def headlines(self, data: dict[str, Any]) -> list[Headline]:
        """The study's cells of the README's "which method when" table."""
        return []

    def plot(self, data: dict[str, Any], path: Path) -> None:
        """The study's figure, written to ``path``."""

    def payload_extras(self, tables: dict[str, Any]) -> dict[str, Any]:
        """Top-level JSON entries of the study's own (read by other tools)."""
        return {}
