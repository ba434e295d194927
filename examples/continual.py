"""Continual learning with experience replay: ``ExperienceReplay`` and ``MER`` on split digits, class-incremental.

What it shows: scikit-learn's 8x8 digits split into 5 tasks of 2 classes each (0-1, 2-3, ...), seen once in order in
batches of 10 (``TaskSequence``), by one MLP with a 10-way head (Class-IL: the task id is not used at test time).
Fine-tuning forgets the earlier tasks; ``ExperienceReplay`` mixes 10 samples from a 200-item reservoir into every
batch; ``MER`` wraps the module and trains each incoming batch with replays in several small plain-SGD steps, pulled
back by Reptile interpolations. MER takes 20 SGD steps per incoming batch here, so the table also has ER with every
batch trained 20 times (``TaskSequence(repeats=20)``): the same number of steps. ``TaskAccuracyMatrix`` records every
task's test accuracy after each task; the table gives ACC (mean final accuracy over the tasks) and BWT (the mean
change of a task's accuracy from right after its training to the end; negative is forgetting).

Run from the repository root (needs the ``examples`` extra)::

    python examples/continual.py            # 5 tasks, one pass: well under a minute on a laptop CPU
    python examples/continual.py --fast     # a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

from lightning_per import weighted_mean
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence
from lightning_per.replay import MER, ExperienceReplay, ReservoirBuffer


# --8<-- [start:data]
def split_digits(num_tasks: int = 5, keep: float = 1.0, seed: int = 0) -> tuple[list, list]:
    """Digits split by class into tasks of 2 classes; 80% of each task trains, 20% tests.

    Args:
        num_tasks: tasks of 2 classes each (at most 5).
        keep: share of each task's training samples kept (a smaller stream).
        seed: seed of the train / test split.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for t in range(num_tasks):
        index = ((y == 2 * t) | (y == 2 * t + 1)).nonzero().squeeze(1)
        index = index[torch.randperm(len(index), generator=g)]
        cut = int(0.8 * len(index))
        kept = index[: int(keep * cut)]
        train.append(TensorDataset(x[kept], y[kept]))
        test.append(TensorDataset(x[index[cut:]], y[index[cut:]]))
    return train, test


# --8<-- [end:data]


class MyMLP(LightningModule):
    """A 2x100 MLP over all 10 classes; samples from ``TaskSequence`` carry their task id, unused here."""

    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _task = batch  # Class-IL: the task id is not an input
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


# --8<-- [start:methods]
def method(name: str) -> tuple[LightningModule, list, int]:
    """The module to fit, its callbacks and the ``TaskSequence`` repeats of one method."""
    if name == "fine-tune":
        return MyMLP(), [], 1
    if name == "ER":
        return MyMLP(), [ExperienceReplay(ReservoirBuffer(capacity=200), replay_batch_size=10)], 1
    if name == "ER x20":  # every incoming batch trained 20 times: as many SGD steps as MER takes
        return MyMLP(), [ExperienceReplay(ReservoirBuffer(capacity=200), replay_batch_size=10)], 20
    if name == "MER":
        # MER's defaults are the reference settings (100 replays per inner batch, 10 inner batches per example,
        # one SGD step per sample): about 1,000 SGD steps per incoming example. Here the whole incoming batch of 10
        # is the new example (variant="batch"), joined by 9 replays, 5 inner batches trained in steps of 5 samples:
        # 20 SGD steps per incoming batch. The inner steps are plain SGD at `lr`, whatever optimizer your module
        # configures, so set `lr` explicitly.
        mer = MER(
            MyMLP(),
            capacity=200,
            replay_batch_size=9,
            batches_per_example=5,
            variant="batch",
            step_batch_size=5,
            reptile_beta=0.3,
            reptile_gamma=1.0,
            lr=0.1,
        )
        return mer, [], 1
    raise ValueError(f"unknown method {name!r}")


# --8<-- [end:methods]


# --8<-- [start:fit]
def fit(name: str, tasks: tuple[list, list], seed: int = 0) -> dict[str, float]:
    """One pass over the task sequence with one method; ACC, BWT, SGD steps and seconds."""
    seed_everything(seed, verbose=False)
    train, test = tasks
    model, callbacks, repeats = method(name)
    dm = TaskSequence(tasks=train, test_tasks=test, batch_size=10, repeats=repeats, seed=seed)
    matrix = TaskAccuracyMatrix()
    trainer = Trainer(
        max_epochs=1,  # one pass over the stream: task 0, then task 1, ...
        callbacks=[*callbacks, matrix],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.process_time()  # CPU seconds: comparable between runs, even on a busy machine
    trainer.fit(model, datamodule=dm)
    return {"acc": matrix.acc, "bwt": matrix.bwt, "steps": trainer.global_step, "seconds": time.process_time() - start}


# --8<-- [end:fit]


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run fine-tuning, ER and MER over the same stream, print a table, and return the results by method."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=["fine-tune", "ER", "ER x20", "MER"])
    parser.add_argument("--fast", action="store_true", help="3 tasks, a fifth of their training samples: seconds")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    tasks = split_digits(num_tasks=3, keep=0.2) if args.fast else split_digits()
    results = {name: fit(name, tasks) for name in args.methods}
    print(f"\nsplit digits, {len(tasks[0])} tasks, class-incremental, one pass in batches of 10")
    print(f"{'method':<10} {'ACC':>6} {'BWT':>7} {'SGD steps':>10} {'CPU s':>6}")
    for name, r in results.items():
        print(f"{name:<10} {r['acc']:>6.3f} {r['bwt']:>+7.3f} {r['steps']:>10} {r['seconds']:>6.1f}")
    return results


if __name__ == "__main__":
    main()
