"""Run the user's ``training_step`` as a scoring pass: eval mode, no gradients, logging suppressed."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_per.plumbing.internals import before_batch_transfer

__all__ = ["prepare_batch", "quiet_inner_fit", "scoring_mode", "scoring_step", "silenced_logging"]


@contextmanager
def scoring_mode(pl_module: LightningModule, trainer: Trainer | None = None) -> Iterator[None]:
    """Within this block the module is in eval mode, gradients are off and ``self.log``/``self.log_dict`` do nothing.

    The training flag of every submodule is restored on exit, also when the block raises, so a submodule the user
    keeps in eval mode (a frozen backbone) stays in eval mode. With ``trainer``, the precision plugin's training
    context (autocast) is entered as for a training step.

    Example::

        with scoring_mode(model):
            outputs = model.training_step(batch, 0)
    """
    modes = [module.training for module in pl_module.modules()]
    pl_module.eval()
    try:
        with silenced_logging(pl_module), torch.no_grad():
            if trainer is None:
                yield
            else:
                with trainer.precision_plugin.train_step_context():
                    yield
    finally:
        if all(modes):  # the usual case in one call (this runs on every selection step)
            pl_module.train()
        else:
            for module, training in zip(pl_module.modules(), modes, strict=True):
                module.training = training


@contextmanager
def silenced_logging(pl_module: LightningModule) -> Iterator[None]:
    """Within this block ``pl_module.log`` and ``pl_module.log_dict`` do nothing (a scoring pass, MER's inner steps).

    Example::

        with silenced_logging(model):
            model.training_step(batch, 0)  # its self.log calls are dropped
    """
    # plain instance attributes (not through nn.Module.__setattr__, which is slow and meant for submodules)
    object.__setattr__(pl_module, "log", _no_log)
    object.__setattr__(pl_module, "log_dict", _no_log)
    try:
        yield
    finally:
        object.__delattr__(pl_module, "log")
        object.__delattr__(pl_module, "log_dict")


def scoring_step(pl_module: LightningModule, batch: Any, batch_idx: int, trainer: Trainer | None = None) -> Any:
    """One call of ``pl_module.training_step(batch, batch_idx)`` in ``scoring_mode``; returns its output."""
    with scoring_mode(pl_module, trainer):
        return pl_module.training_step(batch, batch_idx)


def prepare_batch(trainer: Trainer, pl_module: LightningModule, batch: Any) -> Any:
    """What Lightning's training loop does to a batch from the loader: precision, hooks, device transfer."""
    batch = trainer.precision_plugin.convert_input(batch)
    batch = before_batch_transfer(pl_module, batch)
    return trainer.strategy.batch_to_device(batch, dataloader_idx=0)


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` during a scoring pass."""


@contextmanager
def quiet_inner_fit() -> Iterator[None]:
    """Within this block Lightning's notices (banners, "`max_epochs` reached", a missing validation loader) are muted.

    For a fit that is one step of the user's run (``IrreducibleLoss`` trains its model so): the user's own run prints
    its banner once. Warnings about real problems still show.
    """
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(validation_step|val_dataloader).*")
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
