"""Continual-learning benchmark: online fine-tuning vs ER vs prioritized ER vs MER, in Task-IL and Class-IL.

Task sequences built from the embedded data (no download):

* ``permuted_mnist1d``: 10 tasks, MNIST-1D under a fixed permutation of its 40 inputs per task (task 0 unpermuted);
* ``rotated_digits``: 10 tasks, scikit-learn's 8x8 digits rotated by ``18 t`` degrees; both have the same 10
  classes in every task (the MER paper's MNIST Permutations / Rotations setting);
* ``split_digits`` and ``split_mnist1d``: 5 tasks of 2 classes (the Task-IL vs Class-IL setting).

Each run is one ``trainer.fit`` over the stream: a single pass, incoming batches of 10, a 2x100 MLP trained with
plain SGD, and :class:`~lightning_per.replay.TaskAccuracyMatrix` evaluating every task's held-out set after each
task. ACC is the mean accuracy over all tasks after the last one; BWT (backward transfer) the mean change of a
task's accuracy between the end of its own training and the end of the stream (negative: forgetting). Every
scenario runs in Task-IL (a head block per task, other blocks masked) and Class-IL (one head over the classes seen;
a shared 10-way head for the permuted / rotated sequences), with seeds ``0..n-1`` (seed = data, order, init and
buffer). Writes the JSON (``--out``) and a PNG of the accuracy on every task over time next to it::

    python benchmarks/continual.py --out bench_out/continual.json            # 3 seeds, 3.5-7 min on 2 CPU cores
    python benchmarks/continual.py --out bench_out/continual.json --quick    # smaller tasks, 2 seeds

JSON: ``{"scenarios": {"rotated_digits/task_il": {"methods": {"finetune": {"acc": ..., "acc_std": ..., "bwt": ...,
"bwt_std": ..., "matrix_mean": [[...]], "runs": [...]}, "er": ..., "per": ..., "mer": ...}}, ...}, "settings": ...,
"env": ...}``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import seed_everything

if __package__ in (None, ""):  # run as `python benchmarks/continual.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_trainer, environment, protocol, quiet
from lightning_per.replay import (
    MER,
    ContinualDataModule,
    ContinualModule,
    ExperienceReplay,
    PermutedMNIST1D,
    RotatedDigits,
    SplitDigits,
    SplitMNIST1D,
    TaskAccuracyMatrix,
)

METHODS = ("finetune", "er", "per", "mer")
SCENARIOS = ("permuted_mnist1d", "rotated_digits", "split_digits", "split_mnist1d")
IL = ("task", "class")

SETTINGS: dict[str, Any] = {
    "passes": 1,
    "batch_size": 10,
    "mlp": "2x100 ReLU, plain SGD",
    "lr": 0.1,
    "train_per_task": {"default": 500, "quick": 150},
    "memories": 200,
    "er": {"replay_batch_size": 10},
    "per": {"replay_batch_size": 10, "alpha": 0.6, "priority_beta": 0.4},
    "mer": {
        "variant": "batch",
        "replay_batch_size": 10,
        "batches_per_example": 5,
        "beta": 0.3,
        "gamma": 1.0,
        "step_batch_size": 5,
    },
}


def make_datamodule(name: str, seed: int, quick: bool) -> tuple[ContinualDataModule, dict[str, Any]]:
    """The scenario's sequence for ``seed`` and the model arguments that describe it."""
    n = SETTINGS["train_per_task"]["quick" if quick else "default"]
    if name == "permuted_mnist1d":
        dm: ContinualDataModule = PermutedMNIST1D(
            num_tasks=10, train_per_task=n, test_per_task=500, data_seed=seed, seed=seed
        )
        return dm, {"input_dim": 40, "num_tasks": 10, "classes_per_task": 10, "shared_classes": True}
    if name == "rotated_digits":
        dm = RotatedDigits(num_tasks=10, train_per_task=n, data_seed=seed, seed=seed)
        return dm, {"input_dim": 64, "num_tasks": 10, "classes_per_task": 10, "shared_classes": True}
    if name == "split_digits":
        dm = SplitDigits(num_tasks=5, data_seed=seed, seed=seed)
        return dm, {"input_dim": 64, "num_tasks": 5, "classes_per_task": 2, "shared_classes": False}
    if name == "split_mnist1d":
        dm = SplitMNIST1D(num_tasks=5, num_samples=1500 if quick else 2500, data_seed=seed, seed=seed)
        return dm, {"input_dim": 40, "num_tasks": 5, "classes_per_task": 2, "shared_classes": False}
    raise ValueError(f"unknown scenario {name!r}; choose from {SCENARIOS}")


