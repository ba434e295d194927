"""Hand a callback's diagnostics to the loggers without ``self.log``.

``LightningModule.log`` costs about a millisecond per metric on a CPU (it moves Lightning's whole result record to
the value's device on every call), which is a few percent of a small model's training step when a callback logs
several metrics. Like Lightning's own ``LearningRateMonitor`` and ``DeviceStatsMonitor``, the callbacks of this
package therefore write to ``trainer.loggers`` directly, at the step Lightning would use. They also put the values
into ``trainer.callback_metrics`` (so ``ModelCheckpoint`` and ``EarlyStopping`` can monitor them) and, where
asked, into the progress bar.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from lightning.pytorch import Trainer

from lightning_per.plumbing.internals import logger_step, logs_this_step

__all__ = ["publish", "publish_due"]


def publish_due(trainer: Trainer, batch_idx: int) -> bool:
    """Whether a callback publishes its step metrics: the loggers write this step, or it is the epoch's last batch.

    At the epoch's last batch they reach ``callback_metrics`` and the progress bar even when the loggers skip it.
    """
    return logs_this_step(trainer) or batch_idx + 1 >= trainer.num_training_batches


def publish(
    trainer: Trainer, metrics: Mapping[str, float], to_loggers: bool = True, prog_bar: Iterable[str] = ()
) -> None:
    """Show ``metrics`` in ``callback_metrics``, the progress bar and, if ``to_loggers``, the loggers.

    Each logger writes on global rank 0 only, as with ``self.log``.

    Args:
        trainer: the running Trainer.
        metrics: metric name to value; the values are the same on every process (nothing is reduced here).
        to_loggers: write them to ``trainer.loggers`` now, at the step Lightning's own logs of this step use.
        prog_bar: the names to show in the progress bar.
    """
    if not metrics:
        return
    tensors = {name: torch.tensor(float(value)) for name, value in metrics.items()}
    trainer.callback_metrics.update(tensors)  # Lightning's own record: the dict persists for the whole stage
    trainer.progress_bar_metrics.update({name: float(metrics[name]) for name in prog_bar if name in metrics})
    if to_loggers:
        trainer.logged_metrics.update(tensors)
    if to_loggers and trainer.loggers:
        step = logger_step(trainer)
        scalars = {**{name: float(value) for name, value in metrics.items()}, "epoch": trainer.current_epoch}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
