"""The protocol's loop over one study: learning rates on the selection seeds, then the report seeds interleaved.

Per setting: (1) each method's learning rate by ``search_lr`` on the mean final validation metric of the selection
seeds; (2) every report seed runs every method at its chosen rate, the methods one after another in a rotating order
(seed ``i`` starts with method ``i``), so that their training seconds are comparable; (3) a method whose paired
difference to uniform (the primary metric) is within one standard deviation gets the extra seeds, run with uniform in
the same rotation; (4) a method that used less than ``SAVING`` of the budget gets ``uniform_at_<method>``: uniform
given that method's mean compute, its learning rate searched the same way, run on the same report seeds; (5) every
method is summarised against uniform of the same seeds. Each finished run is appended to the run store at once, and
the JSON is rewritten after each setting, so a killed study loses one run and resumes from the store.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.common import protocol, save_json
from benchmarks.protocol.lr_search import LrChoice, search_lr
from benchmarks.protocol.records import Missing, RunStore, run_key, runs_path
from benchmarks.protocol.seeds import SeedPlan, is_close, rotation
from benchmarks.protocol.stats import paired
from benchmarks.protocol.study import Setting, Study
from benchmarks.protocol.summary import by_seed, final, summarize_method

SAVING = 0.95  # a method that used less than this share of the budget saved compute


class Runner:
    """Runs (or, with ``train=False``, only looks up) the runs of one study."""

    def __init__(self, study: Study, args: argparse.Namespace, store: RunStore, seeds: SeedPlan, train: bool) -> None:
        self.study, self.args, self.store, self.seeds, self.train = study, args, store, seeds, train

    def one(self, setting: Setting, method: str, seed: int, lr: float, budget: float, base: str) -> dict[str, Any]:
        """The run of ``method`` (trained as ``base``) at ``seed``, ``lr`` and ``budget``: from the store or trained."""
        key = run_key(setting.key, method, seed, lr, budget)
        if key in self.store:
            return self.store.get(key)
        if not self.train:
            raise Missing(key)
        start = time.perf_counter()
        record = self.study.run(self.args, setting, base, seed, lr, budget)
        wall = time.perf_counter() - start
        record.update(key=key, setting=setting.key, method=method, seed=seed, lr=lr, budget=budget, wall=wall)
        self.store.add(record)
        end = record["curve"][-1]
        shown = " ".join(f"{k} {end[k]:.4g}" for k in (self.study.selection_key, self.study.primary_key) if k in end)
        print(
            f"{setting.key} {method:<22s} seed {seed:<4d} lr {lr:<7g} {shown} compute {record['cost'] / budget:.3f} "
            f"of {budget:.3g}  {record['seconds']:.1f} s  [{len(self.store)} runs]",
            flush=True,
        )
        return record

    def choose(self, setting: Setting, method: str, budget: float, base: str) -> LrChoice:
        """The learning-rate search of ``method`` on the selection seeds."""

        def score(lr: float) -> float:
            runs = [self.one(setting, method, s, lr, budget, base) for s in self.seeds.selection]
            values = [final(r, self.study.selection_key) for r in runs]
            return math.fsum(v for v in values if v is not None) / len(values) if None not in values else math.nan

        return search_lr(
            score, self.args.lrs, max_points=self.args.lr_max_points, higher_is_better=self.study.selection_higher
        )

    def report(self, setting: Setting, plan: dict[str, tuple[float, float, str]], seeds: list[int], start: int) -> None:
        """Every method of ``plan`` (lr, budget, base) on every seed, in the rotating order."""
        for i, seed in enumerate(seeds):
            for method in rotation(list(plan), start + i):
                lr, budget, base = plan[method]
                self.one(setting, method, seed, lr, budget, base)

    def table(self, setting: Setting) -> dict[str, Any]:
        """Search, report, extend and summarise one setting (see the module docstring)."""
        study, seeds = self.study, self.seeds
        methods = study.methods(self.args, setting)
        choices = {m: self.choose(setting, m, setting.budget, m) for m in methods}
        plan = {m: (choices[m].chosen, setting.budget, m) for m in methods}
        report = list(seeds.report)
        self.report(setting, plan, report, 0)
        runs = {m: {s: self.one(setting, m, s, *plan[m]) for s in report} for m in methods}

        def diffs(method: str) -> list[float]:
            mine, base = by_seed(runs[method], study.primary_key), by_seed(runs["uniform"], study.primary_key)
            return [mine[s] - base[s] for s in sorted(set(mine) & set(base))]

        close = [m for m in methods if m != "uniform" and is_close(diffs(m))]
        if close and seeds.extra:
            self.report(setting, {m: plan[m] for m in ["uniform", *close]}, list(seeds.extra), len(report))
            for m in ["uniform", *close]:
                runs[m].update({s: self.one(setting, m, s, *plan[m]) for s in seeds.extra})
        matched: dict[str, str] = {}
        for m in methods:
            used = [r["cost"] for r in runs[m].values()]
            if m != "uniform" and sum(used) / len(used) < SAVING * setting.budget:
                name = f"uniform_at_{m}"
                budget = float(round(sum(used) / len(used)))
                choices[name] = self.choose(setting, name, budget, "uniform")
                plan[name] = (choices[name].chosen, budget, "uniform")
                matched[name] = m
        if matched:
            self.report(setting, {m: plan[m] for m in matched}, report, 0)
            for name in matched:
                runs[name] = {s: self.one(setting, name, s, *plan[name]) for s in report}
        targets = study.targets(self.args, setting)
        summaries = {
            m: summarize_method(study, setting, m, choices[m], list(seeds.selection), runs[m], runs["uniform"], targets)
            for m in runs
        }
        for name, m in matched.items():
            summaries[name]["matches"] = m
            mine, base = by_seed(runs[m], study.primary_key), by_seed(runs[name], study.primary_key)
            summaries[m]["vs_matched_uniform"] = {
                "method": name,
                study.primary_key: paired(mine, base),
            }
        return {
            "label": setting.label,
            "budget": setting.budget,
            "max_epochs": setting.max_epochs,
            "options": setting.options,
            "methods": summaries,
            "goals": study.goals(setting, summaries),
        }


def run_study(study: Study, args: argparse.Namespace) -> dict[str, Any]:
    """Run (or with ``--summarize-only`` look up) every setting; rewrite the JSON and the figure after each."""
    seeds = SeedPlan(
        tuple(args.selection_seeds),
        tuple(range(args.seeds)),
        tuple(range(args.seeds, args.seeds + args.extra_seeds)),
    )
    out: Path = args.out
    store = RunStore(runs_path(out))
    runner = Runner(study, args, store, seeds, train=not args.summarize_only)
    settings = study.settings(args)
    tables: dict[str, Any] = {}
    payload: dict[str, Any] = {}
    for setting in settings:
        try:
            tables[setting.key] = runner.table(setting)
        except Missing:
            continue
        payload = build_payload(study, args, seeds, tables, settings, store)
        save_json(out, payload)
        study.plot(payload, out.with_suffix(".png"))
    if not tables:
        print(f"{study.name}: no setting is complete yet ({len(store)} runs in {store.path})")
    return payload


def build_payload(
    study: Study,
    args: argparse.Namespace,
    seeds: SeedPlan,
    tables: dict[str, Any],
    settings: list[Setting],
    store: RunStore,
) -> dict[str, Any]:
    """The study's JSON: its tables, the settings still pending, the command and the protocol.

    ``wall_seconds`` is the wall time of every run in the store (set-up, training and evaluation; resumed runs
    included), the machine time the study took.
    """
    recorded = {k: v for k, v in vars(args).items() if k != "summarize_only"}
    argv = [a for a in getattr(args, "argv", []) if a != "--summarize-only"]
    recorded.pop("argv", None)
    return {
        "study": study.name,
        "protocol_version": 2,
        "tables": tables,
        "pending": [s.key for s in settings if s.key not in tables],
        "seeds": {"selection": list(seeds.selection), "report": list(seeds.report), "extra": list(seeds.extra)},
        "command": " ".join(["python -m benchmarks." + study.name, *argv]),
        "code_commit": os.environ.get("BENCH_COMMIT"),  # set by benchmarks.run_studies
        "settings": {**recorded, "out": str(args.out)},
        "wall_seconds": sum(r.get("wall", 0.0) for r in store.runs.values()),
        "runs_in_store": len(store),
        "protocol": protocol(study.doc),
        **study.payload_extras(tables),
    }
