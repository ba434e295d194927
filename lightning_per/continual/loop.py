"""Train through a task sequence with one ``trainer.fit`` per task, keeping model and callbacks (buffer) alive."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl

from lightning_per.continual.tasks import TaskSequence

__all__ = ["fit_tasks"]


def fit_tasks(
    model: pl.LightningModule,
    datamodule: TaskSequence,
    trainer_fn: Callable[[int], pl.Trainer],
    start_task: int = 0,
) -> list[pl.Trainer]:
    """Fit ``model`` on tasks ``start_task, ..., num_tasks - 1``, each with a fresh Trainer from ``trainer_fn(task)``.

    The model carries over from task to task, and so do the callbacks if ``trainer_fn`` passes the same instances
    (``ExperienceReplay`` keeps its buffer, ``TaskAccuracyMatrix``
    its rows). Each Trainer logs, checkpoints and shows progress for its own task (give each its own
    ``default_root_dir`` or logger version). Each Trainer's checkpoint holds the model and the callbacks' state
    (the buffers, the accuracy matrix, filled before the end-of-task checkpoint is written). To resume after task
    ``t``::

        state = torch.load(path, weights_only=True)
        model = MyModule.load_from_checkpoint(path, weights_only=True)
        replay.load_state_dict(state["callbacks"][replay.state_key])  # the buffer(s)
        matrix.load_state_dict(state["callbacks"][matrix.state_key])
        fit_tasks(model, datamodule, trainer_fn, start_task=t + 1)

    Args:
        model: your LightningModule (or ``MER`` around it).
        datamodule: the sequence; its ``mode`` must be ``"task"``.
        trainer_fn: builds the Trainer of a task.
        start_task: first task to train.

    Returns:
        The Trainers, one per task trained.

    Raises:
        ValueError: the datamodule is not in ``mode="task"`` or ``start_task`` is out of range.

    Example::

        replay, matrix = ExperienceReplay(ReservoirBuffer(capacity=200)), TaskAccuracyMatrix()
        fit_tasks(model, SplitDigits(mode="task"), lambda t: Trainer(max_epochs=1, callbacks=[replay, matrix]))
    """
    if datamodule.mode != "task":
        raise ValueError(f"`fit_tasks` needs a datamodule with `mode='task'`, got mode={datamodule.mode!r}.")
    datamodule.setup("fit")
    num_tasks = int(datamodule.num_tasks or 0)
    if not 0 <= start_task < num_tasks:
        raise ValueError(f"`start_task` must be in [0, {num_tasks}), got {start_task}.")
    trainers = []
    for task in range(start_task, num_tasks):
        datamodule.set_task(task)
        trainer = trainer_fn(task)
        trainer.fit(model, datamodule=datamodule)
        trainers.append(trainer)
    return trainers