def build(method: str, common: dict[str, Any], seed: int) -> ContinualModule:
    """The model of ``method`` with the benchmark's settings."""
    lr, memories = SETTINGS["lr"], SETTINGS["memories"]
    if method == "finetune":
        return ContinualModule(lr=lr, **common)
    if method in ("er", "per"):
        return ExperienceReplay(
            capacity=memories, prioritized=method == "per", buffer_seed=seed, lr=lr, **SETTINGS[method], **common
        )
    if method == "mer":
        return MER(memories=memories, lr=lr, buffer_seed=seed, **SETTINGS["mer"], **common)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(job: tuple[str, str, str, int, bool]) -> dict[str, Any]:
    """One fit over the stream; returns ACC, BWT, the accuracy matrix and the wall time."""
    name, scenario, method, seed, quick = job
    quiet()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    seed_everything(seed, verbose=False)
    dm, common = make_datamodule(name, seed, quick)
    model = build(method, {**common, "scenario": scenario}, seed)
    matrix = TaskAccuracyMatrix()
    trainer = bench_trainer("cpu", [matrix], max_epochs=1)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return {
        "key": f"{name}/{scenario}_il",
        "method": method,
        "seed": seed,
        "acc": matrix.acc,
        "bwt": matrix.bwt,
        "seconds": round(time.perf_counter() - start, 2),
        "steps": trainer.global_step,  # optimizer steps (MER: every inner SGD step)
        "matrix": matrix.matrix.tolist(),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of ACC and BWT, and the mean accuracy matrix."""

    def mean_std(key: str) -> tuple[float, float]:
        values = [r[key] for r in runs]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    acc, acc_std = mean_std("acc")
    bwt, bwt_std = mean_std("bwt")
    return {
        "acc": round(acc, 4),
        "acc_std": round(acc_std, 4),
        "bwt": round(bwt, 4),
        "bwt_std": round(bwt_std, 4),
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "matrix_mean": torch.tensor([r["matrix"] for r in runs]).mean(0).round(decimals=4).tolist(),
        "runs": [{k: r[k] for k in ("seed", "acc", "bwt", "seconds", "steps")} for r in runs],
    }


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per scenario and method: accuracy on each task (one line per task) after each task trained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    fig, axes = plt.subplots(len(keys), len(METHODS), figsize=(3.2 * len(METHODS), 2.3 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        for col, method in enumerate(METHODS):
            ax = axes[row][col]
            res = results[key]["methods"].get(method)
            if res is None:
                ax.axis("off")
                continue
            m = torch.tensor(res["matrix_mean"])
            tasks = m.shape[0]
            colors = plt.get_cmap("viridis")(torch.linspace(0, 1, tasks).tolist())
            for j in range(tasks):
                ax.plot(range(j + 1, tasks + 1), m[j:, j].tolist(), color=colors[j], lw=1.2, marker=".", ms=3)
            ax.set_ylim(0, 1.02)
            ax.set_xticks(range(1, tasks + 1))
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            ax.set_title(f"{key} {method}: ACC {res['acc']:.2f}, BWT {res['bwt']:+.2f}", fontsize=7)
            if col == 0:
                ax.set_ylabel("accuracy", fontsize=7)
            if row == len(keys) - 1:
                ax.set_xlabel("tasks trained", fontsize=7)
    fig.suptitle("accuracy on task j (one line per task, dark = first) after training on tasks 1..i", fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.985))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(results: dict[str, Any]) -> str:
    """ACC / BWT per method and scenario, mean ± std over seeds."""
    lines = ["| scenario | " + " | ".join(f"{m} ACC / BWT" for m in METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for key, res in results.items():
        cells = []
        for m in METHODS:
            r = res["methods"][m]
            cells.append(f"{r['acc']:.3f} ± {r['acc_std']:.3f} / {r['bwt']:+.3f} ± {r['bwt_std']:.3f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(r: dict[str, Any]) -> None:
    """Print one run's line."""
    line = f"{r['key']:28s} {r['method']:9s} seed {r['seed']}  ACC {r['acc']:.3f}  BWT {r['bwt']:+.3f}"
    print(f"{line}  ({r['seconds']:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON path; the PNG is written next to it")
    parser.add_argument("--quick", action="store_true", help="smaller tasks and 2 seeds (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, 2 with --quick)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (one CPU thread each)")
    args = parser.parse_args(argv)
    quiet()
    seeds = list(range(args.seeds if args.seeds is not None else (2 if args.quick else 3)))
    for name in args.scenarios:  # generate and cache the data once, before the workers start
        for seed in seeds:
            make_datamodule(name, seed, args.quick)[0].setup("fit")
    jobs = [
        (name, scenario, method, seed, args.quick)
        for name in args.scenarios
        for scenario in IL
        for seed in seeds
        for method in reversed(args.methods)  # the slowest (MER) first: better packing over the workers
    ]
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            for r in pool.imap_unordered(run_one, jobs):
                runs.append(r)
                report(r)
    else:
        for job in jobs:
            runs.append(run_one(job))
            report(runs[-1])
    total = time.perf_counter() - start
    results: dict[str, Any] = {}
    for name in args.scenarios:
        for scenario in IL:
            key = f"{name}/{scenario}_il"
            mine = sorted((r for r in runs if r["key"] == key), key=lambda r: r["seed"])
            results[key] = {"methods": {m: summarize([r for r in mine if r["method"] == m]) for m in args.methods}}
    env = {**environment(), "workers": args.workers, "threads_per_run": 1, "seconds_total": round(total, 1)}
    env["seeds"] = seeds
    payload = {"settings": SETTINGS, "quick": args.quick, "env": env, "scenarios": results}
    payload["protocol"] = protocol(__doc__)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    plot(results, png)
    if set(args.methods) == set(METHODS):
        print("\n" + markdown_table(results))
    print(f"\nwrote {args.out} and {png} in {total:.0f} s")


if __name__ == "__main__":
    main()
