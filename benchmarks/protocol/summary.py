"""One method's summary over its report seeds: finals with 95% intervals, early stopping, paired differences to
uniform, compute, seconds and time to target."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.protocol.lr_search import LrChoice
from benchmarks.protocol.stats import describe, paired
from benchmarks.protocol.study import Setting, Study
from benchmarks.protocol.targets import Target, time_to_target

Runs = dict[int, dict[str, Any]]


def final(run: dict[str, Any], key: str) -> float | None:
    value = run["curve"][-1].get(key)
    return None if value is None else float(value)


def early_stopped(run: dict[str, Any], chosen_on: str, reported: str, higher: bool = True) -> dict[str, float]:
    """The ``reported`` value and the compute at the evaluation point of best ``chosen_on`` (the first of equals)."""
    sign = 1.0 if higher else -1.0
    points = [p for p in run["curve"] if p.get(chosen_on) is not None and math.isfinite(p[chosen_on])]
    if not points:
        return {"value": math.nan, "cost": math.nan}
    best = max(points, key=lambda p: sign * p[chosen_on])  # max keeps the first of equals
    return {"value": float(best[reported]), "cost": float(best["cost"])}


def by_seed(runs: Runs, key: str) -> dict[int, float]:
    """The final ``key`` of each run that has it."""
    values = {s: final(r, key) for s, r in runs.items()}
    return {s: v for s, v in values.items() if v is not None}


def _describe(values: dict[int, float]) -> dict[str, Any] | None:
    return describe([values[s] for s in sorted(values)]) if values else None


def summarize_method(
    study: Study,
    setting: Setting,
    method: str,
    choice: LrChoice,
    selection_seeds: list[int],
    runs: Runs,
    uniform: Runs,
    targets: list[Target],
) -> dict[str, Any]:
    """The JSON summary of one method (see the module docstring); ``uniform`` holds uniform's runs by seed."""
    out: dict[str, Any] = {
        "lr": choice.record(),
        "seeds": {"selection": selection_seeds, "report": sorted(runs)},
        "budget": next(iter(runs.values()))["budget"],
        "final": {},
        "vs_uniform": {},
    }
    for key in study.reported:
        mine, base = by_seed(runs, key), by_seed(uniform, key)
        out["final"][key] = _describe(mine)
        out["vs_uniform"][key] = paired(mine, base)
    if study.early_stop is not None:
        on, reported, higher = study.early_stop
        mine_es = {s: early_stopped(r, on, reported, higher) for s, r in runs.items()}
        base_es = {s: early_stopped(r, on, reported, higher) for s, r in uniform.items()}
        values = {s: e["value"] for s, e in mine_es.items()}
        base_values = {s: e["value"] for s, e in base_es.items()}
        out["early_stopped"] = {
            reported: _describe(values),
            "cost": _describe({s: e["cost"] for s, e in mine_es.items()}),
            "vs_uniform_early_stopped": paired(values, base_values),
            "final_vs_uniform_early_stopped": paired(by_seed(runs, reported), base_values),
        }
    out["compute_fraction"] = _describe({s: r["cost"] / setting.budget for s, r in runs.items()})
    out["seconds"] = _describe({s: r["seconds"] for s, r in runs.items()})
    out["time_to_target"] = {}
    for target in targets:
        levels = by_seed(uniform, target.key) if target.value is None else None
        mine_t = time_to_target({s: r["curve"] for s, r in runs.items()}, target, levels)
        base_t = time_to_target({s: r["curve"] for s, r in uniform.items()}, target, levels)
        out["time_to_target"][target.name] = {
            "key": target.key,
            "level": target.value if levels is None else _describe(levels),
            **mine_t,
            "speedup_vs_uniform": speedups(mine_t, base_t, runs),
        }
    out.update(study.extras(setting, method, runs))
    out["runs"] = {str(s): r for s, r in sorted(runs.items())}
    return out


def speedups(mine: dict[str, Any], base: dict[str, Any], runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Uniform's time to a target over the method's, paired by seed, in seconds and in compute.

    A seed on which the method never reached the target (and uniform did) is not dropped: it counts with the
    speed-up it would have had reaching the target at its last point (an upper bound on its true one), at most 1 (it
    did not get where uniform got, so it is credited with no gain; a method that stops early would otherwise be
    credited with the compute it did not spend), and is listed under ``"bounded"``. ``None`` when no seed reached
    the target.
    """
    out: dict[str, Any] = {"bounded": []}
    for unit in ("seconds", "compute"):
        field = "seconds" if unit == "seconds" else "cost"
        pairs: dict[int, float] = {}
        for s, hit in mine["per_seed"].items():
            reference = base["per_seed"].get(s)
            if not reference:
                continue
            if hit is None and unit == "seconds":
                out["bounded"].append(int(s))
            at = hit[field] if hit else runs[int(s)]["curve"][-1][field]
            if at > 0:
                pairs[int(s)] = reference[field] / at if hit else min(1.0, reference[field] / at)
        out[unit] = _describe(pairs) if mine["compute"]["n_reached"] else None
    return out
