"""Overhead: what the plugin costs per training step, against plain Lightning, side by side in one run.

Protocol. MNIST-1D (4000 training signals), the examples' 1D CNN, Adam, batch ``b``, no validation, no logger.
Four set-ups train the same model from the same seed for the same number of steps:

* ``plain``: a plain ``LightningDataModule`` (``DataLoader(shuffle=True)``), no callback;
* ``tracker``: ``PrioritizedDataModule(strategy="proportional")`` + ``LossTracker`` (scores recorded every
  step, the sampler re-weighted every epoch: epoch ends included in the timing);
* ``importance_uniform_phase``: ``strategy="uniform"`` + ``ImportanceSamplingCallback`` held in its uniform phase
  (``tau_th`` = 1e9: every step is scored, ``tau`` brought up to date every 16 steps, never switches);
* ``importance_active``: the same callback held in its importance phase (``tau_th`` = 1e-9, ``presample`` = 3).

The four set-ups run at the same time, in lock step: each in its own thread, and only one thread runs at any moment
(a turnstile hands the turn on at the end of every training step), so the steps go plain, tracker, importance
uniform phase, importance active, plain, ... A step's time runs from getting the turn to the end of the step (data
loading, hooks, epoch ends included); the time spent waiting for the turn is not counted. A slow spell of the
machine (another process, frequency changes) thus falls on all four set-ups alike instead of on whichever ran during
it. ``ratio`` (the figure with the targets) is the median over the timed steps (after ``warmup``) of a set-up's step
time / plain's step time in the same round. ``ratio_epoch_blocks`` cuts the timed steps into blocks of one epoch and
takes the median over blocks of a set-up's summed step time / plain's: it includes the epoch ends and rarer slow
steps, which a median of steps leaves out. The theoretical cost of an importance step is ``(B + 3b) / (3b)`` uniform
steps (a forward over ``B = presample * b`` points plus a forward and a backward, about two forwards, over ``b``).

``--engine`` measures instead the engine's own cost: a model whose forward is negligible (one linear layer), so what
an importance step costs beyond a plain step is the presample's making, scoring and drawing. Its set-ups: ``plain``
(a plain ``DataLoader`` of ``b``, no callback) and ``ImportanceSamplingCallback`` held in its importance phase with
each presample source: ``indexed`` (extra points through a second DataLoader), ``device`` (extra points gathered
from the tensors on the device) and ``large_batch`` (a plain ``DataLoader`` of ``B``). Its clock is the CPU time of
the thread that runs the step (``time.thread_time``), so other processes on the machine do not enter the figure.
Goal: at most 1.25.

    python -m benchmarks.overhead --out bench_out/overhead.json
    python -m benchmarks.overhead --engine --out bench_out/overhead_engine.json
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import bench_trainer, median, protocol, quiet, save_figure, save_json, spread
from benchmarks.common import parser as make_parser
from lightning_per import ImportanceSamplingCallback, LossTracker, PrioritizedDataModule, weighted_mean
from lightning_per.examples.data import load_mnist1d, resolve_data_dir
from lightning_per.examples.models import Classifier

SETUPS = ("plain", "tracker", "importance_uniform_phase", "importance_active")
ENGINE_SETUPS = ("plain", "indexed", "device", "large_batch")


class Negligible(LightningModule):
    """One linear layer: its forward costs next to nothing, so a step's time is the machinery around it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(40, 10)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self.net(x)
        losses = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses, "logits": logits, "target": y}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class Turnstile:
    """Lets one of several threads run at a time, in a fixed cyclic order; a finished thread leaves the cycle."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.left = set(names)
        self.turn = 0
        self.cond = threading.Condition()

    def wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.names[self.turn] == name)

    def pass_on(self, name: str, leave: bool = False) -> None:
        with self.cond:
            if leave:
                self.left.discard(name)
            if self.names[self.turn] == name and self.left:
                self.turn = (self.turn + 1) % len(self.names)
                while self.names[self.turn] not in self.left:
                    self.turn = (self.turn + 1) % len(self.names)
            self.cond.notify_all()


class StepClock(Callback):
    """Times every training step from getting the turn to the step's end, then hands the turn on."""

    def __init__(self, turnstile: Turnstile, name: str, clock: Callable[[], float] = time.perf_counter) -> None:
        self.turnstile = turnstile
        self.name = name
        self.clock = clock
        self.seconds: list[float] = []
        self.body_seconds: list[float] = []  # from `on_train_batch_start` to the step's end
        self._resumed = 0.0
        self._started = 0.0

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.turnstile.wait(self.name)
        self._resumed = self.clock()

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._started = self.clock()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        end = self.clock()
        self.seconds.append(end - self._resumed)
        self.body_seconds.append(end - self._started)
        self.turnstile.pass_on(self.name)
        self.turnstile.wait(self.name)
        self._resumed = self.clock()

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        self.turnstile.pass_on(self.name, leave=True)  # a failed fit leaves the cycle in `run_lockstep`'s `work`


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


