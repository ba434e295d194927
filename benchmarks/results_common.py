"""Formatting the results page shares: figures with their spread, the machine line, recorded commands, figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def pm(stats: dict[str, float] | None, digits: int = 3, scale: float = 1.0) -> str:
    """``mean ± std`` (the quick benchmarks' JSON records no intervals)."""
    if stats is None:
        return "not reached"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def met(flag: bool | None) -> str:
    return "" if flag is None else ("met" if flag else "missed")


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def env_line(env: dict[str, Any] | None, extra: str = "") -> list[str]:
    """The machine and versions a JSON was measured with."""
    if not env or "cpu" not in env:
        return []
    device = f"{env['cuda']}, host CPU {env['cpu']}" if env.get("cuda") else env["cpu"]
    return [
        f"Measured on {device} ({env['cpu_count']} cores, {count(env['torch_threads'], 'torch thread')}), torch "
        f"{env['torch']}, lightning {env['lightning']}, Python {env['python']}.{extra}",
        "",
    ]


def command(recorded: str) -> str:
    """A recorded command line as a user would type it: ``python -m ...`` without the ``--out`` it wrote to."""
    words = recorded.split()
    if "-m" in words:
        words = ["python", *words[words.index("-m") :]]
    if "--out" in words:
        at = words.index("--out")
        del words[at : at + 2]
    return " ".join(words)


def wall(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return (
        f"{seconds / 3600:.1f} h"
        if seconds >= 7200
        else f"{seconds / 60:.0f} min"
        if seconds >= 120
        else f"{seconds:.0f} s"
    )


def figure(out: Path, stem: str, alt: str) -> list[str]:
    """A PNG beside its JSON in ``out``, linked from the page in ``benchmarks/``, citing the JSON (none if absent)."""
    if not (out / f"{stem}.png").exists():
        return []
    return [f"![{alt}](../bench_out/{stem}.png)", "", f"*Figure rendered from `bench_out/{stem}.json`.*", ""]
