"""Noisy labels with RHO-LOSS: train on the points that are learnable, worth learning and not yet learnt.

What it shows: 30% of the training labels are flipped at random; uniform training at a constant learning rate fits
them, and its clean test accuracy falls from its peak. RHO-LOSS (Mindermann et al., ICML 2022) holds out a quarter of
the training set (``PrioritizedDataModule(holdout_fraction=0.25)``), trains a model on it once (``IrreducibleLoss``),
and each step trains on the top tenth of a 10x larger presample by reducible loss, the current loss minus that
model's loss (``TopKSelection(presample=10)``). A mislabelled point has a high loss under both models and is mostly
skipped. Both runs make the same number of steps; a RHO-LOSS step also scores its presample, so the table gives each
run's compute in forward-sample units (a forward pass 1 per sample, forward and backward 3, the holdout model's
training and scoring pass included), the share of trained points that were mislabelled, and the final and best clean
test accuracy. RHO-LOSS is only as good as its holdout model, trained here on noisy labels too: it halves the share
of mislabelled points trained on, but also skips clean points that model gets wrong.

Run from the repository root (needs the ``examples`` extra)::

    python examples/noisy_labels.py            # 10,000 signals, 40 epochs of steps: about two minutes on a laptop CPU
    python examples/noisy_labels.py --fast     # a few seconds (what CI runs)
    python examples/noisy_labels.py --noise 0.1
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import Subset, TensorDataset

from lightning_per import IrreducibleLoss, PrioritizedDataModule, TopKSelection, weighted_mean


# --8<-- [start:data]
def make_data(num_signals: int, noise: float, seed: int = 0) -> tuple[TensorDataset, TensorDataset, torch.Tensor]:
    """MNIST-1D with a share ``noise`` of the training labels flipped to another class; clean test labels.

    Returns:
        ``(train, test, flipped)``: the noisy training set, the clean test set and the training set's flip mask.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_signals, 0.8, seed
    state = np.random.get_state()  # the generator reseeds NumPy's global random state: keep the caller's
    data = make_dataset(args)
    np.random.set_state(state)
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    g = torch.Generator().manual_seed(seed)
    flipped = torch.rand(len(y), generator=g) < noise
    shift = torch.randint(1, 10, (len(y),), generator=g)  # another class, uniformly
    noisy = torch.where(flipped, (y + shift) % 10, y)
    test = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return TensorDataset(x, noisy), test, flipped


# --8<-- [end:data]


# --8<-- [start:model]
class MyNet(LightningModule):
    """A small 1D CNN with the two-line ``training_step``; SGD, at a constant learning rate or a cosine to 0."""

    def __init__(self, width: int = 32, lr: float = 0.05, cosine: bool = False) -> None:
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
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())  # the clean labels

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        if not self.cosine:
            return optimizer
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


# --8<-- [end:model]


class MislabelledShare(Callback):
    """Counts the trained points, and how many of them carry a flipped label, and records every evaluation."""

    def __init__(self, flipped: torch.Tensor) -> None:
        self.flipped = flipped
        self.trained = 0
        self.mislabelled = 0
        self.accuracies: list[float] = []
        self._index = torch.arange(len(flipped))

    def on_fit_start(self, trainer, pl_module):
        train = trainer.datamodule.train_dataset  # with a holdout: a Subset, numbered 0.. in its own order
        self._index = torch.tensor(train.indices) if isinstance(train, Subset) else torch.arange(len(self.flipped))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        chosen = self._index[batch.index.cpu()]  # after selection: the points this step trained on
        self.trained += chosen.numel()
        self.mislabelled += int(self.flipped[chosen].sum())

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.accuracies.append(float(trainer.callback_metrics["test_acc"]))


def fit(method: str, data: tuple, steps: int, il_epochs: int, seed: int = 0) -> dict[str, float]:
    """Train ``MyNet`` for ``steps`` steps with uniform batches (``uniform``) or RHO-LOSS (``rho-loss``)."""
    train, test, flipped = data
    seed_everything(seed, verbose=False)
    b = 32
    # --8<-- [start:rho]
    if method == "uniform":
        dm = PrioritizedDataModule(train, test, batch_size=b, eval_batch_size=1000)
        callbacks = []
    else:
        dm = PrioritizedDataModule(train, test, batch_size=b, eval_batch_size=1000, holdout_fraction=0.25)
        # the holdout model: the same CNN, wider, trained on the (noisy) holdout with a cosine schedule
        irreducible = IrreducibleLoss(model=MyNet(width=64, cosine=True), max_epochs=il_epochs)
        callbacks = [irreducible, TopKSelection(presample=10)]
    # --8<-- [end:rho]
    share = MislabelledShare(flipped)
    trainer = Trainer(
        max_steps=steps,
        max_epochs=-1,
        callbacks=[*callbacks, share],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.process_time()  # CPU seconds: comparable between runs, even on a busy machine
    trainer.fit(MyNet(), datamodule=dm)
    # forward-sample units: forward and backward 3 per trained point, a no-grad forward 1 per presample point
    compute = 3 * share.trained + (0 if method == "uniform" else 10 * b * steps + irreducible.cost_units)
    return {
        "final": share.accuracies[-1],
        "best": max(share.accuracies),
        "mislabelled": share.mislabelled / share.trained,
        "compute": compute,
        "seconds": time.process_time() - start,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train uniform and RHO-LOSS runs at equal steps, print a table, and return the results by method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=10000, help="MNIST-1D signals (80%% train, 20%% test)")
    parser.add_argument("--noise", type=float, default=0.3, help="share of training labels flipped")
    parser.add_argument("--epochs", type=int, default=40, help="steps of this many uniform epochs, for both runs")
    parser.add_argument("--il-epochs", type=int, default=30, help="epochs of the holdout model's training")
    parser.add_argument("--fast", action="store_true", help="600 signals, 2 epochs: runs in seconds")
    args = parser.parse_args(argv)
    if args.fast:
        args.signals, args.epochs, args.il_epochs = 600, 2, 2
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    data = make_data(args.signals, args.noise)
    steps = args.epochs * -(-len(data[0]) // 32)
    results = {method: fit(method, data, steps, args.il_epochs) for method in ("uniform", "rho-loss")}
    print(f"\n{args.noise:.0%} of training labels flipped, {steps} steps each; accuracy on clean test labels")
    print(f"{'method':<9} {'final':>7} {'best':>7} {'mislabelled':>12} {'compute (M)':>12} {'CPU s':>6}")
    for name, r in results.items():
        print(
            f"{name:<9} {r['final']:>7.1%} {r['best']:>7.1%} {r['mislabelled']:>12.1%} "
            f"{r['compute'] / 1e6:>12.2f} {r['seconds']:>6.1f}"
        )
    return results


if __name__ == "__main__":
    main()
