"""The one check every callback makes of the Trainer's data: a ``PrioritizedDataModule`` and its batches.

Callbacks that record scores by dataset index, or draw extra points from the training set, need the DataModule of
this package and the ``PrioritizedBatch`` it serves; this module refuses anything else with the same message
everywhere, naming the callback and the fix.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer

from lightning_per.batch import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule

__all__ = ["require_batch", "require_datamodule"]


def require_datamodule(trainer: Trainer, owner: str, uniform: bool = False, why: str = "") -> PrioritizedDataModule:
    """The Trainer's ``PrioritizedDataModule``, refused when it is another (or, with ``uniform``, prioritized).

    Args:
        trainer: the Trainer at setup.
        owner: the callback, named in the message.
        uniform: the DataModule must serve uniform batches (the callback selects or weights them itself).
        why: what the callback needs it for, appended to the message.

    Raises:
        TypeError: the training data does not come from a ``PrioritizedDataModule``.
        ValueError: ``uniform`` and a prioritized strategy.
    """
    datamodule = getattr(trainer, "datamodule", None)
    strategy = ", strategy='uniform'" if uniform else ""
    if not isinstance(datamodule, PrioritizedDataModule):
        raise TypeError(
            f"{owner} needs the training data to come from a `lightning_per.PrioritizedDataModule`, passed as "
            f"`trainer.fit(model, datamodule=...)`{why}; got {type(datamodule).__name__}. Wrap your datasets: "
            f"`PrioritizedDataModule(train_dataset, val_dataset, batch_size=...{strategy})`."
        )
    if uniform and datamodule.strategy.name != "uniform":
        raise ValueError(
            f"{owner} selects or weights each step's points itself, so the DataModule must serve uniform batches; got "
            f"`strategy={datamodule.strategy.name!r}`. Use `strategy='uniform'` with this callback, or remove it and "
            "use `LossTracker` with a prioritized strategy."
        )
    return datamodule


def require_batch(batch: Any, owner: str, uniform: bool = False) -> PrioritizedBatch:
    """``batch`` if it is a ``PrioritizedBatch`` (it carries the indices and weights the callback needs).

    Raises:
        TypeError: a batch of another type (the training loader is not the DataModule's).
    """
    if not isinstance(batch, PrioritizedBatch):
        strategy = ", strategy='uniform'" if uniform else ""
        raise TypeError(
            f"{owner} got a training batch of type {type(batch).__name__} without sample indices and weights: train "
            f"with `trainer.fit(model, datamodule=PrioritizedDataModule(...{strategy}))`, not with your own loader."
        )
    return batch
