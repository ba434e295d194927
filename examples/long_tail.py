"""Long-tailed classes with deferred class-balanced sampling: uniform first, balanced for the last epochs.

What it shows: a training set whose class sizes fall geometrically (the largest class ``--ratio`` times the
smallest) and a balanced test set. ``LossTracker(score=ones, class_balance=1.0)`` records each sample's class factor
``1 / n_c`` as its score, so a ``proportional`` strategy with ``alpha=1`` draws every class equally often; ``beta=0``
leaves the draws unweighted (with unbiasing weights the objective would be the long-tailed mean again). Four
schedules are compared by balanced (mean per-class) and worst-class test accuracy:

- ``uniform``: shuffled passes;
- ``balanced``: class-balanced draws from epoch 1 (epoch 0 is always uniform: nothing is scored yet);
- ``deferred``: uniform passes, then class-balanced draws for the last quarter of the epochs (deferred re-sampling,
  Cao et al. 2019): the balanced strategy with ``initial_uniform_epochs``;
- ``annealed``: ``uniform_mix`` annealed from 1 (uniform) to 0 (balanced) over the epochs.

On this library's long-tailed benchmark deferred re-sampling did best (+1.1 points balanced, +4.7 worst-class at
ratio 100) and balanced sampling from the start ended below uniform on average (not significantly): it trains each
of the few tail samples about 1,900 times and the model memorises them. One seed of this script is noisy; compare
over seeds before deciding.

Run from the repository root (needs the ``examples`` extra)::

    python examples/long_tail.py            # ratio 100, 40 epochs, 4 schedules: well under a minute on a laptop
    python examples/long_tail.py --fast     # a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

from lightning_per import LossTracker, PrioritizedDataModule, SamplingStrategy, weighted_mean


def make_data(largest: int, ratio: float, test_per_class: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Long-tailed MNIST-1D: class ``c`` keeps ``largest * ratio^(-c/9)`` training signals; a balanced test set."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    pool = round(1.2 * largest)  # the generator's split is random: enough of every class for the largest one
    args.num_samples = 10 * (pool + test_per_class)
    args.train_split, args.seed = pool / (pool + test_per_class), seed
    state = np.random.get_state()  # the generator reseeds NumPy's global random state: keep the caller's
    data = make_dataset(args)
    np.random.set_state(state)
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    sizes = [max(1, round(largest * ratio ** (-c / 9))) for c in range(10)]
    keep = torch.cat([(y == c).nonzero().squeeze(1)[:n] for c, n in enumerate(sizes)])
    test = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return TensorDataset(x[keep], y[keep]), test


# --8<-- [start:module]
class MyNet(LightningModule):
    """A small 1D CNN; ``training_step`` also returns the labels, which ``class_balance`` counts."""

    def __init__(self, width: int = 32, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
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
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses, "target": y}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def ones(outputs, batch) -> torch.Tensor:
    """A score of 1 for every sample: with ``class_balance``, the score table holds the class factors alone."""
    return torch.ones(batch.index.numel())


# --8<-- [end:module]


# --8<-- [start:schedules]
def schedule(name: str, epochs: int) -> tuple[SamplingStrategy, list[Callback]]:
    """The DataModule's strategy and the callbacks of one schedule (``LossTracker`` last)."""
    tracker = LossTracker(score=ones, class_balance=1.0)  # score = 1 / n_c, up to a constant
    balanced = SamplingStrategy("proportional", alpha=1.0, beta=0.0, beta_final=None, uniform_mix=0.0)
    if name == "uniform":
        return SamplingStrategy("uniform"), []
    if name == "balanced":
        return balanced, [tracker]
    if name == "deferred":  # uniform epochs first, balanced draws in the last quarter
        deferred = dataclasses.replace(balanced, initial_uniform_epochs=epochs - epochs // 4)
        return deferred, [tracker]
    if name == "annealed":  # p = (1 - λ) p_balanced + λ / N, λ from 1 in epoch 1 to 0 in the last epoch
        annealed = SamplingStrategy(
            "proportional", alpha=1.0, beta=0.0, beta_final=None, uniform_mix=1.0, uniform_mix_final=0.0
        )
        return annealed, [tracker]
    raise ValueError(f"unknown schedule {name!r}")


# --8<-- [end:schedules]


class TailDraws(Callback):
    """The share of each epoch's trained samples that come from the smallest class (class 9)."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.drawn, self.tail = 0, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        _, y = batch
        self.drawn += y.numel()
        self.tail += int((y == 9).sum())


def per_class_accuracy(model: LightningModule, test: TensorDataset) -> torch.Tensor:
    """The test accuracy of each class."""
    x, y = test.tensors
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float()
    return torch.stack([correct[y == c].mean() for c in range(10)])


def fit(name: str, train: TensorDataset, test: TensorDataset, epochs: int, seed: int = 0) -> dict[str, float]:
    """Train ``MyNet`` under one schedule: test accuracies, the tail's share of the last epoch's draws, seconds."""
    seed_everything(seed, verbose=False)
    strategy, callbacks = schedule(name, epochs)
    dm = PrioritizedDataModule(train, batch_size=64, strategy=strategy)
    draws = TailDraws()
    trainer = Trainer(
        max_epochs=epochs,
        callbacks=[*callbacks, draws],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = MyNet()
    start = time.process_time()  # CPU seconds: comparable between runs, even on a busy machine
    trainer.fit(model, datamodule=dm)
    seconds = time.process_time() - start
    accuracy = per_class_accuracy(model, test)
    return {
        "balanced": float(accuracy.mean()),
        "worst": float(accuracy.min()),
        "tail": float(accuracy[9]),
        "tail_draws": draws.tail / draws.drawn,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train under each schedule, print a table, and return the results by schedule."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--largest", type=int, default=600, help="training signals of the largest class")
    parser.add_argument("--ratio", type=float, default=100.0, help="largest class size / smallest")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--schedules", nargs="+", default=["uniform", "balanced", "deferred", "annealed"])
    parser.add_argument("--fast", action="store_true", help="60 signals in the largest class, 4 epochs: seconds")
    args = parser.parse_args(argv)
    if args.fast:
        args.largest, args.ratio, args.epochs = 60, 10.0, 4
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    train, test = make_data(args.largest, args.ratio, test_per_class=100 if args.fast else 200)
    sizes = torch.bincount(train.tensors[1], minlength=10).tolist()
    results = {name: fit(name, train, test, args.epochs) for name in args.schedules}
    print(f"\nclass sizes {sizes}; balanced test set; tail draws: class 9's share of the last epoch")
    print(f"{'schedule':<9} {'balanced':>9} {'worst class':>12} {'tail class':>11} {'tail draws':>11} {'CPU s':>6}")
    for name, r in results.items():
        print(
            f"{name:<9} {r['balanced']:>9.1%} {r['worst']:>12.1%} {r['tail']:>11.1%} {r['tail_draws']:>11.1%} "
            f"{r['seconds']:>6.1f}"
        )
    return results


if __name__ == "__main__":
    main()
