"""Time to quality: every sampling method against uniform training at equal budgets (the paper's protocol).

Protocol. MNIST-1D from the examples' generator (seed 42): 4000 training, 1000 validation and 1000 test signals;
the examples' 1D CNN; SGD with momentum 0.9, batch 100; random augmentations of the MNIST-1D generator's own
kinds (circular shift, scale, shear, i.i.d. noise), drawn per sample in every batch (presamples included).

Budget: every method gets the same compute, in machine-independent cost: a forward pass counts 1 per sample and a
backward 2 per sample (a training step on ``b`` points costs ``3b``; an importance step adds the ``B`` scoring
forwards). The budget is the cost of ``max_epochs`` uniform epochs, ``max_epochs`` being the number of uniform
epochs that fit in ``--budget-s`` seconds of training on this machine (measured by a short calibration run at the
start, its first epoch excluded). A method trains until it has spent the budget or run ``max_epochs`` epochs,
whichever comes first, so a method with cheaper epochs (prune) may stop early and save compute. Budgets in cost,
not in seconds, because the methods run one after another and this machine's speed drifts by 10-25% within
minutes: a wall-clock budget gave whichever method ran in a fast spell more steps. Training wall-clock
(evaluations excluded) is measured and reported all the same.
The learning rate follows a cosine from ``--lr`` to 0 over the run's progress = max(cost fraction, epoch
fraction). ``--lr`` (0.1) was chosen on the validation split with uniform sampling (see ``--help``) and is used
for every method, which favours uniform if anything; the test split is only reported.

Evaluation points: every ``budget / 20`` of cost and at the end, the training loss over the whole training set
(no augmentation, eval mode) and the test and validation accuracy.

Reported per method over ``--seeds`` seeds (mean and spread): final training loss, final test accuracy, the cost
and the training seconds at which the method first reached uniform's final test accuracy of the same seed (null
if it never did in some seed), and that cost over the cost at which uniform itself first reached it.

    python -m benchmarks.time_to_quality --budget-s 25 --seeds 3 --out bench_out/time_to_quality.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, seed_everything
from torch.utils.data import TensorDataset

from benchmarks.common import bench_trainer, protocol, quiet, save_figure, save_json, spread
from benchmarks.common import parser as make_parser
from benchmarks.protocol.budget import ComputeBudget, epochs_budget
from benchmarks.protocol.data import Augment, consecutive_splits, predict
from benchmarks.protocol.plots import seed_curve
from lightning_per import ImportanceSamplingCallback, LossTracker, PrioritizedDataModule, SamplingStrategy
from lightning_per.examples.models import Classifier
from lightning_per.score import ScoreName

METHODS = ("uniform", "proportional", "rank", "prune", "importance", "importance_loss")


def splits(data_dir: str | None) -> dict[str, TensorDataset]:
    """The examples' MNIST-1D splits: 4000 train, 1000 validation, 1000 test (generator seed 42)."""
    return consecutive_splits({"train": 4000, "val": 1000, "test": 1000}, data_dir)


def run(
    method: str,
    seed: int,
    args: argparse.Namespace,
    data: dict[str, TensorDataset],
    max_epochs: int,
    options: dict[str, Any] | None = None,
    extra_callbacks: list[Callback] | None = None,
) -> Any:
    """One budgeted training run; returns its ``ComputeBudget`` (curve, cost, seconds, selected steps).

    ``options`` (for the selection of defaults) go to ``SamplingStrategy`` or, for the importance methods, to
    ``ImportanceSamplingCallback``; by default every method runs with the library's defaults. ``extra_callbacks``
    run after the budget's (the gradient-variance probes).
    """
    seed_everything(seed, workers=True, verbose=False)
    model = Classifier(optimizer="sgd", lr=args.lr, momentum=getattr(args, "momentum", 0.9), schedule="none")
    name = {"importance": "uniform", "importance_loss": "uniform"}.get(method, method)
    options = dict(options or {})
    is_importance = method.startswith("importance")
    strategy = SamplingStrategy(name, **({} if is_importance else options))  # type: ignore[arg-type]
    datamodule = PrioritizedDataModule(
        data["train"], batch_size=args.batch_size, strategy=strategy, seed=seed, collate_fn=Augment()
    )
    meter: list[ComputeBudget] = []

    def evaluate(module: LightningModule) -> dict[str, Any]:
        point: dict[str, Any] = {}
        taus = [c.tau for c in module.trainer.callbacks if hasattr(c, "tau")]  # type: ignore[attr-defined]
        if taus:
            point.update(tau=taus[0], importance_fraction=meter[0].selected_steps / max(1, meter[0].steps))
        for name, dataset in data.items():
            x, y = dataset.tensors
            logits = predict(module, x)
            if name == "train":
                point["train_loss"] = float(F.cross_entropy(logits, y))
            point[f"{name}_acc"] = float((logits.argmax(1) == y).float().mean())
        return point

    budget_cost = epochs_budget(len(data["train"]), max_epochs)  # max_epochs uniform epochs
    charge = not getattr(args, "free_scoring", False)
    budget = ComputeBudget(budget_cost, args.lr, "cosine", evaluate, args.evals, max_epochs, charge_scoring=charge)
    meter.append(budget)
    callbacks: list[Callback] = [budget, *(extra_callbacks or [])]
    if method in ("proportional", "rank", "prune"):
        callbacks.append(LossTracker())
    elif is_importance:
        score: ScoreName = "loss" if method == "importance_loss" else "grad_norm"
        settings: dict[str, Any] = {"presample": args.presample, "score": score, "seed": seed, **options}
        callbacks.append(ImportanceSamplingCallback(**settings))
    trainer = bench_trainer(args.accelerator, callbacks, max_epochs=max_epochs)
    trainer.fit(model, datamodule=datamodule)
    return budget


