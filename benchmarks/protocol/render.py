"""Markdown pieces every study's results section uses: intervals, the learning-rate cell, time to target, figures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

EDGE = "⚠ edge"
Column = tuple[str, Callable[[str, dict[str, Any]], str]]


def ci(stats: dict[str, Any] | None, scale: float = 1.0, digits: int = 1, signed: bool = False) -> str:
    """``mean [low, high]`` (the 95% interval over seeds); ``mean`` alone for one seed; ``n/a`` for none."""
    if stats is None or stats.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{stats['mean'] * scale:{sign}.{digits}f}"
    if stats.get("ci95"):
        low, high = (v * scale for v in stats["ci95"])
        text += f" [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"
    return text


def quotable(method: dict[str, Any], min_seeds: int = 3) -> bool:
    """A row the README may quote: its learning rate is interior to its grid and it has enough report seeds."""
    return not method["lr"]["at_edge"] and len(method["seeds"]["report"]) >= min_seeds


def lr_cell(method: dict[str, Any]) -> str:
    """The chosen rate; at an edge of its grid after the cap (or a fixed rate): marked, with the grid's range."""
    lr = method["lr"]
    if not lr["at_edge"]:
        return f"{lr['chosen']:g}"
    grid = lr["grid"]
    return f"**{lr['chosen']:g} {EDGE}** ({grid[0]:g}-{grid[-1]:g})"


def reach_cell(method: dict[str, Any], target: str, unit: str, scale: float = 1.0, digits: int = 1) -> str:
    """Mean compute or seconds to ``target`` over the seeds that reached it, and how many did."""
    entry = method["time_to_target"].get(target)
    if entry is None:
        return "n/a"
    stats = entry[unit]
    if not stats["n_reached"]:
        return f"not reached (0/{stats['n']})"
    return f"{stats['mean'] * scale:.{digits}f} ({stats['n_reached']}/{stats['n']})"


def speedup_cell(method: dict[str, Any], target: str, unit: str = "seconds") -> str:
    """Uniform's time to ``target`` over the method's, paired by seed: ``1.8x [1.5, 2.1]``, and the seeds at a bound."""
    entry = method["time_to_target"].get(target)
    stats = entry["speedup_vs_uniform"][unit] if entry else None
    if stats is None:
        return "n/a"
    text = f"{stats['mean']:.2f}x"
    if stats.get("ci95"):
        text += f" [{stats['ci95'][0]:.2f}, {stats['ci95'][1]:.2f}]"
    bounded = entry["speedup_vs_uniform"].get("bounded", [])
    return text + (f" ({len(bounded)} of {stats['n']} seeds never reached it: at most 1x each)" if bounded else "")


def table(methods: dict[str, dict[str, Any]], columns: list[Column]) -> list[str]:
    """A Markdown table: a row per method, the columns' headers and cells."""
    lines = ["| " + " | ".join(["method", *(h for h, _ in columns)]) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, method in methods.items():
        lines.append("| " + " | ".join([f"`{name}`", *(cell(name, method) for _, cell in columns)]) + " |")
    return [*lines, ""]


def figure(json_path: Path, alt: str) -> list[str]:
    """The study's PNG (beside its JSON), linked from the results page in ``benchmarks/``, citing its JSON.

    A JSON in ``bench_out/gpu_check/`` keeps that folder in the link; any other is taken to be in ``bench_out/``.
    """
    name = json_path.stem if json_path.parent.name != "gpu_check" else f"gpu_check/{json_path.stem}"
    return [f"![{alt}](../bench_out/{name}.png)", "", f"*Figure rendered from `bench_out/{name}.json`.*", ""]


def settings_line(data: dict[str, Any]) -> str:
    """Seeds and the command of a protocol JSON."""
    seeds = data["seeds"]
    return (
        f"Reproduce: `{data['command']}` (machine time {data['wall_seconds'] / 3600:.1f} h). Learning rate per "
        f"method and setting on a factor-2 grid extended at an edge choice (cap {data['settings']['lr_max_points']} "
        f"values), chosen on the mean final validation metric of selection seeds {seeds['selection']}; reported "
        f"on seeds {seeds['report']} (and {seeds['extra']} where a method is within one std of uniform); "
        "intervals are 95% t-intervals over the report seeds; Δ: paired difference to uniform of the same seed."
    )


def pending(title: str, command: str, note: str) -> list[str]:
    """The section of a study whose protocol JSON is not there yet."""
    return [f"### {title}", "", f"**Pending**: {note} Command: `{command}`.", ""]


def compared(methods: dict[str, Any]) -> list[tuple[str, Any]]:
    """The ``(name, result)`` of every method compared with uniform: all but uniform and its reduced-budget runs."""
    return [(m, r) for m, r in methods.items() if m != "uniform" and not m.startswith("uniform_at_")]


def never_switched_on(method: dict[str, Any]) -> str | None:
    """What to say of importance sampling that took no importance step in any run (``None``: it took some).

    ``None`` too for a method without a ``tau`` switch, and for one whose results differ from uniform's (another
    learning rate). Otherwise it trained exactly as uniform did, and a difference of 0 compares nothing.
    """
    runs = list(method.get("runs", {}).values())
    peaks = [run["tau_peak"] for run in runs if run.get("tau_peak") is not None]
    if not peaks or any(run.get("selected_step_fraction") != 0 for run in runs):
        return None
    diffs = [d for d in (method.get("vs_uniform") or {}).values() if d is not None]
    if not diffs or any(d["mean"] != 0 or d["std"] != 0 for d in diffs):
        return None
    return f"never switched on (`tau` peaked at {max(peaks):.2f}): every run was uniform's"
