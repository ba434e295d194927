"""Long training: importance sampling in the regime of Katharopoulos & Fleuret, at equal compute and equal wall-clock.

Protocol. MNIST-1D from the examples' generator (seed 42): 4000 training, 1000 validation and 1000 test signals,
no augmentation; the examples' 1D CNN at ``--width`` 64 channels (large enough to fit the training set); SGD with
momentum 0.9, batch 100; the learning rate follows a cosine from its peak to 0 over the budget. The importance
callback runs at its defaults (``presample`` 3, so ``B = 3b`` and ``tau_th = (B + 3b) / 3b = 2``, ``a_tau`` 0.9, the
cross-entropy gradient-norm bound), as the paper's experiments (``2 < B / b < 6``).

Budgets. For each seed: uniform training gets the compute of ``--epochs`` uniform epochs (forward-sample units:
3 per trained sample), and its training wall-clock (evaluations excluded) is measured; importance sampling then
runs twice, once with the same compute (an importance step costs ``B + 3b``: the presample forward is charged) and
once with the same wall-clock as uniform (``importance_clock``: the budget is uniform's training seconds on this
device, whatever the steps cost). The ratio of a no-grad forward over ``B`` points to a training step over ``b``
points is measured on the device (``cost_ratio``): the compute model says ``B / 3b`` = 1, and on a device that ``b``
points do not saturate the forward is cheaper, which is where the paper's wall-clock claim can hold.

Learning rate: the peak is chosen per method from ``--lrs`` by the final validation accuracy of seed 0 at equal
compute (``importance_clock`` uses importance's); the test split is only reported. Evaluation points: ``--evals``
per run, and the end: training loss over the whole training set (eval mode), validation and test accuracy.

Reported over ``--seeds`` seeds (mean ± std): final training loss and test error, their ratios to uniform's of
the same seed, the share of importance steps, ``tau`` at the end, the steps and the training seconds. The paper's
goal: at most half of uniform's training loss at equal wall-clock, with a test error no worse.

    python -m benchmarks.long_training --seeds 2 --out bench_out/long_training.json
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.utils.data import TensorDataset

from benchmarks.common import bench_trainer, protocol, quiet, save_figure, save_json, spread
from benchmarks.common import parser as make_parser
from benchmarks.gpu_check import cost_ratio
from benchmarks.time_to_quality import BudgetRun, splits
from lightning_per import ImportanceSamplingCallback, PrioritizedDataModule
from lightning_per.examples.models import Classifier

METHODS = ("uniform", "importance", "importance_clock")


class ClockRun(BudgetRun):
    """A :class:`BudgetRun` whose budget, schedule and evaluation points are training seconds instead of cost."""

    def __init__(self, budget_s: float, lr: float, evals: int, data: dict[str, TensorDataset]) -> None:
        super().__init__(math.inf, 10**9, lr, evals, data)  # no cost budget, no cost-based evaluation points
        self.budget_s = budget_s
        self.clock_every = budget_s / evals
        self._next_clock = self.clock_every

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        progress = min(1.0, self.train_seconds / self.budget_s)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * progress))

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.train_seconds >= self._next_clock:
            self._evaluate(pl_module)
            self._next_clock = self.train_seconds + self.clock_every
            self._since = time.perf_counter()  # the evaluation is not training time
        if self.train_seconds >= self.budget_s:
            trainer.should_stop = True


def run(method: str, seed: int, lr: float, args: Any, data: dict[str, TensorDataset], budget_s: float) -> BudgetRun:
    """One run: ``method`` at peak ``lr``; uniform and importance by compute, ``importance_clock`` by ``budget_s``."""
    seed_everything(seed, workers=True, verbose=False)
    model = Classifier(width=args.width, optimizer="sgd", lr=lr, momentum=0.9, schedule="none")
    datamodule = PrioritizedDataModule(data["train"], batch_size=args.batch_size, strategy="uniform", seed=seed)
    epochs = args.epochs
    budget: BudgetRun
    if method == "importance_clock":
        budget = ClockRun(budget_s, lr, args.evals, data)
        epochs = 100 * args.epochs  # the clock stops it
    else:
        budget = BudgetRun(3.0 * len(data["train"]) * epochs, epochs, lr, args.evals, data)
    callbacks: list[Callback] = [budget]
    if method != "uniform":
        callbacks.append(ImportanceSamplingCallback(presample=args.presample, seed=seed))
    trainer = bench_trainer(args.accelerator, callbacks, max_epochs=epochs)
    trainer.fit(model, datamodule=datamodule)
    return budget


def summarize(runs: dict[str, list[BudgetRun]], lrs: dict[str, float], seeds: list[int]) -> dict[str, Any]:
    """Per-method finals and ratios to uniform of the same seed."""
    out: dict[str, Any] = {}
    uniform = [r.curve[-1] for r in runs["uniform"]]
    for method, results in runs.items():
        finals = [r.curve[-1] for r in results]
        out[method] = {
            "lr": lrs[method],
            "final_train_loss": spread([f["train_loss"] for f in finals]),
            "final_test_error": spread([1 - f["test_acc"] for f in finals]),
            "train_loss_ratio_to_uniform": spread(
                [f["train_loss"] / u["train_loss"] for f, u in zip(finals, uniform, strict=True)]
            ),
            "test_error_ratio_to_uniform": spread(
                [(1 - f["test_acc"]) / max(1e-9, 1 - u["test_acc"]) for f, u in zip(finals, uniform, strict=True)]
            ),
            "importance_fraction": spread([r.importance_steps / max(1, r.steps) for r in results]),
            "tau_final": spread([f.get("tau", 0.0) for f in finals]),
            "steps": spread([float(r.steps) for r in results]),
            "train_seconds": spread([f["seconds"] for f in finals]),
            "cost": spread([f["cost"] for f in finals]),
            "curves": {str(s): r.curve for s, r in zip(seeds, results, strict=True)},
        }
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """Training loss against training seconds and against cost, per method (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, result in summary.items():
        curves = list(result["curves"].values())
        for ax, xkey in zip(axes, ("seconds", "cost"), strict=True):
            grid = np.linspace(0, min(c[-1][xkey] for c in curves), 60)
            ys = np.stack([np.interp(grid, [p[xkey] for p in c], [p["train_loss"] for p in c]) for c in curves])
            ax.plot(grid, ys.mean(0), label=method)
            ax.set_yscale("log")
            ax.set_xlabel("training seconds" if xkey == "seconds" else "cost (forward = 1, backward = 2)")
            ax.set_ylabel("training loss (whole training set)")
    axes[0].legend()
    fig.suptitle("Long training, MNIST-1D without augmentation (mean over seeds)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/long_training.json"))
    parser.add_argument("--epochs", type=int, default=100, help="the budget: the compute of this many uniform epochs")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--evals", type=int, default=20)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    quiet()
    data = splits(args.data_dir)
    device = "cuda" if args.accelerator in ("cuda", "gpu") else "cpu"
    ratio = cost_ratio(device, args.width, args.batch_size, args.presample, 50)
    print(f"cost ratio on {device}: presample forward / training step = {ratio['ratio_measured']:.3f}", flush=True)
    lrs: dict[str, float] = {}
    selection: dict[str, dict[str, float]] = {}
    for method in ("uniform", "importance"):  # seed 0 at equal compute, by validation accuracy
        scores = {lr: run(method, 0, lr, args, data, math.inf).curve[-1]["val_acc"] for lr in args.lrs}
        selection[method] = {str(lr): acc for lr, acc in scores.items()}
        lrs[method] = max(scores, key=lambda lr: scores[lr])
    lrs["importance_clock"] = lrs["importance"]
    seeds = list(range(args.seeds))
    runs: dict[str, list[BudgetRun]] = {m: [] for m in METHODS}
    start = time.perf_counter()
    for seed in seeds:
        uniform = run("uniform", seed, lrs["uniform"], args, data, math.inf)
        runs["uniform"].append(uniform)
        clock = uniform.train_seconds
        runs["importance"].append(run("importance", seed, lrs["importance"], args, data, math.inf))
        runs["importance_clock"].append(run("importance_clock", seed, lrs["importance"], args, data, clock))
        for method in METHODS:
            end = runs[method][-1].curve[-1]
            print(
                f"seed {seed} {method:<17s} {end['seconds']:6.1f} s  cost {end['cost'] / 1e6:6.2f}M  "
                f"train loss {end['train_loss']:.2e}  test error {1 - end['test_acc']:.4f}",
                flush=True,
            )
    summary = summarize(runs, lrs, seeds)
    payload = {
        "methods": summary,
        "cost_ratio": ratio,
        "lr_selection_val_acc": selection,
        "settings": {**vars(args), "out": str(args.out)},
        "wall_seconds": time.perf_counter() - start,
        "protocol": protocol(__doc__),
    }
    save_json(args.out, payload)
    plot(summary, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