def make_setup(setup: str, dataset: TensorDataset, args: argparse.Namespace, clock: StepClock) -> Callable[[], None]:
    """A function that trains ``args.steps`` steps with ``setup``, timed by ``clock``."""
    seed_everything(0, workers=True, verbose=False)
    if args.engine:
        return make_engine_setup(setup, dataset, args, clock)
    model = Classifier(width=args.width, schedule="none")
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
    return lambda: trainer.fit(model, datamodule=datamodule)


def make_engine_setup(
    setup: Any, data: TensorDataset, args: argparse.Namespace, clock: StepClock
) -> Callable[[], None]:
    """``--engine``: the negligible model, plain or in the importance phase with one presample source."""
    model, b = Negligible(), args.batch_size
    callbacks: list[Callback] = [clock]
    if setup != "plain":
        callbacks.insert(0, ImportanceSamplingCallback(presample=args.presample, tau_th=1e-9, mode=setup))
    trainer = bench_trainer(args.accelerator, callbacks, max_steps=args.steps)
    if setup in ("indexed", "device"):
        datamodule = PrioritizedDataModule(data, batch_size=b, strategy="uniform", seed=0)
        return lambda: trainer.fit(model, datamodule=datamodule)
    loader = DataLoader(data, batch_size=b * args.presample if setup == "large_batch" else b, shuffle=True)
    return lambda: trainer.fit(model, train_dataloaders=loader)


