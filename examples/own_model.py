"""Your own model from a YAML file: the ``lightning-per`` console script with your LightningModule and DataModule.

What it shows: ``own_model.yaml`` (next to this file) names the classes below by import path
(``examples.own_model.MyClassifier``), adds ``LossTracker`` under ``trainer.callbacks``, sets the sampling strategy
under ``data.init_args.strategy`` and logs to a ``CSVLogger``: the run leaves ``metrics.csv`` with the ``per/``
diagnostics and the resolved ``config.yaml`` in ``lightning_logs/own_model/version_N/``. Typed, defaulted
constructor arguments are what LightningCLI turns into YAML keys and command-line flags.

Run from the repository root. The console script does not put the working directory on Python's import path, so
``examples.own_model`` needs ``PYTHONPATH=.`` (your own package, installed, needs nothing)::

    PYTHONPATH=. lightning-per fit --config examples/own_model.yaml
    PYTHONPATH=. lightning-per fit --config examples/own_model.yaml --data.strategy.name=rank --trainer.max_epochs=5

or run this file, which trains through the same CLI (``lightning_per.cli.main``) and prints the ``per/`` columns of
the run's ``metrics.csv`` by epoch::

    python -m examples.own_model            # 20 epochs on scikit-learn's digits: well under a minute
    python -m examples.own_model --fast     # 2 epochs (what CI runs)
"""

from __future__ import annotations

import argparse
import csv
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import TensorDataset

import lightning_per as lp
from lightning_per.cli import main as lightning_per_cli

CONFIG = Path(__file__).with_name("own_model.yaml")


# --8<-- [start:classes]
class MyClassifier(LightningModule):
    """An MLP for 8x8 digit images, written with the two-line ``training_step``.

    Args:
        hidden: hidden units.
        lr: SGD learning rate.
    """

    def __init__(self, hidden: int = 64, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class DigitsData(lp.PrioritizedDataModule):
    """scikit-learn's 8x8 digits as a ``PrioritizedDataModule``: the datasets are built in ``setup``.

    Args:
        batch_size: training batch size.
        strategy: how training samples are drawn: a ``SamplingStrategy`` (a dict of its arguments in YAML), a
            strategy name, or ``None`` for uniform.
        val_fraction: share of the images held out for validation.
        split_seed: seed of the train / validation split.
    """

    def __init__(
        self,
        batch_size: int = 64,
        strategy: lp.SamplingStrategy | str | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, strategy=strategy)
        self.val_fraction = val_fraction
        self.split_seed = split_seed

    def setup(self, stage: str) -> None:
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        cut = int(len(y) * (1 - self.val_fraction))
        self.train_dataset = TensorDataset(x[order[:cut]], y[order[:cut]])
        self.val_dataset = TensorDataset(x[order[cut:]], y[order[cut:]])


# --8<-- [end:classes]


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """A CSVLogger's ``metrics.csv`` by epoch: the last value of every column logged in that epoch."""
    by_epoch: dict[int, dict[str, float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            values = {key: float(value) for key, value in row.items() if value not in ("", None)}
            by_epoch.setdefault(int(values.get("epoch", -1)), {}).update(values)
    return by_epoch


def main(argv: list[str] | None = None) -> dict[int, dict[str, float]]:
    """Train ``own_model.yaml`` through the CLI, print its ``per/`` metrics by epoch, and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save-dir", default="lightning_logs", help="the CSVLogger's directory")
    parser.add_argument("--fast", action="store_true", help="2 epochs")
    args, cli_args = parser.parse_known_args(argv)  # anything else goes to the CLI, e.g. --trainer.max_epochs=5
    if args.fast:
        cli_args = ["--trainer.max_epochs=2", *cli_args]
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    cli = lightning_per_cli(
        ["fit", "--config", str(CONFIG), f"--trainer.logger.init_args.save_dir={args.save_dir}", *cli_args]
    )
    log_dir = Path(cli.trainer.logger.log_dir)
    metrics = read_metrics(log_dir / "metrics.csv")
    columns = ["val_acc", "per/ess", "per/top10_mass", "per/max_weight"]
    print(f"\n{log_dir}: metrics.csv, config.yaml")
    print(f"{'epoch':>5} " + " ".join(f"{c:>14}" for c in columns))
    for epoch, values in sorted(metrics.items()):
        if epoch >= 0:
            print(f"{epoch:>5} " + " ".join(f"{values.get(c, float('nan')):>14.3f}" for c in columns))
    return metrics


if __name__ == "__main__":
    main()
