"""Continual-learning benchmark: what replay buys over fine-tuning, at the reference settings and at equal steps.

Every method trains the same user module, ``lightning_per.examples.ContinualClassifier`` (a 2x400 ReLU MLP, plain
SGD at lr 0.1), in one fit over the stream (a single pass, incoming batches of 10): fine-tuning (the module alone);
ER and prioritized ER (``ExperienceReplay``, 200 memories, 10 replays per batch; prioritized ``alpha=0.6``,
``beta=0.4``, and ``beta=0``: the same draws with weights 1); MER (``MER``, ``variant="batch"``, 9 replays + the
incoming batch (the paper's ``k=10``), ``s=5`` inner batches, 5 samples per inner SGD step, ``reptile_beta=0.3``,
``reptile_gamma=1``: 20 inner SGD steps per incoming batch). Equal-steps rows train each incoming batch 20 times in a
row (``TaskSequence(repeats=20)``, fresh replays each time, offered to the buffer once); the memory sweep runs ER
with 50 and 1000 memories.

Scenarios (embedded data), sized so that every method learns each task before forgetting is measured (a mean
diagonal, the accuracy on a task right after it, of 0.8 or more): ``split_digits`` (5 tasks of 2 classes, about 270
images each) and ``split_mnist1d`` (5 tasks of 2 classes, 2500 signals each) in Class-IL (one head over the classes
seen so far) and Task-IL (the task's two outputs); ``rotated_digits`` (10 rotations by 18 t degrees) and
``permuted_digits`` (10 pixel permutations, the MER paper's MNIST Permutations on the digits), 1000 images per task,
one shared 10-way head (domain-IL). Measured diagonals: 0.83-0.99 for every row. Before: a 2x100 MLP, 1000 MNIST-1D
signals (diagonal 0.76-0.79), 300 rotated images (0.46-0.55) and permuted MNIST-1D, which an MLP barely learns
(0.39-0.41): rows that measured no forgetting. The wider MLP learns a task in fewer steps (trial, seed 0: ER's
diagonal on permuted digits 0.77 at 2x100, 0.86 at 2x400). ACC is the mean accuracy over all tasks after the last,
BWT the mean change of a task's accuracy from the end of its training to the end (negative: forgetting). Mean ± sample
std over seeds ``0..n-1`` (data split, order, initialisation, buffer). ER rows record the replays' mean weight and
the share of them from the task being trained.

Prioritized ER ends below ER (Class-IL and domain-IL) because of its importance weights, not its draws:
``(n p)^-beta`` divided by the largest possible weight puts every replay at weight 1 or less (0.22-0.53 on average),
so the replay term of the loss shrinks and the old tasks lose ground to the incoming one. With ``beta=0`` (the same
draws, weights 1) it is level with ER, though it replays the current task a little more often than ER (0.40 against
0.34 of the replays on Class-IL split digits). ``benchmarks/continual_diagnosis.py`` shows it there: ER with its
replays weighted at prioritized ER's mean weight (0.53) falls from 0.66 to 0.42 ACC; prioritized ER with its weights
rescaled to mean 1 in each batch ends at 0.74.
One process, one torch thread::

    python -m benchmarks.continual --out bench_out/continual.json            # 3 seeds, about 25 min of one core
    python -m benchmarks.continual --out bench_out/continual.json --quick    # smaller tasks, 1 seed (a smoke run)

JSON: ``{"scenarios": {"split_digits/class_il": {"rows": {"er": {"acc", "acc_std", "bwt", "bwt_std", "diag",
"diag_std", "diagonal", "steps_per_batch", "seconds", "runs", "replay_weight", "replay_current_share"}, ...}}},
"settings", "env", "protocol"}``; the PNG next to it plots ACC and the diagonal per row.
"""

from __future__ import annotations

import argparse
import json
import os
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
from lightning_per.examples import ContinualClassifier, PermutedDigits, RotatedDigits, SplitDigits, SplitMNIST1D
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.experience import REPLAYED

