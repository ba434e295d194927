"""Prioritized sampling in two lines: your LightningModule, MNIST-1D, uniform sampling against ``prune``.

What it shows: the two-line change to ``training_step`` (one loss per sample; weights in, losses out), a
``PrioritizedDataModule`` around your datasets and ``LossTracker`` in the Trainer. ``prune`` (InfoBatch's rule) drops
part of the well-learnt samples from each epoch and up-weights the rest, so the same number of epochs takes fewer
steps. The script trains the same model with uniform sampling and with ``prune`` and prints validation accuracy, steps
and CPU seconds for both.

Run from the repository root (needs the ``examples`` extra: ``pip install -e ".[examples]"``)::

    python examples/prioritized_sampling.py           # 4000 signals, 30 epochs: well under a minute on a laptop
    python examples/prioritized_sampling.py --fast    # a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

from lightning_per import LossTracker, PrioritizedDataModule, SamplingStrategy, weighted_mean


# --8<-- [start:data]
def make_data(num_signals: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-1D (Greydanus 2020), generated offline: 40-sample 1D signals of 10 digit classes; 80% train, 20% val."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_signals, 0.8, seed
    state = np.random.get_state()  # the generator reseeds NumPy's global random state: keep the caller's
    data = make_dataset(args)
    np.random.set_state(state)
    train = TensorDataset(torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"]))
    val = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return train, val


# --8<-- [end:data]


# --8<-- [start:module]
class MyLightningModule(LightningModule):
    """Your module as it is: a small 1D CNN trained with SGD, one mean loss per batch."""

    def __init__(self, width: int = 32, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 40)),  # (batch, 40) signals -> (batch, 1 channel, 40)
            nn.Conv1d(1, width, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(width * 5, 10),  # length 40 -> 19 -> 10 -> 5
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


# --8<-- [end:module]


# --8<-- [start:two-lines]
class MyModel(MyLightningModule):
    """The same module with the two-line change to ``training_step``."""

    def training_step(self, batch, batch_idx):
        x, y = batch  # dict samples: batch["x"]
        losses = F.cross_entropy(self(x), y, reduction="none")  # 1: one loss per sample
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}  # 2: weights in, losses out


# --8<-- [end:two-lines]


# --8<-- [start:fit]
def fit(strategy: str, train: TensorDataset, val: TensorDataset, epochs: int, seed: int = 0) -> dict[str, float]:
    """Train ``MyModel`` with one sampling strategy; return its validation accuracy, steps and seconds."""
    seed_everything(seed, verbose=False)
    dm = PrioritizedDataModule(train, val, batch_size=128, strategy=SamplingStrategy(strategy))
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[LossTracker()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.process_time()  # CPU seconds: comparable between runs, even on a busy machine
    trainer.fit(MyModel(), datamodule=dm)
    return {
        "val_acc": float(trainer.callback_metrics["val_acc"]),
        "steps": trainer.global_step,
        "seconds": time.process_time() - start,
    }


# --8<-- [end:fit]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train with uniform sampling and with ``prune``, print a table, and return the results by strategy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=4000, help="MNIST-1D signals (80%% train, 20%% validation)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--fast", action="store_true", help="600 signals and 4 epochs: runs in seconds")
    args = parser.parse_args(argv)
    if args.fast:
        args.signals, args.epochs = 600, 4
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    train, val = make_data(args.signals)
    results = {name: fit(name, train, val, args.epochs) for name in ("uniform", "prune")}
    # --8<-- [start:table]
    print(f"\n{'strategy':<10} {'val acc':>8} {'steps':>6} {'CPU s':>6}")
    for name, r in results.items():
        print(f"{name:<10} {r['val_acc']:>8.1%} {r['steps']:>6} {r['seconds']:>6.1f}")
    # --8<-- [end:table]
    return results


if __name__ == "__main__":
    main()
