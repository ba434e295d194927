"""Draw the diagnostics page's figures from real runs: healthy and unhealthy ``per/`` curves on MNIST-1D.

Four short trainings of a small 1D CNN on 4000 MNIST-1D signals (SGD with momentum, a cosine learning-rate schedule
from 0.05), one CPU thread, each logging to a ``CSVLogger``:

- ``proportional`` sampling at ``alpha=1`` with ``uniform_mix=0.1`` (the defaults: healthy) and at ``alpha=3``
  without uniform mixing (unhealthy: the draws pile onto a few samples and their weights explode), 20 epochs each;
  the figure shows ``per/ess``, ``per/top10_mass``, ``per/max_weight`` and the validation accuracy by epoch;
- ``ImportanceSamplingCallback`` at ``presample=3`` (``tau_th = 2``: ``tau`` passes it and importance sampling
  switches on) and at ``presample=10`` (``tau_th = 13 / 3``: ``tau`` never reaches it, the run stays uniform),
  30 epochs each; the figure shows ``per/tau`` with each run's threshold and ``per/is_active`` by step.

Run from the repository root (about two minutes on one CPU thread; needs the ``examples`` extra)::

    python docs/figures/make_diagnostics.py

It writes ``docs/figures/diagnostics_prioritized.png`` and ``docs/figures/diagnostics_tau.png`` and prints the
values the diagnostics page quotes. ``--schedule constant`` trains at a constant learning rate of 0.05 instead and
writes ``*_constant.png``: there the healthy setting's weights, which reach ``1 / uniform_mix = 10`` as ``beta``
anneals to 1, make the last epochs unstable.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import TensorDataset

import lightning_per as lp

HERE = Path(__file__).resolve().parent


def make_data(num_signals: int = 5000, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-1D: 80% train, 20% validation."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_signals, 0.8, seed
    state = np.random.get_state()
    data = make_dataset(args)
    np.random.set_state(state)
    train = TensorDataset(torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"]))
    val = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return train, val


class Net(LightningModule):
    """A small 1D CNN; ``training_step`` returns what both callbacks read (losses, logits, targets)."""

    def __init__(self, lr: float = 0.05, width: int = 32, cosine: bool = True) -> None:
        super().__init__()
        self.lr = lr
        self.cosine = cosine
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 40)),
            nn.Conv1d(1, width, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * 5, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses, "logits": logits, "target": y}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.cosine:
            return optimizer
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def run(
    name: str, data: tuple, epochs: int, strategy, callbacks: list, out: Path, cosine: bool
) -> list[dict[str, float]]:
    """One training run; the rows of its ``metrics.csv`` (empty cells dropped)."""
    seed_everything(0, verbose=False)
    train, val = data
    dm = lp.PrioritizedDataModule(train, val, batch_size=100, strategy=strategy)
    logger = CSVLogger(out, name=name, version=0)
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        logger=logger,
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Net(cosine=cosine), datamodule=dm)
    with (Path(logger.log_dir) / "metrics.csv").open() as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


def series(rows: list[dict[str, float]], key: str, by: str = "epoch") -> tuple[list[float], list[float]]:
    """``(x, y)`` of every row that has ``key``."""
    found = [(row[by], row[key]) for row in rows if key in row]
    return [x for x, _ in found], [y for _, y in found]


def main(argv: list[str] | None = None) -> None:
    """Run the four trainings and draw both figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs=2, default=[20, 30], help="prioritized runs, importance runs")
    parser.add_argument("--out", type=Path, default=HERE, help="where the PNGs go")
    parser.add_argument(
        "--schedule", choices=["cosine", "constant"], default="cosine", help="the learning rate: a cosine to 0, or 0.05"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    data = make_data()
    cosine = args.schedule == "cosine"
    logs = Path(tempfile.mkdtemp(prefix="per-diagnostics-"))

    healthy = lp.SamplingStrategy("proportional", alpha=1.0, uniform_mix=0.1)
    unhealthy = lp.SamplingStrategy("proportional", alpha=3.0, uniform_mix=0.0)
    prioritized = {
        "alpha=1, uniform_mix=0.1 (healthy)": run(
            "healthy", data, args.epochs[0], healthy, [lp.LossTracker()], logs, cosine
        ),
        "alpha=3, uniform_mix=0 (unhealthy)": run(
            "unhealthy", data, args.epochs[0], unhealthy, [lp.LossTracker()], logs, cosine
        ),
    }
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    panels = [
        ("per/ess", "per/ess (1 = uniform)", False),
        ("per/top10_mass", "per/top10_mass (0.1 = uniform)", False),
        ("per/max_weight", "per/max_weight", True),
        ("val_acc", "validation accuracy", False),
    ]
    for ax, (key, title, log) in zip(axes.flat, panels, strict=True):
        for label, rows in prioritized.items():
            ax.plot(*series(rows, key), marker="o", markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if log:
            ax.set_yscale("log")
    axes[0, 0].legend()
    fig.suptitle("Proportional sampling on MNIST-1D: a healthy and an unhealthy setting")
    fig.savefig(args.out / f"diagnostics_prioritized{'' if cosine else '_constant'}.png", dpi=110)

    importance = {}
    for presample in (3, 10):
        callback = lp.ImportanceSamplingCallback(presample=presample)
        rows = run(f"importance{presample}", data, args.epochs[1], "uniform", [callback], logs, cosine)
        importance[f"presample={presample}, tau_th={callback.tau_th:.2f}"] = (rows, callback.tau_th)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for i, (label, (rows, tau_th)) in enumerate(importance.items()):
        color = f"C{i}"
        axes[0].plot(*series(rows, "per/tau", "step"), color=color, label=label)
        axes[0].axhline(tau_th, color=color, linestyle="--", linewidth=1)
        axes[1].plot(*series(rows, "per/is_active", "step"), color=color, label=label)
    axes[0].set_title("per/tau (dashed: tau_th)")
    axes[1].set_title("per/is_active (share of importance steps)")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend()
    fig.suptitle("ImportanceSamplingCallback on MNIST-1D: tau passes tau_th, or never does")
    fig.savefig(args.out / f"diagnostics_tau{'' if cosine else '_constant'}.png", dpi=110)

    for label, rows in prioritized.items():
        last = {key: series(rows, key)[1] for key in ("per/ess", "per/top10_mass", "per/max_weight", "val_acc")}
        print(label, {key: (round(min(v), 4), round(max(v), 4), round(v[-1], 4)) for key, v in last.items() if v})
    for label, (rows, tau_th) in importance.items():
        steps, tau = series(rows, "per/tau", "step")
        active = series(rows, "per/is_active", "step")
        first = next((s for s, t in zip(steps, tau, strict=True) if t > tau_th), None)
        print(label, f"tau max {max(tau):.2f}, first above tau_th at step {first}, last is_active {active[1][-1]:.2f}")
    print(f"figures in {args.out}; logs in {logs}")


if __name__ == "__main__":
    main()
