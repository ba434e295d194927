"""When a callback must bring its per-process state together: the points where a checkpoint may be taken.

A callback's ``state_dict`` runs no collective (building a checkpoint never waits on another process), so what the
other processes recorded reaches every process at fixed synchronisation points instead: epoch ends, validation
starts, the steps at which a ``ModelCheckpoint`` saves by ``every_n_train_steps``, and the callback's own interval.
A checkpoint taken at any of them holds every process's records.
"""

from __future__ import annotations

from lightning.pytorch import Trainer

from lightning_per.plumbing.internals import every_n_train_steps

__all__ = ["checkpoint_due"]


def checkpoint_due(trainer: Trainer) -> bool:
    """Whether a ``ModelCheckpoint`` saves at the end of this training batch because of ``every_n_train_steps``.

    Callbacks run their ``on_train_batch_end`` before the checkpoint callbacks (Lightning puts those last), so a
    callback that synchronises when this is true has every process's records in that checkpoint.
    """
    for callback in trainer.checkpoint_callbacks:
        every = every_n_train_steps(callback)
        if every >= 1 and trainer.global_step % every == 0:
            return True
    return False
