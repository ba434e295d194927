"""Label noise: where loss-based sampling spends its draws when a share of the training labels is wrong.

Protocol. MNIST-1D from the examples' generator (seed 42): 4000 training, 1000 validation and 1000 test signals
(``--train-size`` keeps the first n training signals); the examples' 1D CNN; SGD with momentum 0.9, batch 100, no
augmentation, one torch thread. A fraction ``--noise`` (0.3) of the training and of the validation labels is flipped
(``benchmarks.protocol.data.flip_labels``: exactly ``round(noise * n)``, each to another class drawn uniformly; seeded
``1000 + seed`` for training, ``2000 + seed`` for validation, so every method of a seed sees the same noisy labels);
the test labels stay clean.

Methods: uniform, proportional, rank and prune, each a ``PrioritizedDataModule`` with ``SamplingStrategy(name)`` at
the library's defaults, scored by ``LossTracker()``. Every method runs ``--epochs`` epochs under a cosine learning
rate from its peak to 0 over the epochs (so prune's shorter epochs get the whole schedule too). Compute is 3 per
trained sample: prune trains fewer, and its compute is reported relative to uniform's.

Learning rate (this quick benchmark predates the protocol of ``benchmarks/protocol``): the peak is chosen per method
from ``--lrs`` (0.05-0.4; 1.0 diverged) by the final noisy validation accuracy (a user only has noisy labels) of
seed 0, which is then one of the seeds reported. The test split never chooses anything.

Measured after every epoch: clean test accuracy, noisy validation accuracy, over the training set (eval mode, the
labels trained on) the mean loss of the mislabelled and the clean samples and the share of mislabelled samples
predicted as their wrong label (memorised); the draws (and the importance weight) on mislabelled samples, overall
from epoch 1 on (epoch 0 is uniform).

Reported per method over the seeds (mean ± std): final, best (an oracle) and early-stopped (at the best noisy
validation accuracy) clean test accuracy, the draw and weight shares on mislabelled samples, the final losses, the
memorised share, the compute; against uniform of the same seed: the accuracy differences in points, the draw share
ratio and the compute ratio.

    python -m benchmarks.label_noise --seeds 3 --out bench_out/label_noise.json
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import Tensor
from torch.utils.data import TensorDataset

from benchmarks.common import bench_trainer, quiet, results_payload, save_figure, save_json, spread, torch_threads
from benchmarks.common import parser as make_parser
from benchmarks.protocol.data import consecutive_splits, flip_labels
from benchmarks.protocol.schedules import lr_factor
from lightning_per import LossTracker, PrioritizedBatch, PrioritizedDataModule, SamplingStrategy
from lightning_per.examples.models import Classifier
from lightning_per.strategy import StrategyName

METHODS = ("uniform", "proportional", "rank", "prune")


def noisy_splits(data: dict[str, TensorDataset], noise: float, seed: int) -> tuple[dict[str, TensorDataset], Tensor]:
    """The splits with noisy training and validation labels (clean test labels) and the training flip mask."""
    x_train, y_train = data["train"].tensors
    x_val, y_val = data["val"].tensors
    num_classes = int(torch.cat([y_train, y_val]).max()) + 1
    y_train_noisy, flipped = flip_labels(y_train, noise, num_classes, 1000 + seed)
    y_val_noisy, _ = flip_labels(y_val, noise, num_classes, 2000 + seed)
    noisy = {"train": TensorDataset(x_train, y_train_noisy), "val": TensorDataset(x_val, y_val_noisy)}
    return {**noisy, "test": data["test"]}, flipped


class CosineByEpoch(Callback):
    """Sets the learning rate to a cosine from ``lr`` to 0 over ``max_epochs`` (progress in epochs, per step)."""

    def __init__(self, lr: float, max_epochs: int) -> None:
        self.lr, self.max_epochs = lr, max_epochs

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        progress = (trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches)) / self.max_epochs
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * lr_factor("cosine", progress)


class NoisyDraws(Callback):
    """Per epoch: the trained samples and how many of them (and how much weight) fell on flipped labels; then the
    clean test and noisy validation accuracy, the loss on the flipped and clean training samples (``curve``)."""

    def __init__(self, flipped: Tensor, data: dict[str, TensorDataset]) -> None:
        self.flipped, self.data = flipped, data
        self.epochs: list[dict[str, float]] = []
        self.curve: list[dict[str, float]] = []
        self._draws, self._noisy, self._weight, self._noisy_weight = 0, 0, 0.0, 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draws, self._noisy, self._weight, self._noisy_weight = 0, 0, 0.0, 0.0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, PrioritizedBatch):
            raise TypeError(f"NoisyDraws needs PrioritizedBatch training batches, got {type(batch).__name__}.")
        hit = self.flipped[batch.index.cpu()]
        weight = batch.weight.detach().double().cpu()
        self._draws += hit.numel()
        self._noisy += int(hit.sum())
        self._weight += float(weight.sum())
        self._noisy_weight += float(weight[hit].sum())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        weight_share = self._noisy_weight / self._weight if self._weight > 0 else math.nan
        share = self._noisy / max(1, self._draws)
        self.epochs.append({"draws": self._draws, "noisy_draws": self._noisy, "noisy_draw_share": share,
                            "noisy_weight_share": weight_share})  # fmt: skip
        self.curve.append({"epoch": trainer.current_epoch, **evaluate(pl_module, self.data, self.flipped)})

    def overall(self, first_epoch: int = 1) -> dict[str, float]:
        """Shares over the epochs from ``first_epoch`` on (epoch 0 is uniform for every method)."""
        kept = self.epochs[first_epoch:] or self.epochs
        draws = sum(e["draws"] for e in kept)
        noisy = sum(e["noisy_draws"] for e in kept)
        # the weight share over epochs: each epoch's weighted share, weighted by its draws
        weighted = sum(e["noisy_weight_share"] * e["draws"] for e in kept)
        return {"noisy_draw_share": noisy / max(1, draws), "noisy_weight_share": weighted / max(1, draws)}


@torch.no_grad()
def evaluate(pl_module: LightningModule, data: dict[str, TensorDataset], flipped: Tensor) -> dict[str, float]:
    """Test and validation accuracy; training loss of flipped and clean samples and the flipped ones memorised."""
    was_training = pl_module.training
    pl_module.eval()
    point: dict[str, float] = {}
    for name, dataset in data.items():
        x, y = dataset.tensors
        logits = torch.cat([pl_module(chunk.to(pl_module.device)).cpu() for chunk in x.split(2000)])
        if name == "train":
            losses = F.cross_entropy(logits, y, reduction="none")
            point["train_loss_noisy"] = float(losses[flipped].mean()) if flipped.any() else math.nan
            point["train_loss_clean"] = float(losses[~flipped].mean())
            hits = logits.argmax(1) == y
            point["memorised"] = float(hits[flipped].float().mean()) if flipped.any() else math.nan
            point["train_acc_clean"] = float(hits[~flipped].float().mean())
        else:
            point[f"{name}_acc"] = float((logits.argmax(1) == y).float().mean())
    pl_module.train(was_training)
    return point


def run(method: str, seed: int, lr: float, args: argparse.Namespace, data: dict[str, TensorDataset]) -> dict[str, Any]:
    """One training run of ``method`` at peak learning rate ``lr`` on seed ``seed``'s noisy labels."""
    noisy, flipped = noisy_splits(data, args.noise, seed)
    seed_everything(seed, workers=True, verbose=False)
    model = Classifier(optimizer=args.optimizer, lr=lr, momentum=args.momentum, schedule="none")
    datamodule = PrioritizedDataModule(
        noisy["train"], batch_size=args.batch_size, strategy=SamplingStrategy(cast(StrategyName, method)), seed=seed
    )
    draws = NoisyDraws(flipped, noisy)
    curve = draws.curve
    callbacks: list[Callback] = [CosineByEpoch(lr, args.epochs), draws]
    if method != "uniform":
        callbacks.append(LossTracker())
    start = time.perf_counter()
    trainer = bench_trainer(args.accelerator, callbacks, max_epochs=args.epochs)
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    epochs = [{**p, **d} for p, d in zip(curve, draws.epochs, strict=True)]
    return {
        **{"method": method, "seed": seed, "lr": lr, "noise_fraction": float(flipped.float().mean())},
        "final": curve[-1],
        "best_test_acc": max(p["test_acc"] for p in curve),
        "best_test_epoch": max(curve, key=lambda p: p["test_acc"])["epoch"],
        "early_stopped_test_acc": max(curve, key=lambda p: p["val_acc"])["test_acc"],
        **draws.overall(),
        **{"cost": 3.0 * sum(e["draws"] for e in epochs), "seconds": seconds, "epochs": epochs},
    }


