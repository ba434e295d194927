"""Overhead: what the plugin costs per training step, against plain Lightning, side by side in one run.

Protocol. MNIST-1D (4000 training signals), the examples' 1D CNN, Adam, batch ``b``, no validation, no logger.
Four set-ups train the same model from the same seed for the same number of steps:

* ``plain``: a plain ``LightningDataModule`` (``DataLoader(shuffle=True)``), no callback;
* ``tracker``: ``PrioritizedDataModule(strategy="proportional")`` + ``LossTracker`` (scores recorded every
  step, the sampler re-weighted every epoch: epoch ends included in the timing);
* ``importance_uniform_phase``: ``strategy="uniform"`` + ``ImportanceSamplingCallback`` held in its uniform phase
  (``tau_th`` = 1e9: tau is computed every step, never switches);
* ``importance_active``: the same callback held in its importance phase (``tau_th`` = 1e-9, ``presample`` = 3).

Each round runs the four set-ups in a shuffled order; a set-up's time is the mean step time over its run after
``warmup`` steps (wall time from the end of step ``warmup`` to the end of the last step, so epoch boundaries
count). A ratio is set-up time / plain time within a round; the figure is the median over rounds. The
theoretical cost of an importance step is ``(B + 3b) / (3b)`` uniform steps (a forward over ``B = presample * b``
points plus a forward and a backward, about two forwards, over ``b``).

    python -m benchmarks.overhead --out bench_out/overhead.json
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import bench_trainer, median, quiet, save_figure, save_json, spread
from benchmarks.common import parser as make_parser
from lightning_per import ImportanceSamplingCallback, LossTracker, PrioritizedDataModule
from lightning_per.examples.data import load_mnist1d, resolve_data_dir
from lightning_per.examples.models import Classifier

SETUPS = ("plain", "tracker", "importance_uniform_phase", "importance_active")


class StepClock(Callback):
    """Wall time at the end of every training step."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ends.append(time.perf_counter())


class PlainData(LightningDataModule):
    """A plain Lightning DataModule: what a user has before adding the plugin."""

    def __init__(self, dataset: TensorDataset, batch_size: int) -> None:
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


def mnist1d_train(size: int, data_dir: str | None) -> TensorDataset:
    """The first ``size`` MNIST-1D signals of the examples' generator (seed 42)."""
    x, y = load_mnist1d(-(-size // 10) * 10, 42, resolve_data_dir(data_dir, "--data-dir"))
    return TensorDataset(torch.from_numpy(x[:size]), torch.from_numpy(y[:size]))


def run_setup(setup: str, dataset: TensorDataset, args: argparse.Namespace) -> float:
    """Train ``args.steps`` steps with ``setup``; the mean seconds per step after the warm-up."""
    seed_everything(0, workers=True, verbose=False)
    model = Classifier(width=args.width, schedule="none")
    clock = StepClock()
    callbacks: list[Callback] = [clock]
    datamodule: LightningDataModule
    if setup == "plain":
        datamodule = PlainData(dataset, args.batch_size)
    elif setup == "tracker":
        datamodule = PrioritizedDataModule(dataset, batch_size=args.batch_size, strategy="proportional", seed=0)
        callbacks.append(LossTracker())
    else:
        datamodule = PrioritizedDataModule(dataset, batch_size=args.batch_size, strategy="uniform", seed=0)
        tau_th = 1e9 if setup == "importance_uniform_phase" else 1e-9
        callbacks.append(ImportanceSamplingCallback(presample=args.presample, tau_th=tau_th))
    trainer = bench_trainer(args.accelerator, callbacks, max_steps=args.steps)
    trainer.fit(model, datamodule=datamodule)
    ends = clock.ends[args.warmup :]
    return (ends[-1] - ends[0]) / (len(ends) - 1)


def plot(ratios: dict[str, dict[str, float]], theory: float, path: Path) -> None:
    """Bar chart of the median ratios with their min-max over rounds, and the theoretical importance cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ratios)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    medians = [ratios[k]["median"] for k in names]
    lows = [ratios[k]["median"] - ratios[k]["min"] for k in names]
    highs = [ratios[k]["max"] - ratios[k]["median"] for k in names]
    ax.bar(names, medians, yerr=[lows, highs], capsize=4, color=["#4c72b0", "#55a868", "#c44e52"])
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(theory, color="#c44e52", ls="--", lw=1, label=f"importance theory (B+3b)/(3b) = {theory:.2f}")
    ax.set_ylabel("step time / plain Lightning step time")
    ax.set_title("Per-step overhead (median over rounds, min-max bars)")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/overhead.json"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="steps per set-up and round")
    parser.add_argument("--warmup", type=int, default=20, help="steps not timed at the start of each run")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--width", type=int, default=32, help="CNN channels")
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    quiet()
    dataset = mnist1d_train(args.train_size, args.data_dir)
    order = list(SETUPS)
    rounds: list[dict[str, float]] = []
    for r in range(args.rounds):
        random.Random(r).shuffle(order)
        seconds = {setup: run_setup(setup, dataset, args) for setup in order}
        rounds.append(seconds)
        shown = "  ".join(f"{k}={seconds[k] * 1e3:.2f}ms" for k in SETUPS)
        print(f"round {r + 1}/{args.rounds}: {shown}", flush=True)
    theory = (args.presample * args.batch_size + 3 * args.batch_size) / (3 * args.batch_size)
    per_round = {k: [row[k] / row["plain"] for row in rounds] for k in SETUPS[1:]}
    ratios = {k: {**spread(v), "median": median(v)} for k, v in per_round.items()}
    payload: dict[str, Any] = {
        "ratio": {**{k: v["median"] for k, v in ratios.items()}, "importance_active_theory": theory},
        "ratio_spread": ratios,
        "step_ms": {k: median([row[k] for row in rounds]) * 1e3 for k in SETUPS},
        "targets": {"tracker": 1.02, "importance_uniform_phase": 1.03, "importance_active": theory},
        "settings": vars(args) | {"out": str(args.out)},
        "protocol": __doc__.split("\n\n")[1].replace("\n", " "),
    }
    for k, v in payload["ratio"].items():
        print(f"  {k:<28s} {v:.3f}")
    save_json(args.out, payload)
    plot(ratios, theory, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