def run_lockstep(
    dataset: TensorDataset, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run the set-ups in lock step (see the protocol); the seconds of every step of each, and of its body."""
    setups = ENGINE_SETUPS if args.engine else SETUPS
    turnstile = Turnstile(list(setups))
    clock = time.thread_time if args.engine else time.perf_counter  # --engine: the step thread's CPU seconds
    clocks = {setup: StepClock(turnstile, setup, clock) for setup in setups}
    fits = {setup: make_setup(setup, dataset, args, clocks[setup]) for setup in setups}
    errors: list[BaseException] = []
    threads_per_op = torch.get_num_threads()

    def work(setup: str) -> None:
        torch.set_num_threads(threads_per_op)  # a new thread would otherwise run torch's kernels single-threaded
        try:
            fits[setup]()
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)
            turnstile.pass_on(setup, leave=True)

    threads = [threading.Thread(target=work, args=(setup,), daemon=True) for setup in setups]  # Ctrl-C ends all
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return {k: c.seconds for k, c in clocks.items()}, {k: c.body_seconds for k, c in clocks.items()}


def plot(ratios: dict[str, dict[str, float]], paired: dict[str, float], theory: float, path: Path) -> None:
    """Bars: the epoch-block ratios (median, min-max); crosses: the paired-step medians; the importance theory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ratios)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    medians = [ratios[k]["median"] for k in names]
    lows = [ratios[k]["median"] - ratios[k]["min"] for k in names]
    highs = [ratios[k]["max"] - ratios[k]["median"] for k in names]
    ax.bar(names, medians, yerr=[lows, highs], capsize=4, color=["#4c72b0", "#55a868", "#c44e52"])
    ax.scatter(names, [paired[k] for k in names], marker="x", color="black", zorder=3, label="median of paired steps")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(theory, color="#c44e52", ls="--", lw=1, label=f"importance theory (B+3b)/(3b) = {theory:.2f}")
    ax.set_ylabel("step time / plain Lightning step time")
    ax.set_title("Per-step overhead (bars: one-epoch blocks, median and min-max)")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/overhead.json"))
    parser.add_argument("--steps", type=int, default=2040, help="training steps of each set-up")
    parser.add_argument("--warmup", type=int, default=40, help="steps not timed at the start")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--width", type=int, default=32, help="CNN channels")
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--engine", action="store_true", help="the engine-cost rows (a negligible forward)")
    args = parser.parse_args(argv)
    setups = ENGINE_SETUPS if args.engine else SETUPS
    per_epoch = -(-args.train_size // args.batch_size)
    if args.steps - args.warmup < per_epoch:
        parser.error(
            f"--steps {args.steps} leaves {args.steps - args.warmup} timed steps after --warmup {args.warmup}, fewer "
            f"than one epoch ({per_epoch} steps): use --steps >= {args.warmup + per_epoch}."
        )
    quiet()
    dataset = mnist1d_train(args.train_size, args.data_dir)
    seconds, body_seconds = run_lockstep(dataset, args)
    timed = {k: v[args.warmup :] for k, v in seconds.items()}
    blocks = range(0, len(timed["plain"]) - per_epoch + 1, per_epoch)
    block_sums = {k: [sum(v[i : i + per_epoch]) for i in blocks] for k, v in timed.items()}
    rounds = [{k: block_sums[k][j] / per_epoch for k in setups} for j in range(len(blocks))]
    for r, row in enumerate(rounds):
        shown = "  ".join(f"{k}={row[k] * 1e3:.2f}ms" for k in setups)
        print(f"block {r + 1}/{len(rounds)}: {shown}", flush=True)
    theory = (args.presample * args.batch_size + 3 * args.batch_size) / (3 * args.batch_size)
    per_round = {k: [row[k] / row["plain"] for row in rounds] for k in setups[1:]}
    ratios = {k: {**spread(v), "median": median(v)} for k, v in per_round.items()}
    paired = {k: median([a / b for a, b in zip(timed[k], timed["plain"], strict=True)]) for k in setups[1:]}
    payload: dict[str, Any] = {
        "ratio": {**paired, "importance_active_theory": theory},  # median of paired step-time ratios
        "ratio_epoch_blocks": {**{k: v["median"] for k, v in ratios.items()}, "importance_active_theory": theory},
        "ratio_spread": ratios,
        "blocks": len(rounds),
        "step_ms": {k: median([row[k] for row in rounds]) * 1e3 for k in setups},
        # the step split in two: its body (`on_train_batch_start` to the step's end: forward, backward, optimizer,
        # the importance step's scoring) and the rest (the previous step's later hooks, loading and moving the batch)
        "step_body_ms": {k: median(v[args.warmup :]) * 1e3 for k, v in body_seconds.items()},
        "between_steps_ms": {
            k: median([a - b for a, b in zip(seconds[k][args.warmup :], v[args.warmup :], strict=True)]) * 1e3
            for k, v in body_seconds.items()
        },
        "targets": {k: 1.25 for k in setups[1:]}
        if args.engine
        else {"tracker": 1.02, "importance_uniform_phase": 1.03, "importance_active": theory},
        "settings": vars(args) | {"out": str(args.out)},
        "protocol": protocol(__doc__),
    }
    for k, v in payload["ratio"].items():
        print(f"  {k:<28s} {v:.3f}")
    save_json(args.out, payload)
    plot(ratios, paired, theory, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