def select_lr(method: str, args: argparse.Namespace, data: dict[str, TensorDataset]) -> tuple[float, Any, Any]:
    """The peak learning rate with the best final noisy validation accuracy (seed 0), its run, and the table."""
    runs = {lr: run(method, 0, lr, args, data) for lr in args.lrs}
    table = {str(lr): r["final"]["val_acc"] for lr, r in runs.items()}
    best = max(args.lrs, key=lambda lr: runs[lr]["final"]["val_acc"])  # the first listed of equals
    return best, runs[best], table


FIGURES = {  # summarised per method: name -> the figure of one run
    "final_test_acc": lambda r: r["final"]["test_acc"],
    "best_test_acc": lambda r: r["best_test_acc"],
    "best_test_epoch": lambda r: r["best_test_epoch"],
    "early_stopped_test_acc": lambda r: r["early_stopped_test_acc"],
    "final_val_acc_noisy": lambda r: r["final"]["val_acc"],
    "noisy_draw_share": lambda r: r["noisy_draw_share"],
    "noisy_weight_share": lambda r: r["noisy_weight_share"],
    "final_train_loss_noisy": lambda r: r["final"]["train_loss_noisy"],
    "final_train_loss_clean": lambda r: r["final"]["train_loss_clean"],
    "final_memorised": lambda r: r["final"]["memorised"],
    "cost": lambda r: r["cost"],
    "seconds": lambda r: r["seconds"],
}
PAIRED = {  # against uniform of the same seed: name -> (figure, difference in points or ratio)
    "final_test_acc_diff_points": ("final_test_acc", "points"),
    "early_stopped_test_acc_diff_points": ("early_stopped_test_acc", "points"),
    "best_test_acc_diff_points": ("best_test_acc", "points"),
    "noisy_draw_share_ratio": ("noisy_draw_share", "ratio"),
    "compute_ratio": ("cost", "ratio"),
}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-method means and spreads, and the paired figures against uniform of the same seed."""
    uniform = {r["seed"]: r for r in runs["uniform"]}
    out: dict[str, Any] = {}
    for method, results in runs.items():
        pairs = [(r, uniform[r["seed"]]) for r in results]
        out[method] = {"lr": results[0]["lr"], **{k: spread([f(r) for r in results]) for k, f in FIGURES.items()}}
        for name, (key, kind) in PAIRED.items():
            f = FIGURES[key]
            out[method][name] = spread([100 * (f(r) - f(u)) if kind == "points" else f(r) / f(u) for r, u in pairs])
        out[method]["runs"] = {str(r["seed"]): r for r in results}
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    """Per epoch, mean over seeds: clean test accuracy, share of draws on mislabelled samples, loss on them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = (
        ("test_acc", "clean test accuracy"),
        ("noisy_draw_share", "share of draws on mislabelled samples"),
        ("train_loss_noisy", "training loss on mislabelled samples"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.3))
    for method, result in summary.items():
        for ax, (key, label) in zip(axes, panels, strict=True):
            ys = np.array([[e[key] for e in r["epochs"]] for r in result["runs"].values()])
            ax.plot(np.arange(1, ys.shape[1] + 1), ys.mean(0), label=f"{method} (lr {result['lr']:g})")
            ax.set(xlabel="epoch", ylabel=label)
    noise = next(iter(summary.values()))["runs"]["0"]["noise_fraction"]
    axes[1].axhline(noise, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    fig.suptitle(f"MNIST-1D, {noise:.0%} of training labels flipped (mean over seeds)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/label_noise.json"))
    parser.add_argument("--noise", type=float, default=0.3, help="share of training and validation labels flipped")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.4], help="peak learning rates")
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--train-size", type=int, default=4000, help="the first n of the 4000 training signals")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu, ... (one device)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (2 on a busy 2-core machine: "
                        "20-50x slower)")  # fmt: skip
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if not 0.0 <= args.noise < 1.0 or not 0 < args.train_size <= 4000 or min(args.seeds, args.epochs, args.threads) < 1:
        parser.error("--noise must be in [0, 1), --train-size in [1, 4000], --seeds, --epochs and --threads >= 1")
    if "uniform" not in args.methods:
        args.methods = ["uniform", *args.methods]
    quiet()
    with torch_threads(args.threads):
        benchmark(args)


def benchmark(args: argparse.Namespace) -> None:
    """Select the learning rates, run every method and seed, report, write the JSON and the figure."""
    start = time.perf_counter()
    data = consecutive_splits({"train": 4000, "val": 1000, "test": 1000}, args.data_dir)
    x, y = data["train"].tensors
    data["train"] = TensorDataset(x[: args.train_size], y[: args.train_size])
    chosen: dict[str, float] = {}
    selection: dict[str, dict[str, float]] = {}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    for method in args.methods:
        chosen[method], seed0, selection[method] = select_lr(method, args, data)
        runs[method].append(seed0)
    for seed in range(1, args.seeds):  # seeds outermost: a slow patch of the machine hits every method alike
        for method in args.methods:
            runs[method].append(run(method, seed, chosen[method], args, data))
    summary = summarize(runs)
    wall = time.perf_counter() - start
    for method, r in summary.items():
        diff = r["final_test_acc_diff_points"]["mean"]
        print(
            f"{method:<13s} lr {r['lr']:<5g} final test {100 * r['final_test_acc']['mean']:.1f}% ({diff:+.1f} points)"
        )
    save_json(args.out, results_payload(args, __doc__, wall, methods=summary, lr_selection_val_acc=selection))
    plot(summary, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
