"""Run the user's ``training_step`` as a scoring pass: eval mode, no gradients, logging suppressed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule

__all__ = ["scoring_mode", "scoring_step"]


@contextmanager
def scoring_mode(pl_module: LightningModule) -> Iterator[None]:
    """Within this block the module is in eval mode, gradients are off and ``self.log``/``self.log_dict`` do nothing.

    The training mode the module had is restored on exit, also when the block raises.

    Example::

        with scoring_mode(model):
            outputs = model.training_step(batch, 0)
    """
    was_training = pl_module.training
    pl_module.eval()
    pl_module.log = _no_log  # type: ignore[method-assign]
    pl_module.log_dict = _no_log  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            yield
    finally:
        del pl_module.log, pl_module.log_dict
        pl_module.train(was_training)


def scoring_step(pl_module: LightningModule, batch: Any, batch_idx: int) -> Any:
    """One call of ``pl_module.training_step(batch, batch_idx)`` in :func:`scoring_mode`; returns its output."""
    with scoring_mode(pl_module):
        return pl_module.training_step(batch, batch_idx)


def _no_log(*args: Any, **kwargs: Any) -> None:
    """Stands in for ``LightningModule.log`` during a scoring pass."""