SEQUENCES = ("split_digits", "split_mnist1d", "rotated_digits", "permuted_digits")
SCENARIOS = (
    *(f"{name}/{il}" for name in SEQUENCES[:2] for il in ("class_il", "task_il")),
    *(f"{name}/domain_il" for name in SEQUENCES[2:]),
)
REFERENCE = ("finetune", "er", "per", "per_beta0", "mer")
EQUAL = ("finetune_equal_steps", "er_equal_steps")
SWEEP = ("er_m50", "er_m1000")
ROWS = (*REFERENCE, *EQUAL, *SWEEP)

SETTINGS: dict[str, Any] = {
    "passes": 1,
    "batch_size": 10,
    "model": "ContinualClassifier: 2x400 ReLU MLP, SGD lr 0.1",
    "lr": 0.1,
    "hidden": 400,
    "memories": 200,
    "sweep_memories": [50, 200, 1000],
    "per_task": {
        "default": {"split_mnist1d": 2500, "permuted_digits": 1000, "rotated_digits": 1000},
        "quick": {"split_mnist1d": 300, "permuted_digits": 100, "rotated_digits": 100},
    },
    "er": {"replay_batch_size": 10},
    "per": {"replay_batch_size": 10, "alpha": 0.6, "beta": 0.4},
    "per_beta0": {"replay_batch_size": 10, "alpha": 0.6, "beta": 0.0},
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
    if name == "permuted_digits":
        dm = PermutedDigits(num_tasks=10, train_per_task=sizes["permuted_digits"], data_seed=seed, **common)
        return dm, {"in_features": 64, "num_tasks": 10, "classes_per_task": 10, "shared_classes": True}
    raise ValueError(f"unknown sequence {name!r}; choose from {SEQUENCES}")


def build(row: str, shape: dict[str, Any], il: str, seed: int) -> tuple[LightningModule, list[Callback]]:
    """The module (MER-wrapped for ``mer``) and the replay callbacks of ``row``, for ``il`` (class, task, domain)."""
    scenario = "task" if il == "task" else "class"  # domain-IL: one shared head over the same classes
    module = ContinualClassifier(scenario=scenario, lr=SETTINGS["lr"], hidden=SETTINGS["hidden"], **shape)  # type: ignore[arg-type]
    if row.startswith("finetune"):
        return module, []
    if row == "mer":
        return MER(module, capacity=SETTINGS["memories"], seed=seed, **SETTINGS["mer"]), []
    memories = int(row.removeprefix("er_m")) if row.startswith("er_m") else SETTINGS["memories"]
    if row.startswith("per"):
        per = SETTINGS[row]
        buffer: ReplayBuffer = PrioritizedReplayBuffer(memories, per["alpha"], per["beta"], seed=seed)
        replay = ExperienceReplay(buffer, replay_batch_size=per["replay_batch_size"])
    else:
        replay = ExperienceReplay(ReservoirBuffer(memories, seed=seed), **SETTINGS["er"])
    return module, [replay, ReplayStats()]


class ReplayStats(Callback):
    """The replays' mean weight and share from the current task (it runs after ``ExperienceReplay`` joins them)."""

    def __init__(self) -> None:
        self.weight_sum, self.current, self.count = 0.0, 0, 0

    def on_train_batch_start(self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        replayed = batch.index == REPLAYED
        if bool(replayed.any()):
            task = batch.data[2]
            self.weight_sum += float(batch.weight[replayed].sum())
            self.current += int((task[replayed] == task[~replayed].max()).sum())
            self.count += int(replayed.sum())

    def summary(self) -> dict[str, float | None]:
        """``replay_weight`` (mean weight) and ``replay_current_share``; ``None`` without replays."""
        n = self.count or None
        return {"replay_weight": n and self.weight_sum / n, "replay_current_share": n and self.current / n}


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
    stats = next((c.summary() for c in callbacks if isinstance(c, ReplayStats)), {})
    out = dict(stats, key=key, row=row, seed=seed, acc=matrix.acc, bwt=matrix.bwt, diagonal=matrix.diagonal.tolist())
    out.update(seconds=round(time.perf_counter() - start, 2), matrix=matrix.matrix.tolist())
    # optimizer steps (MER: every inner SGD step), in all and per incoming batch
    return dict(out, steps=trainer.global_step, steps_per_batch=round(trainer.global_step / max(incoming, 1), 2))


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _value(run: dict[str, Any], key: str) -> float:
    return statistics.fmean(run["diagonal"]) if key == "diag" else run[key]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation over seeds of ACC, BWT and the mean diagonal; the mean matrix."""
    out: dict[str, Any] = {}
    for key in ("acc", "bwt", "diag"):
        out[key], out[key + "_std"] = (round(v, 4) for v in _mean_std([_value(r, key) for r in runs]))
    for key in ("replay_weight", "replay_current_share"):
        if all(r.get(key) is not None for r in runs):
            out[key] = round(statistics.fmean(r[key] for r in runs), 4)
    return {
        **out,
        "diagonal": [round(v, 4) for v in torch.tensor([r["diagonal"] for r in runs]).mean(0).tolist()],
        "steps_per_batch": runs[0]["steps_per_batch"],
        "seconds": round(sum(r["seconds"] for r in runs), 1),
        "matrix_mean": torch.tensor([r["matrix"] for r in runs]).mean(0).round(decimals=4).tolist(),
        "runs": [{k: r[k] for k in ("seed", "acc", "bwt", "diagonal", "seconds", "steps")} for r in runs],
    }


LABELS = {"finetune": "fine-tune", "er": "ER", "per": "prioritized ER", "mer": "MER"}
LABELS["per_beta0"] = "prioritized ER, beta=0"
LABELS.update({f"{row}_equal_steps": f"{LABELS[row]}, equal steps" for row in ("finetune", "er")})
LABELS.update({f"er_m{m}": f"ER, {m} memories" for m in SETTINGS["sweep_memories"]})


def table(results: dict[str, Any]) -> str:
    """One markdown line per scenario and row: steps per incoming batch, ACC, BWT, the diagonal, the replays' weight."""
    lines = ["| scenario | method | steps / batch | ACC | BWT | diagonal | replay weight |", "|---" * 7 + "|"]
    for key, res in results.items():
        for row, r in res["rows"].items():
            cells = [f"{r[k]:{'+' if k == 'bwt' else ''}.3f} ± {r[k + '_std']:.3f}" for k in ("acc", "bwt", "diag")]
            weight = f"{r['replay_weight']:.2f}" if "replay_weight" in r else ""
            lines.append(f"| {key} | {LABELS[row]} | {r['steps_per_batch']:g} | " + " | ".join([*cells, weight]) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """ACC (bars, mean ± std) and the mean diagonal (dots) of every row, one panel per scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys, cols = list(results), 3
    height = -(-len(keys) // cols)
    fig, axes = plt.subplots(height, cols, figsize=(4.2 * cols, 3.0 * height), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        rows = [r for r in ROWS if r in results[key]["rows"]]
        stats, xs = [results[key]["rows"][r] for r in rows], range(len(rows))
        ax.bar(xs, [s["acc"] for s in stats], yerr=[s["acc_std"] for s in stats], alpha=0.7, label="ACC")
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
    start, cpu_start, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
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
    env["cpu_seconds_total"] = round(time.process_time() - cpu_start, 1)  # the wall time, less others' share
    env["load_average_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]  # others' processes
    payload = {"settings": SETTINGS, "mer_steps_per_batch": mer_steps_per_batch(), "quick": args.quick, "env": env}
    payload.update(scenarios=results, protocol=protocol(__doc__))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    png = args.out.with_suffix(".png")
    plot(results, png)
    print("\n" + table(results))
    print(f"\nwrote {args.out} and {png} in {total:.0f} s")


if __name__ == "__main__":
    main()
