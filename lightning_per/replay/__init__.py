"""Experience replay for continual learning: reservoir and prioritized buffers, ER and MER, Task-IL and Class-IL.

The buffers store samples of any structure of tensors; their parts live one to a module: ``storage``
(:class:`~lightning_per.replay.storage.TensorStorage`), ``writer`` (reservoir), ``uniform`` and ``prioritized``
(samplers), ``sumtree``, ``protocols``, ``pooling`` (re-sharding saved buffers) and ``functional`` (pure functions).

Example::

    from lightning.pytorch import Trainer
    from lightning_per.replay import ExperienceReplay, SplitDigits, TaskAccuracyMatrix

    dm = SplitDigits(batch_size=10)  # 5 tasks of 2 classes, one fit over the stream
    model = ExperienceReplay(capacity=200, input_dim=64, num_tasks=5, classes_per_task=2, scenario="class")
    Trainer(max_epochs=1, callbacks=[TaskAccuracyMatrix(verbose=True)]).fit(model, datamodule=dm)
"""

from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer, ReplaySample, ReservoirBuffer
from lightning_per.replay.callbacks import TaskAccuracyMatrix
from lightning_per.replay.data import (
    ContinualDataModule,
    PermutedMNIST1D,
    RotatedDigits,
    SplitDigits,
    SplitMNIST1D,
    TaskDataset,
    TaskStreamSampler,
)
from lightning_per.replay.loop import fit_tasks
from lightning_per.replay.module import MER, ContinualModule, ExperienceReplay, evaluate_tasks

__all__ = [
    "MER",
    "ContinualDataModule",
    "ContinualModule",
    "ExperienceReplay",
    "PermutedMNIST1D",
    "PrioritizedReplayBuffer",
    "ReplayBuffer",
    "ReplaySample",
    "ReservoirBuffer",
    "RotatedDigits",
    "SplitDigits",
    "SplitMNIST1D",
    "TaskAccuracyMatrix",
    "TaskDataset",
    "TaskStreamSampler",
    "evaluate_tasks",
    "fit_tasks",
]
