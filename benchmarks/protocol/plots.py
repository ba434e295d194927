"""The figures every study draws: a metric against training seconds and compute, and time-to-target bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.common import save_figure

COLOURS = "tab10"


def seed_curve(
    runs: dict[str, dict[str, Any]], x: str, y: str, how: str = "median", points: int = 60
) -> tuple[Any, Any]:
    """The median (or mean) over the runs of ``y`` against ``x``, on a common grid up to the shortest run's end.

    The protocol's figures take the median: on the seconds axis, a seed slowed by the machine's load would pull a
    mean down to a level no run was at.
    """
    import numpy as np

    curves = [[p for p in r["curve"] if p.get(y) is not None] for r in runs.values()]
    curves = [c for c in curves if c]
    if not curves:
        return np.array([]), np.array([])
    grid = np.linspace(0.0, min(c[-1][x] for c in curves), points)
    ys = np.stack([np.interp(grid, [p[x] for p in c], [p[y] for p in c]) for c in curves])
    return grid, np.median(ys, axis=0) if how == "median" else ys.mean(0)


def draw_curves(ax: Any, methods: dict[str, Any], x: str, y: str, log: bool = False) -> None:
    """One line per method (uniform black and on top), median over the report seeds."""
    import matplotlib.pyplot as plt

    colours = plt.get_cmap(COLOURS)
    for i, (name, method) in enumerate(methods.items()):
        grid, median = seed_curve(method["runs"], x, y)
        if not len(grid):
            continue
        style: dict[str, Any] = {"color": colours(i % 10), "lw": 1.3}
        if name == "uniform":
            style.update(color="black", lw=2.0, zorder=3)
        scale = 1e-6 if x == "cost" else 1.0
        ax.plot(grid * scale, median, label=name, **style)
    ax.set_xlabel("training seconds" if x == "seconds" else "compute (M forward-sample units)")
    ax.set_ylabel(y)
    if log:
        ax.set_yscale("log")


def draw_bars(ax: Any, methods: dict[str, Any], target: str, unit: str = "seconds") -> None:
    """Mean time to ``target`` per method (std as the error bar), with the seeds that reached it over the bars."""
    names = list(methods)
    means, stds, labels = [], [], []
    for name in names:
        entry = methods[name]["time_to_target"].get(target, {}).get(unit, {})
        means.append(entry.get("mean") or 0.0)
        stds.append(entry.get("std") or 0.0)
        labels.append(f"{entry.get('n_reached', 0)}/{entry.get('n', 0)}")
    positions = range(len(names))
    ax.bar(positions, means, yerr=stds, color=["black" if n == "uniform" else "tab:blue" for n in names])
    for x, (mean, label) in enumerate(zip(means, labels, strict=True)):
        ax.annotate(label, (x, mean), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(positions), names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(f"{unit} to {target}")


def standard_figure(
    data: dict[str, Any],
    path: Path,
    y: str,
    log: bool,
    target: str = "uniform_final",
    ylim: tuple[float, float] | None = None,
) -> None:
    """Per setting (a row): ``y`` against seconds, against compute (within ``ylim``), and the seconds to ``target``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = data["tables"]
    if not tables:
        return
    fig, axes = plt.subplots(len(tables), 3, figsize=(16, 4.2 * len(tables)), squeeze=False)
    for row, (key, table) in enumerate(tables.items()):
        methods = table["methods"]
        draw_curves(axes[row][0], methods, "seconds", y, log)
        draw_curves(axes[row][1], methods, "cost", y, log)
        draw_bars(axes[row][2], methods, target)
        if ylim is not None:
            axes[row][0].set_ylim(*ylim)
            axes[row][1].set_ylim(*ylim)
        axes[row][0].set_title(f"{key}: {table['label']}", fontsize=9)
        axes[row][0].legend(fontsize=7)
    source = path.with_suffix(".json").name
    fig.suptitle(f"{data['study']}: curves the median, bars the mean over the report seeds (from {source})")
    save_figure(fig, path)
