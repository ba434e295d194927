"""Experience replay for continual learning with any LightningModule: ER (a callback), MER (a wrapper), task sequences.

Add ``ExperienceReplay`` to the Trainer's callbacks and train on a ``TaskSequence`` (or any ``PrioritizedDataModule``);
wrap your module in ``MER`` for Meta-Experience Replay; ``TaskAccuracyMatrix`` measures ACC, BWT and each task's
accuracy after it was trained. The buffers store samples of any structure of tensors; their parts live one to a
module: ``storage``, ``writer`` (reservoir), ``uniform`` and ``prioritized`` (samplers), ``sumtree``, ``protocols``,
``pooling`` (re-sharding saved buffers), ``ranks`` (one buffer per DDP process), ``stream`` (the order of a task
sequence) and ``functional`` (pure functions). Benchmark sequences (split / permuted / rotated digits and MNIST-1D)
live in ``lightning_per.examples``.

Example::

    from lightning.pytorch import Trainer
    from lightning_per.replay import ExperienceReplay, TaskAccuracyMatrix, TaskSequence

    dm = TaskSequence(tasks=[task0, task1, task2], test_tasks=[test0, test1, test2], batch_size=10)
    callbacks = [ExperienceReplay(capacity=200, replay_batch_size=10), TaskAccuracyMatrix()]
    Trainer(max_epochs=1, callbacks=callbacks).fit(MyModule(), datamodule=dm)  # one pass over the stream
"""

from lightning_per.replay.accuracy import TaskAccuracyMatrix, evaluate_tasks
from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer, ReplaySample, ReservoirBuffer
from lightning_per.replay.experience import ExperienceReplay
from lightning_per.replay.loop import fit_tasks
from lightning_per.replay.mer import MER
from lightning_per.replay.tasks import TaskDataset, TaskSequence

__all__ = [
    "MER",
    "ExperienceReplay",
    "PrioritizedReplayBuffer",
    "ReplayBuffer",
    "ReplaySample",
    "ReservoirBuffer",
    "TaskAccuracyMatrix",
    "TaskDataset",
    "TaskSequence",
    "evaluate_tasks",
    "fit_tasks",
]
