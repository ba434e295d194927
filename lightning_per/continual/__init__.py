"""Continual-learning scaffolding for any LightningModule: task sequences, their stream order, the accuracy matrix.

``TaskSequence`` (a ``PrioritizedDataModule``) serves tasks as one stream or one fit per task (``fit_tasks``);
``TaskAccuracyMatrix`` measures each task after each one (ACC, BWT). The replay methods themselves are in
``lightning_per.replay``; benchmark sequences (split / permuted / rotated digits and MNIST-1D) in
``lightning_per.examples``.

Example::

    from lightning.pytorch import Trainer
    from lightning_per.continual import TaskAccuracyMatrix, TaskSequence
    from lightning_per.replay import ExperienceReplay, ReservoirBuffer

    dm = TaskSequence(tasks=[task0, task1, task2], test_tasks=[test0, test1, test2], batch_size=10)
    callbacks = [ExperienceReplay(ReservoirBuffer(capacity=200), replay_batch_size=10), TaskAccuracyMatrix()]
    Trainer(max_epochs=1, callbacks=callbacks).fit(MyModule(), datamodule=dm)  # one pass over the stream
"""

from lightning_per.continual.accuracy import TaskAccuracyMatrix, evaluate_tasks
from lightning_per.continual.loop import fit_tasks
from lightning_per.continual.tasks import TaskDataset, TaskSequence

__all__ = ["TaskAccuracyMatrix", "TaskDataset", "TaskSequence", "evaluate_tasks", "fit_tasks"]
