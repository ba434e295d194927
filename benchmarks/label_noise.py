"""Label noise: where loss-based sampling spends its draws when a share of the training labels is wrong.

Protocol. MNIST-1D from the examples' generator (seed 42): 4000 training, 1000 validation and 1000 test signals
(``--train-size`` keeps the first n training signals); the examples' 1D CNN; SGD with momentum 0.9, batch 100,
no augmentation, one torch thread (``--threads``). A fraction ``--noise`` (0.3) of the training labels and of
the validation labels is flipped symmetrically: exactly ``round(noise * n)`` samples chosen at random, each label
replaced by one of the other classes drawn uniformly. The flips are fixed per benchmark seed (generator seeded
``1000 + seed`` for the training split, ``2000 + seed`` for validation), so every method of a seed trains on the
same noisy labels; the test labels stay clean.

Methods: uniform, proportional, rank and prune, each a ``PrioritizedDataModule`` with ``SamplingStrategy(name)``
at the library's defaults, scored by ``LossTracker()`` from the training forward pass (no extra passes). Every
method runs ``--epochs`` epochs; the learning rate follows a cosine from its peak to 0 over the epochs (progress =
epoch fraction, so prune's shorter epochs get the whole schedule too). Compute is the forward-backward count, 3
per trained sample: uniform, proportional and rank train the dataset size every epoch (equal compute); prune
trains fewer, and its compute is reported relative to uniform's.

Learning rate: SGD with momentum 0.9 (``--optimizer adam`` was slower to learn here). The peak rate is chosen
per method from ``--lrs`` (0.05, 0.1, 0.2, 0.4; 1.0 diverged for uniform) by the final accuracy on the noisy
validation split (a user only has noisy labels), with seed 0 only; then every method runs seeds ``0..n-1`` at
its chosen rate (seed 0's run is the selection run itself: the same seed and settings give the same run). The
test split never chooses anything; the selection table holds validation accuracies only.

Measured per run, after every epoch: clean test accuracy, noisy validation accuracy, and over the whole training
set (eval mode, with the labels trained on) the mean loss of the mislabelled and of the clean samples and the share
of mislabelled samples predicted as their wrong label (memorised). A callback reads ``batch.index`` of every
training batch and counts the draws that fell on mislabelled samples (per epoch and overall, epoch 0 left out of
the overall share since epoch 0 is always uniform), and the share of the importance weight they carried.

Reported per method over the seeds (mean ± std): final and best (over the per-epoch evaluations, an oracle)
clean test accuracy, the clean test accuracy at the epoch of the best noisy validation accuracy (early stopping a
user could do), final noisy validation accuracy, the draw share and the weighted share on mislabelled samples, the
final loss on mislabelled and clean samples, the memorised share, the compute; and against uniform of the same
seed: the test accuracy differences in points (final, early-stopped, best), the draw share ratio and the compute ratio.

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

from benchmarks.common import (
    bench_trainer,
    quiet,
    results_payload,
    save_figure,
    save_json,
    spread,
    torch_threads,
)
from benchmarks.common import parser as make_parser
from benchmarks.time_to_quality import splits
from lightning_per import LossTracker, PrioritizedBatch, PrioritizedDataModule, SamplingStrategy
from lightning_per.examples.models import Classifier
from lightning_per.strategy import StrategyName

METHODS = ("uniform", "proportional", "rank", "prune")


def flip_labels(y: Tensor, fraction: float, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: ``round(fraction * n)`` labels, each replaced by a different class drawn uniformly.

    Returns:
        ``(noisy labels, mask of the flipped samples)``.
    """
    gen = torch.Generator().manual_seed(seed)
    n = y.numel()
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=gen)[: round(fraction * n)]] = True
    offset = torch.randint(1, num_classes, (n,), generator=gen)  # never 0: always another class
    noisy = torch.where(flipped, (y + offset) % num_classes, y)
    return noisy, flipped


def noisy_splits(data: dict[str, TensorDataset], noise: float, seed: int) -> tuple[dict[str, TensorDataset], Tensor]:
    """The splits with noisy training and validation labels (clean test labels) and the training flip mask."""
    x_train, y_train = data["train"].tensors
    x_val, y_val = data["val"].tensors
    num_classes = int(torch.cat([y_train, y_val]).max()) + 1
    y_train_noisy, flipped = flip_labels(y_train, noise, num_classes, 1000 + seed)
    y_val_noisy, _ = flip_labels(y_val, noise, num_classes, 2000 + seed)
    noisy = {
        "train": TensorDataset(x_train, y_train_noisy),
        "val": TensorDataset(x_val, y_val_noisy),
        "test": data["test"],
    }
    return noisy, flipped


