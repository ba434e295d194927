"""Imbalance: every method on a long-tailed MNIST-1D training set, judged by balanced and worst-class accuracy.

Data. MNIST-1D from the examples' generator (seed 42), 40,000 signals in three parts: the first 25,000 are the pool
the training set is taken from, the next 5,000 the validation part, the last 10,000 the test part. The training set
is long-tailed: class ``c`` (0 to 9) keeps the first ``round(2000 * ratio^(-c/9))`` signals of that class in the
pool; ``--ratios`` 100 (2,000 down to 20 per class, 4,964 signals) and 10 (2,000 down to 200, 8,175). Class 0 is the
head and class 9 the tail (MNIST-1D's classes are not equally hard, so the order is fixed, not drawn). Validation and
test are balanced: the first 400 and 900 signals of each class in their parts.

Training. The examples' 1D CNN (width 32), SGD with momentum 0.9, batch 64, no augmentation, one torch thread; every
run gets 1,152,000 forward-sample units (the issue's probe's 6,000 uniform steps of 64; 77 uniform epochs at ratio
100, 47 at ratio 10); cosine learning rate over the run's compute. The ``LossTracker`` strategies anneal over the
epochs the budget pays for; prune goes on with uniform epochs until the budget is spent.

Methods (``γ = 1``: the class factor ``(n_c / mean n)^-1``, inverse class frequency). ``uniform``.
``proportional_cb``, ``rank_cb``, ``prune_cb``: ``LossTracker(class_balance=1.0)`` (the loss times the class
factor) with ``SamplingStrategy(name)`` at the library's defaults (unbiased in the end: ``beta`` anneals to 1, which
undoes the re-balancing in expectation). ``proportional_cb_biased``: the same score, ``beta=0`` (no weights: the
class-re-weighted objective). ``balanced``: class-balanced sampling from epoch 1 (``LossTracker(score=constant)``
makes every score the class factor; ``SamplingStrategy("proportional", alpha=1, beta=0, uniform_mix=0)``).
``deferred_balanced``: deferred re-sampling (Cao et al. 2019): uniform, then ``balanced`` for the last quarter of the
scheduled epochs: ``balanced`` with ``initial_uniform_epochs``, set once the run's epoch count is known from its
budget).
``importance``: ``ImportanceSamplingCallback()`` at its defaults. ``topk_reducible`` is not run by default: it lost
by more than 2 standard deviations at both ratios in the earlier runs (-33.2 ± 3.0 and -15.3 ± 2.1 balanced points;
its holdout takes a quarter of a 20-signal tail).

Learning rate: per method and ratio on the final validation balanced accuracy by the protocol of
``benchmarks/protocol`` (grid 0.025, 0.05, 0.1, extended at an edge; selection seeds 1000 and 1001; report seeds
0-2, 3-4 where close). Evaluation points (``--evals`` and the end): per-class test accuracy, balanced accuracy (the
mean of the per-class accuracies) on validation and test, the worst class's test accuracy. Per epoch: the draws of
each class.

Reported per ratio: final balanced and worst-class test accuracy and their paired differences to uniform, the
per-class test accuracy, the share of draws on the tail half of the classes, the early-stopped balanced accuracy,
time to uniform's final balanced accuracy. Goal (issue 21, ratio 100): +2 points balanced and +10 points worst-class
accuracy over tuned uniform (means of the paired differences).

    python -m benchmarks.imbalance
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import TensorDataset

from benchmarks.protocol import render
from benchmarks.protocol.cli import main as run_main
from benchmarks.protocol.data import mnist1d, per_class_mean, predict
from benchmarks.protocol.methods import RunSpec, method_parts, train_method
from benchmarks.protocol.plots import standard_figure
from benchmarks.protocol.stats import excludes_zero
from benchmarks.protocol.study import Headline, Setting, Study
from benchmarks.protocol.targets import UNIFORM_FINAL, Target
from lightning_per import LossTracker, PrioritizedBatch, SamplingStrategy

METHODS = ("uniform", "proportional_cb", "rank_cb", "prune_cb", "proportional_cb_biased", "balanced",
           "deferred_balanced", "importance", "topk_reducible")  # fmt: skip
CLASSES = 10


def class_sizes(largest: int, ratio: float) -> list[int]:
    """Sizes falling geometrically from ``largest`` to ``largest / ratio`` (``class_sizes(2000, 100)[-1]`` = 20)."""
    return [max(1, round(largest * ratio ** (-c / (CLASSES - 1)))) for c in range(CLASSES)]


def _first_per_class(y: Tensor, counts: list[int]) -> Tensor:
    chosen = []
    for c, n in enumerate(counts):
        where = (y == c).nonzero().squeeze(1)
        if where.numel() < n:
            raise ValueError(f"a part has {where.numel()} signals of class {c}, fewer than the {n} asked for")
        chosen.append(where[:n])
    return torch.cat(chosen).sort().values


@functools.lru_cache(maxsize=4)
def splits(signals: int, ratio: float, largest: int, val: int, test: int, data_dir: str | None) -> dict[str, Any]:
    """The long-tailed training set and the balanced validation and test splits (see the module docstring)."""
    x, y = mnist1d(signals, data_dir)
    pool, val_end = signals * 5 // 8, signals * 6 // 8
    bounds = {"train": (0, pool), "val": (pool, val_end), "test": (val_end, signals)}
    counts = {"train": class_sizes(largest, ratio), "val": [val] * CLASSES, "test": [test] * CLASSES}
    out = {}
    for name, (start, end) in bounds.items():
        index = start + _first_per_class(y[start:end], counts[name])
        out[name] = TensorDataset(x[index], y[index])
    return out


def constant_score(outputs: Any, batch: PrioritizedBatch) -> Tensor:
    """A score of 1 for every sample: with ``class_balance``, the score table holds the class factors alone."""
    return torch.ones(batch.index.shape[0])


def balanced_strategy() -> SamplingStrategy:
    """Draws ``p ∝`` the class factor: every class equally often, no weights (plain re-sampling)."""
    return SamplingStrategy("proportional", alpha=1.0, beta=0.0, beta_final=None, uniform_mix=0.0)


class ClassDraws(Callback):
    """Counts the trained draws of each class per epoch."""

    def __init__(self, labels: Tensor) -> None:
        self.labels = labels
        self.epochs: list[list[float]] = []
        self._draws = torch.zeros(CLASSES, dtype=torch.float64)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        y = self.labels[batch.index.cpu()]
        self._draws.index_add_(0, y, torch.ones(y.shape, dtype=torch.float64))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.epochs.append(self._draws.tolist())
        self._draws.zero_()


class Imbalance(Study):
    name = "imbalance"
    doc = __doc__
    selection_key = "val_balanced_acc"
    primary_key = "test_balanced_acc"
    early_stop = ("val_balanced_acc", "test_balanced_acc", True)
    reported = ("test_balanced_acc", "test_worst_acc", "val_balanced_acc")
    default_lrs = (0.025, 0.05, 0.1)
    default_methods = METHODS[:-1]
    all_methods = METHODS
    legend = (
        ("proportional_cb", '`SamplingStrategy("proportional")` with `LossTracker(class_balance=1.0)`'),
        ("rank_cb", '`SamplingStrategy("rank")` with `LossTracker(class_balance=1.0)`'),
        ("prune_cb", '`SamplingStrategy("prune")` with `LossTracker(class_balance=1.0)`'),
        ("proportional_cb_biased", "`proportional_cb` without weights (`beta=0, beta_final=None`)"),
        ("balanced", 'class-balanced draws from epoch 1: `SamplingStrategy("proportional", alpha=1.0, beta=0.0, '
                     "beta_final=None, uniform_mix=0.0)` with `LossTracker(score=<a constant>, class_balance=1.0)`"),
        ("deferred_balanced", "`balanced` with `initial_uniform_epochs` at three quarters of the epochs"),
    )  # fmt: skip

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--ratios", type=float, nargs="+", default=[100.0, 10.0], help="largest / smallest class")
        parser.add_argument("--signals", type=int, default=40000, help="MNIST-1D signals generated (a multiple of 80)")
        parser.add_argument("--largest", type=int, default=2000, help="training signals of the largest class")
        parser.add_argument("--val-per-class", type=int, default=400)
        parser.add_argument("--test-per-class", type=int, default=900)
        parser.add_argument("--budget", type=float, default=1152000.0, help="compute per run, forward-sample units")
        parser.add_argument("--defer-fraction", type=float, default=0.25, help="share of epochs deferred balances")

    def settings(self, args: argparse.Namespace) -> list[Setting]:
        return [Setting(f"{r:g}", f"imbalance ratio {r:g} (class sizes {class_sizes(args.largest, r)})", args.budget,
                        None, {"ratio": r}) for r in args.ratios]  # fmt: skip

    def targets(self, args: argparse.Namespace, setting: Setting) -> list[Target]:
        levels = (Target(f"val_balanced_acc>={v:g}", "val_balanced_acc", v) for v in (0.8, 0.9))
        return [*super().targets(args, setting), *levels]

    def run(
        self, args: argparse.Namespace, setting: Setting, method: str, seed: int, lr: float, budget: float
    ) -> dict[str, Any]:
        data = splits(args.signals, setting.options["ratio"], args.largest, args.val_per_class, args.test_per_class,
                      args.data_dir)  # fmt: skip
        y_train = data["train"].tensors[1]
        holdout = 0.25 if method == "topk_reducible" else 0.0
        spec = RunSpec(data["train"], 64, evals=args.evals, accelerator=args.accelerator, holdout_fraction=holdout)
        counted: list[ClassDraws] = []
        parts: tuple[SamplingStrategy, list[Callback]]
        if method.endswith("_cb") or method == "proportional_cb_biased":
            name = method.removesuffix("_cb").removesuffix("_cb_biased")
            options = {"beta": 0.0, "beta_final": None} if method.endswith("biased") else {}
            parts = (SamplingStrategy(name, **options), [LossTracker(class_balance=1.0)])  # type: ignore[arg-type]
        elif method in ("balanced", "deferred_balanced"):
            strategy = balanced_strategy() if method == "balanced" else SamplingStrategy("uniform")
            parts = (strategy, [LossTracker(score=constant_score, class_balance=1.0)])
        else:
            parts = method_parts(method, seed, spec)

        def prepare(datamodule: Any) -> tuple[Any, list[Callback]]:
            trained = datamodule.train_dataset
            counted.append(ClassDraws(y_train[torch.as_tensor(trained.indices)] if holdout else y_train))
            own: list[Callback] = [counted[0]]
            if method == "deferred_balanced":  # the run's epochs are known from its budget only now
                epochs = datamodule.schedule_epochs
                start = epochs - round(args.defer_fraction * epochs)
                datamodule.strategy = dataclasses.replace(balanced_strategy(), initial_uniform_epochs=start)

            def evaluate(module: LightningModule) -> dict[str, Any]:
                point: dict[str, Any] = {}
                for name in ("val", "test"):
                    xs, ys = data[name].tensors
                    acc = per_class_mean((predict(module, xs).argmax(1) == ys).double(), ys, CLASSES)
                    point[f"{name}_balanced_acc"] = float(acc.mean())
                    if name == "test":
                        point["test_acc_per_class"] = acc.tolist()
                        point["test_worst_acc"] = float(acc.min())
                return point

            return evaluate, own

        meter = train_method(method, seed, lr, budget, spec, prepare, parts)
        return {**meter.record(), "class_draws": counted[0].epochs}

    def extras(self, setting: Setting, method: str, runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        per_class = torch.tensor([r["curve"][-1]["test_acc_per_class"] for r in runs.values()]).mean(0)
        totals = [torch.tensor(r["class_draws"]).sum(0) for r in runs.values()]  # draws per class over the run
        tail = [float(t[CLASSES // 2 :].sum() / t.sum()) for t in totals]
        return {"test_acc_per_class": per_class.tolist(), "tail_half_draw_share": sum(tail) / len(tail)}

    def goals(self, setting: Setting, methods: dict[str, Any]) -> dict[str, Any]:
        verdicts = {}
        for m, r in methods.items():
            if m == "uniform":
                continue
            bal, worst = r["vs_uniform"]["test_balanced_acc"], r["vs_uniform"]["test_worst_acc"]
            verdicts[m] = {"met": bal["mean"] >= 0.02 and worst["mean"] >= 0.10, "balanced": bal, "worst": worst}
        return {"met": any(v["met"] for v in verdicts.values()), "methods": verdicts}

    def section(self, data: dict[str, Any], json_path: Path) -> list[str]:
        lines = [
            "### Imbalance",
            "",
            "Long-tailed MNIST-1D training sets (class 0 the head, class 9 the tail), balanced validation and test "
            "splits; 1D CNN width 32, SGD + momentum, batch 64, cosine learning rate, 1.152M forward-sample units per "
            "run. Balanced: the mean of the per-class test accuracies; worst: the lowest. "
            + render.settings_line(data),
            "",
        ]
        columns: list[render.Column] = [
            ("lr", lambda n, m: render.lr_cell(m)),
            ("seeds", lambda n, m: str(len(m["seeds"]["report"]))),
            ("balanced (%)", lambda n, m: render.ci(m["final"]["test_balanced_acc"], 100)),
            ("Δ balanced", lambda n, m: render.ci(m["vs_uniform"]["test_balanced_acc"], 100, signed=True)),
            ("worst class (%)", lambda n, m: render.ci(m["final"]["test_worst_acc"], 100)),
            ("Δ worst", lambda n, m: render.ci(m["vs_uniform"]["test_worst_acc"], 100, signed=True)),
            ("early-stopped balanced (%)", lambda n, m: render.ci(m["early_stopped"]["test_balanced_acc"], 100)),
            ("draws on classes 5-9", lambda n, m: f"{m['tail_half_draw_share']:.2f}"),
        ]

        def accuracy_of(c: int) -> render.Column:
            return f"class {c}", lambda n, m: f"{100 * m['test_acc_per_class'][c]:.1f}"

        per_class = [accuracy_of(c) for c in range(CLASSES)]
        for table in data["tables"].values():
            goal = "met" if table["goals"]["met"] else "missed"
            lines += [f"**{table['label']}**", "", *render.table(table["methods"], columns),
                      f"Goal (+2 balanced, +10 worst-class points): **{goal}**. Per-class test accuracy (%):", "",
                      *render.table(table["methods"], per_class)]  # fmt: skip
        return [*lines, *render.figure(json_path, "balanced test accuracy against seconds and compute")]

    def headlines(self, data: dict[str, Any]) -> list[Headline]:
        out = []
        for table in data["tables"].values():
            for m, r in table["methods"].items():
                if m == "uniform":
                    continue
                bal, worst = r["vs_uniform"]["test_balanced_acc"], r["vs_uniform"]["test_worst_acc"]
                figure = f"{render.ci(bal, 100, signed=True)} balanced, {render.ci(worst, 100, signed=True)} worst"
                quotable = render.quotable(r) and render.quotable(table["methods"]["uniform"])
                where = table["label"].split(" (")[0]
                out.append(Headline(m, where, f"{figure} points ([imbalance](benchmarks/imbalance.py))",
                                    excludes_zero(bal), quotable))  # fmt: skip
        return out

    def plot(self, data: dict[str, Any], path: Path) -> None:
        standard_figure(data, path, "test_balanced_acc", log=False, target=UNIFORM_FINAL, ylim=(0.6, 1.0))


STUDY = Imbalance()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: see the module docstring and ``benchmarks.protocol.cli``."""
    return run_main(STUDY, argv)


if __name__ == "__main__":
    main()
