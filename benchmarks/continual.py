"""Continual-learning benchmark: what replay buys over fine-tuning, at the reference settings and at equal steps.

Every method trains the same user module, ``lightning_per.examples.ContinualClassifier`` (a 2x100 ReLU MLP, plain
SGD at lr 0.1), in one fit over the stream (a single pass, incoming batches of 10): fine-tuning (the module alone);
ER and prioritized ER (``ExperienceReplay`` callback, 200 memories, 10 replays per batch); MER (the module wrapped in
``MER``: ``variant="batch"``, 9 replays + the incoming batch (the paper's ``k=10``), ``s=5`` inner batches, 5 samples
per inner SGD step, ``reptile_beta=0.3``, ``reptile_gamma=1``: 20 inner SGD steps per incoming batch). Rows:

* reference settings: each method as above (fine-tuning and ER take 1 step per incoming batch, MER 20);
* equal steps: ER and fine-tuning with as many gradient steps per incoming batch as MER takes (each incoming batch
  trained 20 times in a row, ``TaskSequence(repeats=20)``, fresh replays each time; ER offers it to its buffer once);
* memory sweep: ER with 50, 200 and 1000 memories.

Scenarios (embedded data, no download): ``split_digits`` (5 tasks of 2 classes, about 270 training images each) and
``split_mnist1d`` (5 tasks of 2 classes, 1000 signals each) in Class-IL (one head over the classes seen so far) and
Task-IL (the task's two outputs); ``rotated_digits`` (10 rotations by 18 t degrees, 300 images each) and
``permuted_mnist1d`` (10 input permutations, 2000 signals each: MNIST-1D is hard for an MLP, and a task of 500
signals is barely learnt in one pass) with one shared 10-way head (domain-IL, the MER paper's setting).
:class:`~lightning_per.replay.TaskAccuracyMatrix` evaluates every task's held-out set after each task: ACC is the
mean accuracy over all tasks after the last one, BWT (backward transfer) the mean change of a task's accuracy
between the end of its own training and the end of the stream (negative: forgetting), and the diagonal each task's
accuracy right after it was trained (how well a task is learnt before the next one arrives; chance is 0.5 on a
2-class task in Task-IL, 1 / classes seen in Class-IL, 0.1 on a 10-class task). Mean ± sample standard deviation
over seeds ``0..n-1`` (seed = data split, order, initialisation and buffer).
One process, one torch thread::

    python -m benchmarks.continual --out bench_out/continual.json            # 3 seeds, about 20 min on one core
    python -m benchmarks.continual --out bench_out/continual.json --quick    # smaller tasks, 1 seed (a smoke run)

JSON: ``{"scenarios": {"split_digits/class_il": {"rows": {"finetune": {"acc", "acc_std", "bwt", "bwt_std",
"diag", "diag_std", "diagonal", "steps_per_batch", "seconds", "runs"}, "er", "per", "mer", "finetune_equal_steps",
"er_equal_steps", "er_m50", "er_m1000"}}}, "settings", "env", "protocol"}``; the PNG next to it plots ACC per row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, seed_everything

if __package__ in (None, ""):  # run as `python benchmarks/continual.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import bench_trainer, environment, protocol, quiet
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence
from lightning_per.examples import ContinualClassifier, PermutedMNIST1D, RotatedDigits, SplitDigits, SplitMNIST1D
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer

SEQUENCES = ("split_digits", "split_mnist1d", "rotated_digits", "permuted_mnist1d")
SCENARIOS = (
    "split_digits/class_il",
    "split_digits/task_il",
    "split_mnist1d/class_il",
    "split_mnist1d/task_il",
    "rotated_digits/domain_il",
    "permuted_mnist1d/domain_il",
)
REFERENCE = ("finetune", "er", "per", "mer")
EQUAL = ("finetune_equal_steps", "er_equal_steps")
SWEEP = ("er_m50", "er_m1000")
ROWS = (*REFERENCE, *EQUAL, *SWEEP)

SETTINGS: dict[str, Any] = {
    "passes": 1,
    "batch_size": 10,
    "model": "ContinualClassifier: 2x100 ReLU MLP, SGD lr 0.1",
    "lr": 0.1,
    "memories": 200,
    "sweep_memories": [50, 200, 1000],
    "per_task": {
        "default": {"split_mnist1d": 1000, "permuted_mnist1d": 2000, "rotated_digits": 300},
        "quick": {"split_mnist1d": 300, "permuted_mnist1d": 300, "rotated_digits": 100},
    },
    "er": {"replay_batch_size": 10},
    "per": {"replay_batch_size": 10, "alpha": 0.6, "beta": 0.4},
    "mer": {
        "variant": "batch",
        "replay_batch_size": 9,
        "batches_per_example": 5,
        "reptile_beta": 0.3,
        "reptile_gamma": 1.0,
        "step_batch_size": 5,
    },
}


def mer_steps_per_batch() -> int:
    """MER's inner SGD steps per full incoming batch (``r`` replays held): ``s * ceil((r + b) / step)``."""
    mer, b = SETTINGS["mer"], SETTINGS["batch_size"]
    return int(mer["batches_per_example"] * -(-(mer["replay_batch_size"] + b) // mer["step_batch_size"]))


def make_sequence(name: str, seed: int, quick: bool, repeats: int = 1) -> tuple[TaskSequence, dict[str, Any]]:
    """The sequence for ``seed`` and the classifier arguments that describe it."""
    sizes = SETTINGS["per_task"]["quick" if quick else "default"]
    common: dict[str, Any] = {"batch_size": SETTINGS["batch_size"], "seed": seed, "repeats": repeats}
    if name == "split_digits":
        dm: TaskSequence = SplitDigits(num_tasks=5, data_seed=seed, **common)
        return dm, {"in_features": 64, "num_tasks": 5, "classes_per_task": 2, "shared_classes": False}
    if name == "split_mnist1d":
        n = sizes["split_mnist1d"] * 5 * 5 // 4  # 20% held out
        dm = SplitMNIST1D(num_tasks=5, num_samples=n, test_fraction=0.2, data_seed=seed, **common)
        return dm, {"in_features": 40, "num_tasks": 5, "classes_per_task": 2, "shared_classes": False}
    if name == "rotated_digits":
        dm = RotatedDigits(num_tasks=10, train_per_task=sizes["rotated_digits"], data_seed=seed, **common)
        return dm, {"in_features": 64, "num_tasks": 10, "classes_per_task": 10, "shared_classes": True}
    if name == "permuted_mnist1d":
        n = sizes["permuted_mnist1d"]
        dm = PermutedMNIST1D(num_tasks=10, train_per_task=n, test_per_task=500, data_seed=seed, **common)
        return dm, {"in_features": 40, "num_tasks": 10, "classes_per_task": 10, "shared_classes": True}
    raise ValueError(f"unknown sequence {name!r}; choose from {SEQUENCES}")


def build(row: str, shape: dict[str, Any], il: str, seed: int) -> tuple[LightningModule, list[Callback]]:
    """The module (MER-wrapped for ``mer``) and the replay callbacks of ``row``, for ``il`` (class, task, domain)."""
    scenario = "task" if il == "task" else "class"  # domain-IL: one shared head over the same classes
    module = ContinualClassifier(scenario=scenario, lr=SETTINGS["lr"], **shape)  # type: ignore[arg-type]
    if row.startswith("finetune"):
        return module, []
    if row == "mer":
        return MER(module, capacity=SETTINGS["memories"], seed=seed, **SETTINGS["mer"]), []
    memories = int(row.removeprefix("er_m")) if row.startswith("er_m") else SETTINGS["memories"]
    if row == "per":
        per = SETTINGS["per"]
        buffer: ReplayBuffer = PrioritizedReplayBuffer(memories, per["alpha"], per["beta"], seed=seed)
        return module, [ExperienceReplay(buffer, replay_batch_size=per["replay_batch_size"])]
    return module, [ExperienceReplay(ReservoirBuffer(memories, seed=seed), **SETTINGS["er"])]


def run_one(job: tuple[str, str, int, bool]) -> dict[str, Any]:
    """One fit over the stream; returns ACC, BWT, the diagonal, the accuracy matrix, steps and wall time."""
    key, row, seed, quick = job
    name, il = key.split("/")
    quiet()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    seed_everything(seed, verbose=False)
    repeats = mer_steps_per_batch() if row in EQUAL else 1
    dm, shape = make_sequence(name, seed, quick, repeats)
    model, callbacks = build(row, shape, il.removesuffix("_il"), seed)
    matrix = TaskAccuracyMatrix(inputs=[0, 2])
    trainer = bench_trainer("cpu", [*callbacks, matrix], max_epochs=1)
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    incoming = trainer.num_training_batches // repeats
    return {
        "key": key,
        "row": row,
        "seed": seed,
        "acc": matrix.acc,
        "bwt": matrix.bwt,
        "diagonal": matrix.diagonal.tolist(),
        "seconds": round(time.perf_counter() - start, 2),
        "steps": trainer.global_step,  # optimizer steps (MER: every inner SGD step)
        "steps_per_batch": round(trainer.global_step / max(incoming, 1), 2),
        "matrix": matrix.matrix.tolist(),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of ACC, BWT and the mean diagonal; the mean matrix."""
    acc, acc_std = _mean_std([r["acc"] for r in runs])
    bwt, bwt_std = _mean_std([r["bwt"] for r in runs])
    diag, diag_std = _mean_std([statistics.fmean(r["diagonal"]) for r in runs])
    return {
        "acc": round(acc, 4),
        "acc_std": round(acc_std, 4),
        "bwt": round(bwt, 4),
        "bwt_std": round(bwt_std, 4),
        "diag": round(diag, 4),
        "diag_std": round(diag_std, 4),
        "diagonal": [round(v, 4) for v in torch.tensor([r["diagonal"] for r in runs]).mean(0).tolist()],
        "steps_per_batch": runs[0]["steps_per_batch"],
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "matrix_mean": torch.tensor([r["matrix"] for r in runs]).mean(0).round(decimals=4).tolist(),
        "runs": [{k: r[k] for k in ("seed", "acc", "bwt", "diagonal", "seconds", "steps")} for r in runs],
    }


LABELS = {
    "finetune": "fine-tune",
    "er": "ER",
    "per": "prioritized ER",
    "mer": "MER",
    "finetune_equal_steps": "fine-tune, equal steps",
    "er_equal_steps": "ER, equal steps",
    "er_m50": "ER, 50 memories",
    "er_m1000": "ER, 1000 memories",
}


def markdown_tables(results: dict[str, Any]) -> str:
    """Reference and equal-steps rows (ACC, BWT, diagonal), then the memory sweep (ACC)."""

    def pm(r: dict[str, Any], key: str, signed: bool = False) -> str:
        return f"{r[key]:+.3f} ± {r[key + '_std']:.3f}" if signed else f"{r[key]:.3f} ± {r[key + '_std']:.3f}"

    lines = [
        "| scenario | method | steps / batch | ACC | BWT | diagonal (mean over tasks) |",
        "|---|---|---|---|---|---|",
    ]
    for key, res in results.items():
        for row in (*REFERENCE, *EQUAL):
            r = res["rows"].get(row)
            if r is not None:
                cells = [key, LABELS[row], f"{r['steps_per_batch']:g}", pm(r, "acc"), pm(r, "bwt", True), pm(r, "diag")]
                lines.append("| " + " | ".join(cells) + " |")
    sweep = [f"er_m{m}" if m != SETTINGS["memories"] else "er" for m in SETTINGS["sweep_memories"]]
    lines += ["", "| scenario | " + " | ".join(f"ER, {m} memories" for m in SETTINGS["sweep_memories"]) + " |"]
    lines.append("|---" * (len(sweep) + 1) + "|")
    for key, res in results.items():
        cells = [pm(res["rows"][row], "acc") if row in res["rows"] else "" for row in sweep]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """ACC (bars, mean ± std) and the mean diagonal (dots) of every row, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(results)
    cols = 3
    fig, axes = plt.subplots(
        -(-len(keys) // cols), cols, figsize=(4.2 * cols, 3.0 * -(-len(keys) // cols)), squeeze=False
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        rows = [r for r in ROWS if r in results[key]["rows"]]
        stats = [results[key]["rows"][r] for r in rows]
        xs = range(len(rows))
        ax.bar(
            xs, [s["acc"] for s in stats], yerr=[s["acc_std"] for s in stats], color="tab:blue", alpha=0.7, label="ACC"
        )
        ax.plot(xs, [s["diag"] for s in stats], "o", color="tab:orange", ms=4, label="diagonal")
        ax.set_xticks(list(xs), [LABELS[r].replace(", ", "\n") for r in rows], fontsize=5.5, rotation=60)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(key, fontsize=8)
        ax.tick_params(axis="y", labelsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("ACC after the last task (bars) and accuracy on each task right after it (dots)", fontsize=9)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON path; the PNG is written next to it")
    parser.add_argument("--quick", action="store_true", help="smaller tasks and 1 seed (a smoke run)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3, 1 with --quick)")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    args = parser.parse_args(argv)
    quiet()
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 3)))
    jobs = [(key, row, seed, args.quick) for key in args.scenarios for seed in seeds for row in args.rows]
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for job in jobs:  # one process, one thread: the runs do not compete for the cores
        r = run_one(job)
        runs.append(r)
        diag = statistics.fmean(r["diagonal"])
        print(f"{r['key']:28s} {r['row']:21s} seed {r['seed']}  ACC {r['acc']:.3f}  BWT {r['bwt']:+.3f}  "
              f"diag {diag:.3f}  ({r['seconds']:.1f} s)", flush=True)  # fmt: skip
    total = time.perf_counter() - start
    results: dict[str, Any] = {}
    for key in args.scenarios:
        mine = [r for r in runs if r["key"] == key]
        rows = {row: sorted((r for r in mine if r["row"] == row), key=lambda r: r["seed"]) for row in args.rows}
        results[key] = {"rows": {row: summarize(rs) for row, rs in rows.items() if rs}}
    env = {**environment(), "processes": 1, "threads_per_run": 1, "seconds_total": round(total, 1), "seeds": seeds}
    payload = {"settings": SETTINGS, "mer_steps_per_batch": mer_steps_per_batch(), "quick": args.quick, "env": env}
    payload.update(scenarios=results, protocol=protocol(__doc__))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    plot(results, png)
    print("\n" + markdown_tables(results))
    print(f"\nwrote {args.out} and {png} in {total:.0f} s")


if __name__ == "__main__":
    main()