class CosineByEpoch(Callback):
    """Sets the learning rate to a cosine from ``lr`` to 0 over ``max_epochs`` (progress in epochs, per step)."""

    def __init__(self, lr: float, max_epochs: int) -> None:
        self.lr = lr
        self.max_epochs = max_epochs

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        progress = (trainer.current_epoch + batch_idx / max(1, trainer.num_training_batches)) / self.max_epochs
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class NoisyDraws(Callback):
    """Counts, per epoch, the trained samples and how many of them (and how much weight) fell on flipped labels."""

    def __init__(self, flipped: Tensor) -> None:
        self.flipped = flipped
        self.epochs: list[dict[str, float]] = []
        self._draws = 0
        self._noisy = 0
        self._weight = 0.0
        self._noisy_weight = 0.0

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
        self.epochs.append(
            {
                "draws": self._draws,
                "noisy_draws": self._noisy,
                "noisy_draw_share": self._noisy / max(1, self._draws),
                "noisy_weight_share": self._noisy_weight / self._weight if self._weight > 0 else math.nan,
            }
        )

    def overall(self, first_epoch: int = 1) -> dict[str, float]:
        """Shares over the epochs from ``first_epoch`` on (epoch 0 is uniform for every method)."""
        kept = self.epochs[first_epoch:] or self.epochs
        draws = sum(e["draws"] for e in kept)
        noisy = sum(e["noisy_draws"] for e in kept)
        # the weight share over epochs: each epoch's weighted share, weighted by its draws
        weighted = sum(e["noisy_weight_share"] * e["draws"] for e in kept)
        return {"noisy_draw_share": noisy / max(1, draws), "noisy_weight_share": weighted / max(1, draws)}


class EpochEval(Callback):
    """After every epoch: clean test and noisy validation accuracy, loss on the flipped and clean training samples."""

    def __init__(self, data: dict[str, TensorDataset], flipped: Tensor) -> None:
        self.data = data
        self.flipped = flipped
        self.curve: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.curve.append({"epoch": trainer.current_epoch, **evaluate(pl_module, self.data, self.flipped)})


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
    draws, curve = NoisyDraws(flipped), EpochEval(noisy, flipped)
    callbacks: list[Callback] = [CosineByEpoch(lr, args.epochs), draws, curve]
    if method != "uniform":
        callbacks.append(LossTracker())
    start = time.perf_counter()
    trainer = bench_trainer(args.accelerator, callbacks, max_epochs=args.epochs)
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    epochs = [{**point, **drawn} for point, drawn in zip(curve.curve, draws.epochs, strict=True)]
    trained = sum(e["draws"] for e in draws.epochs)
    return {
        "method": method,
        "seed": seed,
        "lr": lr,
        "noise_fraction": float(flipped.float().mean()),
        "final": curve.curve[-1],
        "best_test_acc": max(p["test_acc"] for p in curve.curve),
        "best_test_epoch": max(curve.curve, key=lambda p: p["test_acc"])["epoch"],
        # what a user can get: stop at the epoch of the best noisy validation accuracy (the first of equals)
        "early_stopped_test_acc": max(curve.curve, key=lambda p: p["val_acc"])["test_acc"],
        **draws.overall(),
        "cost": 3.0 * trained,
        "seconds": seconds,
        "epochs": epochs,
    }


