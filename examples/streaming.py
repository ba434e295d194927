"""Online selection on a stream: RHO-LOSS over webdataset tar shards, a loader with no index and no length.

What it shows: the training data is a stream (``webdataset`` tar shards written here from MNIST-1D, 30% of the labels
flipped), read by a plain ``DataLoader`` that yields batches of ``B = presample * b`` points. ``TopKSelection`` runs
in its large-batch mode: each step scores the ``B`` points without gradients and trains on the ``b`` with the highest
reducible loss; ``IrreducibleLoss`` trains its model once on a small clean holdout set and, as the stream's samples
carry no dataset index, computes the irreducible losses of each large batch on the fly (its forwards are charged in
the compute it reports). A uniform baseline trains the same number of steps on plain batches of ``b`` from the same
stream. The table gives the clean test accuracy, the compute in forward-sample units and the share of mislabelled points
each run trained on.

Run from the repository root (needs the ``examples`` extra and ``webdataset``)::

    python examples/streaming.py          # 20,000 streamed signals, 3 passes: about a minute on a laptop CPU
    python examples/streaming.py --fast   # a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_per import IrreducibleLoss, TopKSelection, weighted_mean


# --8<-- [start:shards]
def write_shards(folder: Path, signals: int, noise: float, per_shard: int, seed: int = 0) -> tuple[str, dict]:
    """MNIST-1D as webdataset tar shards (``x.pth``, ``y.cls``, ``clean.cls``); the shards' URL and the eval sets."""
    import webdataset as wds
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = signals, 0.9, seed
    state = np.random.get_state()  # the generator reseeds NumPy's global random state: keep the caller's
    data = make_dataset(args)
    np.random.set_state(state)
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    g = torch.Generator().manual_seed(seed)
    flipped = torch.rand(len(y), generator=g) < noise
    noisy = torch.where(flipped, (y + torch.randint(1, 10, y.shape, generator=g)) % 10, y)  # another class
    holdout = len(y) // 10  # a small clean set for the irreducible-loss model
    with wds.ShardWriter(str(folder / "train-%04d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(holdout, len(y)):
            buffer = io.BytesIO()
            torch.save(x[i].clone(), buffer)
            sample = {"__key__": f"{i:07d}", "x.pth": buffer.getvalue(), "y.cls": int(noisy[i]), "clean.cls": int(y[i])}
            sink.write(sample)
    shards = sorted(folder.glob("train-*.tar"))
    url = str(folder / f"train-{{0000..{len(shards) - 1:04d}}}.tar")
    test = TensorDataset(torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"]))
    return url, {"holdout": TensorDataset(x[:holdout], y[:holdout]), "test": test}


def stream_loader(url: str, large_batch: int, seed: int) -> DataLoader:
    """A plain DataLoader over the shards: shuffled in a buffer, batches of ``large_batch`` (x, y, clean) samples."""
    import webdataset as wds

    def decode(sample: dict) -> tuple[torch.Tensor, int, int]:
        x = torch.load(io.BytesIO(sample["x.pth"]), weights_only=True)
        return x, int(sample["y.cls"]), int(sample["clean.cls"])

    stream = wds.WebDataset(url, shardshuffle=False, seed=seed).shuffle(1000).map(decode)
    return DataLoader(stream, batch_size=large_batch)


# --8<-- [end:shards]
class MyClassifier(LightningModule):
    """A small 1D CNN; its ``training_step`` makes the two-line change and takes (x, y) or (x, y, clean) batches."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 32, 5, padding=2), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1),
            nn.ReLU(), nn.Flatten(), nn.Linear(32 * 40, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        losses = F.cross_entropy(self(x), y, reduction="none")
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Mislabelled(Callback):
    """Counts the trained points whose label was flipped (the stream's third field is the clean label)."""

    def __init__(self) -> None:
        self.trained = self.flipped = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.trained += len(batch[1])
        self.flipped += int((batch[1] != batch[2]).sum())


def accuracy(model: LightningModule, data: TensorDataset) -> float:
    """Clean test accuracy."""
    x, y = data.tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(-1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    """Train uniform and RHO-LOSS on the stream and print their table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--signals", type=int, default=20000)
    parser.add_argument("--passes", type=int, default=3, help="passes over the stream")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--fast", action="store_true", help="a tiny run, in seconds")
    args = parser.parse_args(argv)
    if args.fast:
        args.signals, args.passes = 2000, 1
    torch.set_num_threads(1)
    b, presample = 32, 10
    with tempfile.TemporaryDirectory() as tmp:
        url, sets = write_shards(Path(tmp), args.signals, args.noise, per_shard=1000)
        rows = []
        steps = 0
        for name in ("rho-loss", "uniform"):
            seed_everything(0, verbose=False)
            model, counter = MyClassifier(), Mislabelled()
            if name == "rho-loss":  # large batches of B = presample * b points; each step keeps b of them
                irreducible = IrreducibleLoss(model=MyClassifier(), holdout_dataset=sets["holdout"], max_epochs=10)
                selection = TopKSelection(presample=presample)
                callbacks: list[Callback] = [irreducible, selection, counter]
                limits, loader = {"max_epochs": args.passes}, stream_loader(url, b * presample, seed=0)
            else:  # as many steps on plain batches of b
                callbacks, limits, loader = [counter], {"max_steps": steps}, stream_loader(url, b, seed=0)
            start = time.perf_counter()
            trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                              enable_model_summary=False, callbacks=callbacks, **limits)  # fmt: skip
            trainer.fit(model, train_dataloaders=loader)
            steps = trainer.global_step
            compute = 3 * counter.trained  # forward and backward: 3 units per trained point
            if name == "rho-loss":  # plus the presamples' scoring and the irreducible-loss model's work
                compute += selection.cost.scored + irreducible.cost_units
            rows.append((name, accuracy(model, sets["test"]), compute, counter.flipped / counter.trained,
                         time.perf_counter() - start))  # fmt: skip
    print(f"\n{'run':<10}{'clean test acc':>16}{'compute (units)':>18}{'mislabelled trained':>22}{'seconds':>10}")
    for name, acc, compute, flipped, seconds in rows:
        print(f"{name:<10}{acc:>16.1%}{compute:>18,.0f}{flipped:>22.1%}{seconds:>10.1f}")


if __name__ == "__main__":
    main()