def calibrate(args: argparse.Namespace, data: dict[str, TensorDataset]) -> int:
    """The number of uniform epochs that fit in the budget, from the speed of a short uniform run.

    The first epoch (warm-up: first calls, allocations) is left out of the speed.
    """
    epochs = 6
    start = time.perf_counter()
    ends = run("uniform", 0, args, data, epochs).epoch_seconds
    seconds_per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1)
    print(f"calibration: {seconds_per_epoch:.2f} s per uniform epoch ({time.perf_counter() - start:.1f} s)")
    return max(1, round(args.budget_s / seconds_per_epoch))


def first_reach(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluation point with test accuracy >= target."""
    return next((p for p in curve if p["test_acc"] >= target - 1e-9), None)


def summarize(runs: dict[str, list[Any]], seeds: list[int]) -> dict[str, Any]:
    """Per-method summary against uniform of the same seed."""
    out: dict[str, Any] = {}
    uniform_final = [r.curve[-1] for r in runs["uniform"]]
    # the cost at which uniform itself first reached its final accuracy (not its total cost, which would credit
    # every method, uniform included, with the evaluations uniform spent after reaching it)
    uniform_reach = [first_reach(r.curve, u["test_acc"]) for r, u in zip(runs["uniform"], uniform_final, strict=True)]
    for method, results in runs.items():
        finals = [r.curve[-1] for r in results]
        reached = [first_reach(r.curve, u["test_acc"]) for r, u in zip(results, uniform_final, strict=True)]
        loss_ratio = [f["train_loss"] / u["train_loss"] for f, u in zip(finals, uniform_final, strict=True)]
        done = all(p is not None for p in reached)
        # undefined where uniform's final accuracy was already there at the start (a run that ended at chance)
        cost_ratio = [
            p["cost"] / u["cost"] for p, u in zip(reached, uniform_reach, strict=True) if p and u and u["cost"]
        ]
        out[method] = {
            "final_train_loss": spread([f["train_loss"] for f in finals]),
            "final_test_acc": spread([f["test_acc"] for f in finals]),
            "final_val_acc": spread([f["val_acc"] for f in finals]),
            "train_loss_ratio_to_uniform": spread(loss_ratio),
            "cost_to_uniform_acc": spread([p["cost"] for p in reached if p]) if done else None,
            "seconds_to_uniform_acc": spread([p["seconds"] for p in reached if p]) if done else None,
            "cost_to_uniform_acc_ratio": spread(cost_ratio) if done and cost_ratio else None,
            "reached_uniform_acc": sum(p is not None for p in reached),
            "total_cost": spread([f["cost"] for f in finals]),
            "importance_fraction": spread([r.selected_steps / max(1, r.steps) for r in results]),
            "train_seconds": spread([f["seconds"] for f in finals]),
            "curves": {str(s): r.curve for s, r in zip(seeds, results, strict=True)},
        }
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """Training loss and test accuracy against time and against cost; the mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for method, result in summary.items():
        runs = {seed: {"curve": curve} for seed, curve in result["curves"].items()}
        for col, x in enumerate(("seconds", "cost")):
            for row, y in enumerate(("train_loss", "test_acc")):
                axes[row][col].plot(*seed_curve(runs, x, y, how="mean"), label=method)
                xlabel = "training seconds" if x == "seconds" else "cost (forward = 1, backward = 2)"
                axes[row][col].set(xlabel=xlabel, ylabel=y, yscale="log" if y == "train_loss" else "linear")
    axes[0][0].legend()
    fig.suptitle("MNIST-1D, equal training budgets (mean over seeds)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/time_to_quality.json"))
    # fmt: off
    parser.add_argument("--budget-s", type=float, default=25.0, help="budget: the uniform epochs of this many seconds")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--lr", type=float, default=0.1, help="SGD peak learning rate. 0.1 was chosen on the "
                        "validation split: uniform, seed 0, 25 s, lr 0.02 / 0.05 / 0.1 / 0.2 gave 93.3 / 96.5 / 96.9 / "
                        "96.2% validation accuracy")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu, ... (one device)")
    parser.add_argument("--evals", type=int, default=20, help="evaluation points per run")
    parser.add_argument("--free-scoring", action="store_true", help="diagnostic: charge an importance step like a "
                        "uniform one (equal steps instead of equal compute)")
    # fmt: on
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if "uniform" not in args.methods:
        args.methods = ["uniform", *args.methods]
    quiet()
    data = splits(args.data_dir)
    max_epochs = calibrate(args, data)
    print(f"max_epochs = {max_epochs} (uniform epochs in {args.budget_s:g} s); budget = their cost")
    seeds = list(range(args.seeds))
    runs: dict[str, list[Any]] = {m: [] for m in args.methods}
    for seed in seeds:  # seeds outermost: a slow patch of the machine hits every method alike
        for method in args.methods:
            result = run(method, seed, args, data, max_epochs)
            runs[method].append(result)
            end = result.curve[-1]
            print(
                f"seed {seed} {method:<16s} {end['seconds']:5.1f} s  train loss {end['train_loss']:.4f}  "
                f"test acc {end['test_acc']:.4f}  val acc {end['val_acc']:.4f}",
                flush=True,
            )
    summary = summarize(runs, seeds)
    payload = {
        "methods": summary,
        "settings": {**vars(args), "out": str(args.out), "max_epochs": max_epochs},
        "protocol": protocol(__doc__),
    }
    save_json(args.out, payload)
    plot(summary, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
