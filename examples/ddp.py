"""Two processes with Lightning's DDP on CPU (gloo): prioritized sampling, one score table, one checkpoint.

What it shows: the same script, DataModule and callbacks as on one process, with
``Trainer(accelerator="cpu", devices=2, strategy="ddp")``. Lightning starts the second process by running this script
again, so everything that trains sits under ``if __name__ == "__main__":``. Each process trains its own half of every
epoch's draw; ``LossTracker`` gathers both halves' scores at each epoch end, so both processes hold the same score
table and build the same next plan. The checkpoint is saved by calling ``trainer.save_checkpoint(path)`` on every
process (Lightning writes the file on rank 0; guarding the call with ``if trainer.is_global_zero`` hangs in
Lightning's own barrier). The script ends with ``release_process_group()``: exiting with the process group alive can
abort a process while gloo shuts down.

Run from the repository root (needs the ``examples`` extra)::

    python examples/ddp.py            # 4000 signals, 20 epochs on 2 processes: under a minute on a laptop CPU
    python examples/ddp.py --fast     # seconds of training, plus starting the second process (what CI runs)
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import TensorDataset

import lightning_per as lp


def make_data(num_signals: int, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-1D, 80% train and 20% validation; every process generates the same signals from the same seed."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_signals, 0.8, seed
    state = np.random.get_state()  # the generator reseeds NumPy's global random state: keep the caller's
    data = make_dataset(args)
    np.random.set_state(state)
    train = TensorDataset(torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"]))
    val = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return train, val


class MyNet(LightningModule):
    """A small 1D CNN with the two-line ``training_step``; validation accuracy averaged over the processes."""

    def __init__(self, width: int = 32, lr: float = 0.1) -> None:
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
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean(), sync_dist=True)  # the mean over processes

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class CountTrained(Callback):
    """Counts the samples this process trained on in the last epoch, and which ones."""

    def on_train_epoch_start(self, trainer, pl_module):
        self.index: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.index.append(batch.index.cpu())


# --8<-- [start:main]
def main(argv: list[str] | None = None) -> None:
    """Train on 2 processes, save a checkpoint, and print what each process trained and holds (rank 0)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--signals", type=int, default=4000, help="MNIST-1D signals (80%% train, 20%% validation)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="lightning_logs/ddp_example", help="where the checkpoint is written")
    parser.add_argument("--fast", action="store_true", help="600 signals, 3 epochs")
    args = parser.parse_args(argv)
    if args.fast:
        args.signals, args.epochs = 600, 3
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the data is in memory
    seed_everything(0, verbose=False)
    train, val = make_data(args.signals)
    dm = lp.PrioritizedDataModule(train, val, batch_size=64, strategy="rank")
    counter = CountTrained()
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",  # gloo on CPU
        max_epochs=args.epochs,
        callbacks=[lp.LossTracker(), counter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(MyNet(), datamodule=dm)
    seconds = time.perf_counter() - start

    # --8<-- [start:checkpoint]
    # every process calls save_checkpoint: Lightning writes the file on rank 0, and all processes meet in a barrier
    path = Path(args.out) / "last.ckpt"
    trainer.save_checkpoint(path, weights_only=False)  # the full state: callbacks and DataModule included
    # --8<-- [end:checkpoint]

    # what each process trained in the last epoch, and whether both hold the same score table
    counts = [0] * trainer.world_size
    torch.distributed.all_gather_object(counts, sum(index.numel() for index in counter.index))
    table = dm.scores.scores  # this process's score table (NaN: never scored)
    same = torch.equal(table.nan_to_num(-1.0), trainer.strategy.broadcast(table, src=0).nan_to_num(-1.0))
    same = trainer.strategy.reduce_boolean_decision(same, all=True)
    if trainer.is_global_zero:
        saved = torch.load(path, weights_only=True)
        print(f"\n{trainer.world_size} processes, {args.epochs} epochs, {seconds:.1f} s")
        print(f"{'process':<8} {'samples trained in the last epoch':>34}")
        for rank, count in enumerate(counts):
            print(f"{rank:<8} {count:>34}")
        print(f"score tables identical on every process: {same}")
        print(f"validation accuracy: {float(trainer.callback_metrics['val_acc']):.1%}")
        print(f"checkpoint {path}: callbacks {sorted(saved['callbacks'])}, datamodule state saved")


if __name__ == "__main__":
    main()
    lp.release_process_group()
# --8<-- [end:main]