def select_lr(
    method: str, args: argparse.Namespace, data: dict[str, TensorDataset]
) -> tuple[float, dict[str, Any], dict[str, float]]:
    """The peak learning rate with the best final noisy validation accuracy (seed 0), its run, and the table."""
    runs = {lr: run(method, 0, lr, args, data) for lr in args.lrs}
    table = {str(lr): r["final"]["val_acc"] for lr, r in runs.items()}
    best = max(args.lrs, key=lambda lr: runs[lr]["final"]["val_acc"])  # the first listed of equals
    print(f"{method:<13s} lr selection (noisy val acc): {table} -> {best:g}", flush=True)
    return best, runs[best], table


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-method means and spreads, and the paired figures against uniform of the same seed."""
    uniform = {r["seed"]: r for r in runs["uniform"]}
    out: dict[str, Any] = {}
    for method, results in runs.items():
        base = [uniform[r["seed"]] for r in results]
        out[method] = {
            "lr": results[0]["lr"],
            "final_test_acc": spread([r["final"]["test_acc"] for r in results]),
            "best_test_acc": spread([r["best_test_acc"] for r in results]),
            "best_test_epoch": spread([r["best_test_epoch"] for r in results]),
            "early_stopped_test_acc": spread([r["early_stopped_test_acc"] for r in results]),
            "final_val_acc_noisy": spread([r["final"]["val_acc"] for r in results]),
            "noisy_draw_share": spread([r["noisy_draw_share"] for r in results]),
            "noisy_weight_share": spread([r["noisy_weight_share"] for r in results]),
            "final_train_loss_noisy": spread([r["final"]["train_loss_noisy"] for r in results]),
            "final_train_loss_clean": spread([r["final"]["train_loss_clean"] for r in results]),
            "final_memorised": spread([r["final"]["memorised"] for r in results]),
            "cost": spread([r["cost"] for r in results]),
            "seconds": spread([r["seconds"] for r in results]),
            "final_test_acc_diff_points": spread(
                [100 * (r["final"]["test_acc"] - u["final"]["test_acc"]) for r, u in zip(results, base, strict=True)]
            ),
            "early_stopped_test_acc_diff_points": spread(
                [
                    100 * (r["early_stopped_test_acc"] - u["early_stopped_test_acc"])
                    for r, u in zip(results, base, strict=True)
                ]
            ),
            "best_test_acc_diff_points": spread(
                [100 * (r["best_test_acc"] - u["best_test_acc"]) for r, u in zip(results, base, strict=True)]
            ),
            "noisy_draw_share_ratio": spread(
                [r["noisy_draw_share"] / u["noisy_draw_share"] for r, u in zip(results, base, strict=True)]
            ),
            "compute_ratio": spread([r["cost"] / u["cost"] for r, u in zip(results, base, strict=True)]),
            "runs": {str(r["seed"]): r for r in results},
        }
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
        curves = [r["epochs"] for r in result["runs"].values()]
        for ax, (key, label) in zip(axes, panels, strict=True):
            ys = np.array([[e[key] for e in c] for c in curves])
            epochs = np.arange(1, ys.shape[1] + 1)
            (line,) = ax.plot(epochs, ys.mean(0), label=f"{method} (lr {result['lr']:g})")
            ax.fill_between(epochs, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.15)
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
    noise = next(iter(summary.values()))["runs"]["0"]["noise_fraction"]
    axes[1].axhline(noise, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    fig.suptitle(f"MNIST-1D, {noise:.0%} of training labels flipped (mean over seeds, min-max band)")
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
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 by default: the model is tiny, and with 2 threads any other load on a 2-core "
        "machine made runs 20-50x slower (OpenMP threads waiting on each other)",
    )
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    if not 0.0 <= args.noise < 1.0:
        parser.error(f"--noise must be in [0, 1), got {args.noise}")
    if not 0 < args.train_size <= 4000:
        parser.error(f"--train-size must be in [1, 4000], got {args.train_size}")
    if min(args.seeds, args.epochs, args.threads) < 1:
        parser.error("--seeds, --epochs and --threads must be >= 1")
    if "uniform" not in args.methods:
        args.methods = ["uniform", *args.methods]
    quiet()
    with torch_threads(args.threads):
        benchmark(args)


def benchmark(args: argparse.Namespace) -> None:
    """Select the learning rates, run every method and seed, report, write the JSON and the figure."""
    start = time.perf_counter()
    data = splits(args.data_dir)
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
    for results in runs.values():
        for r in results:
            print(
                f"seed {r['seed']} {r['method']:<13s} lr {r['lr']:<5g} test {r['final']['test_acc']:.4f} "
                f"(best {r['best_test_acc']:.4f})  val {r['final']['val_acc']:.4f}  "
                f"noisy draws {r['noisy_draw_share']:.3f}  loss noisy/clean {r['final']['train_loss_noisy']:.3f}/"
                f"{r['final']['train_loss_clean']:.3f}  {r['seconds']:.1f} s"
            )
    summary = summarize(runs)
    wall = time.perf_counter() - start

    def pm(stats: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
        return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"

    print(
        f"{'method':<13s} {'lr':>5s} {'final test %':>13s} {'early stop %':>13s} {'best test %':>12s} "
        f"{'Δ final pts':>12s} "
        f"{'noisy draws':>13s} {'noisy weight':>13s} {'memorised %':>12s} {'compute':>7s}"
    )
    for method, r in summary.items():
        print(
            f"{method:<13s} {r['lr']:>5g} {pm(r['final_test_acc'], 100):>13s} "
            f"{pm(r['early_stopped_test_acc'], 100):>13s} {pm(r['best_test_acc'], 100):>12s} "
            f"{pm(r['final_test_acc_diff_points']):>12s} {pm(r['noisy_draw_share'], 1, 3):>13s} "
            f"{pm(r['noisy_weight_share'], 1, 3):>13s} {pm(r['final_memorised'], 100):>12s} "
            f"{r['compute_ratio']['mean']:7.3f}"
        )
    print(f"wall time {wall:.0f} s")
    save_json(args.out, results_payload(args, __doc__, wall, methods=summary, lr_selection_val_acc=selection))
    plot(summary, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
