"""Every private attribute of Lightning the package reads, in one place, each with a public fallback.

Lightning has no public API for these decisions; each function below reads one private attribute and falls back to
a safe behaviour if a Lightning release renames it. ``tests/test_plumbing.py`` checks that each attribute still
exists on the installed Lightning, so a rename fails a test loudly instead of degrading silently.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer

__all__ = [
    "before_batch_transfer",
    "every_n_train_steps",
    "logger_step",
    "logs_this_step",
    "set_current_hook",
    "train_loader_given",
]


def logs_this_step(trainer: Trainer) -> bool:
    """Whether the loggers write this training step's logs (``log_every_n_steps``); fallback: every step."""
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


def logger_step(trainer: Trainer) -> int:
    """The step Lightning's own logs of this training step use; fallback: ``trainer.global_step``."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def every_n_train_steps(callback: Callback) -> int:
    """A ``ModelCheckpoint``'s ``every_n_train_steps`` (0: it does not save by step count); fallback: 0."""
    every = getattr(callback, "_every_n_train_steps", 0)
    return int(every) if every else 0


def before_batch_transfer(pl_module: LightningModule, batch: Any) -> Any:
    """The module's ``on_before_batch_transfer`` hook applied as Lightning's training loop applies it."""
    hook = getattr(pl_module, "_on_before_batch_transfer", None)
    if hook is None:
        return pl_module.on_before_batch_transfer(batch, dataloader_idx=0)
    return hook(batch, dataloader_idx=0)


def train_loader_given(trainer: Trainer) -> Any:
    """What ``trainer.fit(model, train_dataloaders=...)`` was given, before Lightning iterates it; fallback: ``None``.

    ``None`` too when the loaders come from a DataModule's or the module's ``train_dataloader`` (made on request).
    """
    source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
    instance = getattr(source, "instance", None)
    return None if isinstance(instance, (LightningModule, LightningDataModule)) else instance


def set_current_hook(pl_module: LightningModule, name: str | None) -> None:
    """Tell ``pl_module.log`` which hook it is called from (MER runs the wrapped module's evaluation steps)."""
    pl_module._current_fx_name = name
