"""The library's methods as the studies run them, and one budgeted training run of the examples' 1D CNN.

Method names: ``LEGEND`` (the README's which-method table prints it). The per-sample loss ``LossTracker()`` records is
the training pass's, free. ``topk_reducible_stream`` is large-batch mode, as on a stream: the loader yields ``B =
presample * b`` points, no extra draws, and the irreducible losses come from the holdout model's forward on each large
batch, charged as it runs. The reducible-loss methods add ``IrreducibleLoss``: the same CNN trained on the
DataModule's holdout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightning.pytorch import Callback, seed_everything
from torch.utils.data import Dataset

from benchmarks.common import bench_trainer
from benchmarks.protocol.budget import ComputeBudget, Evaluate
from lightning_per import (
    ImportanceSamplingCallback,
    IrreducibleLoss,
    LossTracker,
    PrioritizedDataModule,
    SamplingStrategy,
    SelectiveBackprop,
    TopKSelection,
)
from lightning_per.examples.models import Classifier

LEGEND: dict[str, str] = {  # method name: what it runs, in the library's terms
    "uniform": 'shuffled passes, `SamplingStrategy("uniform")`',
    "proportional": '`SamplingStrategy("proportional")` with `LossTracker()`',
    "rank": '`SamplingStrategy("rank")` with `LossTracker()`',
    "prune": '`SamplingStrategy("prune")` (InfoBatch, `prune_ratio=0.5`) with `LossTracker()`',
    "rank_reducible": '`SamplingStrategy("rank")` with `LossTracker(score="reducible")` and `IrreducibleLoss`',
    "importance": "`ImportanceSamplingCallback(presample=3)`",
    "importance_p5": "`ImportanceSamplingCallback(presample=5)`",
    "topk_reducible": "RHO-LOSS, `TopKSelection` of the highest reducible losses (loss minus `IrreducibleLoss`'s)",
    "topk_reducible_stream": '`topk_reducible` in large-batch mode, as on a stream (`mode="large_batch"`)',
    "topk_loss": '`TopKSelection(score="loss")`',
    "selective_backprop": "`SelectiveBackprop()`",
}
LIBRARY_METHODS = tuple(LEGEND)


class ScheduledDataModule(PrioritizedDataModule):
    """A ``PrioritizedDataModule`` whose sampling schedule spans ``schedule_epochs`` epochs.

    The runs stop by compute, so the Trainer's ``max_epochs`` is only a cap; a strategy's annealing (and prune's
    final uniform epochs) follow the epochs the budget pays for instead.
    """

    def __init__(self, *args: Any, schedule_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schedule_epochs = schedule_epochs

    def train_dataloader(self) -> Any:
        loader = super().train_dataloader()
        self.sampler.max_epochs = self.schedule_epochs
        return loader


@dataclass
class RunSpec:
    """What a study fixes for all its runs: the data, the model, the optimiser and the method options."""

    train: Dataset
    batch_size: int
    width: int = 32
    momentum: float = 0.9
    schedule: str = "cosine"
    evals: int = 20
    accelerator: str = "cpu"
    max_epochs: int | None = None  # an epoch cap: a method with shorter epochs stops early and saves compute
    holdout_fraction: float = 0.0  # held out for every method of a seed (the reducible-loss methods train on it)
    collate_fn: Callable[[list[Any]], Any] | None = None
    topk_presample: int = 10
    il_epochs: int = 20
    il_lr: float = 0.05


def method_parts(
    base: str, seed: int, spec: RunSpec, options: dict[str, Any] | None = None
) -> tuple[SamplingStrategy, list[Callback]]:
    """A library method's sampling strategy (with ``options``) and callbacks, the irreducible-loss model first."""
    options = options or {}
    callbacks: list[Callback] = []
    if "reducible" in base:
        model = Classifier(width=spec.width, optimizer="sgd", lr=spec.il_lr, momentum=spec.momentum, schedule="cosine")
        mode: Any = "on_the_fly" if base.endswith("_stream") else "auto"
        # trained at the training batch size b: in large-batch mode the DataModule's batch is the presample B
        il = IrreducibleLoss(model=model, max_epochs=spec.il_epochs, batch_size=spec.batch_size, seed=seed, mode=mode)
        callbacks.append(il)
    if base in ("proportional", "rank", "prune", "rank_reducible"):
        name = "rank" if base == "rank_reducible" else base
        score = "reducible" if base == "rank_reducible" else "loss"
        return SamplingStrategy(name, **options), [*callbacks, LossTracker(score=score)]  # type: ignore[arg-type]
    if base in ("importance", "importance_p5"):
        callbacks.append(ImportanceSamplingCallback(presample=5 if base == "importance_p5" else 3, seed=seed))
    elif base == "topk_reducible":
        callbacks.append(TopKSelection(presample=spec.topk_presample, seed=seed))
    elif base == "topk_reducible_stream":
        callbacks.append(TopKSelection(presample=spec.topk_presample, seed=seed, mode="large_batch"))
    elif base == "topk_loss":
        callbacks.append(TopKSelection(presample=spec.topk_presample, score="loss", seed=seed))
    elif base == "selective_backprop":
        callbacks.append(SelectiveBackprop(seed=seed))
    elif base != "uniform":
        raise ValueError(f"unknown method {base!r}; the library's are {LIBRARY_METHODS}")
    return SamplingStrategy("uniform", **options), callbacks


Prepare = Callable[[PrioritizedDataModule], tuple[Evaluate, list[Callback]]]


def train_method(
    method: str,
    seed: int,
    lr: float,
    budget: float,
    spec: RunSpec,
    prepare: Prepare,
    parts: tuple[SamplingStrategy, list[Callback]] | None = None,
) -> ComputeBudget:
    """One run: SGD with momentum on the examples' CNN at peak ``lr``, stopped at ``budget`` (or the epoch cap).

    ``prepare(datamodule)`` gives the evaluation and the study's own callbacks (after the budget, before the
    method's); ``parts`` replaces ``method_parts`` for a study's own methods. Returns the run's ``ComputeBudget``.
    """
    seed_everything(seed, workers=True, verbose=False)
    model = Classifier(width=spec.width, optimizer="sgd", lr=lr, momentum=spec.momentum, schedule="none")
    strategy, callbacks = parts or method_parts(method, seed, spec)
    large = method.endswith("_stream")  # the loader yields the presample: B = presample * b points a step
    datamodule = ScheduledDataModule(
        spec.train,
        batch_size=spec.batch_size * (spec.topk_presample if large else 1),
        strategy=strategy,
        seed=seed,
        collate_fn=spec.collate_fn,
        holdout_fraction=spec.holdout_fraction,
        holdout_seed=seed,  # the same holdout for every method of a seed
        schedule_epochs=1,
    )
    trained = len(datamodule.train_dataset)  # type: ignore[arg-type]
    held = len(datamodule.holdout_dataset or [])  # type: ignore[arg-type]
    aux = 3.0 * spec.il_epochs * held + trained if any(isinstance(c, IrreducibleLoss) for c in callbacks) else 0.0
    uniform_epochs = max(1, math.ceil((budget - aux) / (3.0 * trained)))
    datamodule.schedule_epochs = spec.max_epochs or uniform_epochs
    evaluate, own = prepare(datamodule)
    meter = ComputeBudget(budget, lr, spec.schedule, evaluate, spec.evals, spec.max_epochs)
    cap = spec.max_epochs or 10 * uniform_epochs + 1  # only a cap: the budget stops the run
    trainer = bench_trainer(spec.accelerator, [meter, *own, *callbacks], max_epochs=cap)
    trainer.fit(model, datamodule=datamodule)
    return meter
