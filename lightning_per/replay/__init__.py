"""Experience replay for continual learning: reservoir and prioritized buffers, ER and MER, Task-IL and Class-IL.

Example::

    from lightning.pytorch import Trainer
    from lightning_per.replay import ExperienceReplay, SplitDigits, TaskAccuracyMatrix

    dm = SplitDigits(batch_size=10)  # 5 tasks of 2 classes, one fit over the stream
    model = ExperienceReplay(capacity=200, input_dim=64, num_tasks=5, classes_per_task=2, scenario="class")
    Trainer(max_epochs=1, callbacks=[TaskAccuracyMatrix(verbose=True)]).fit(model, datamodule=dm)
"""

from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplaySample, ReservoirBuffer, pool_buffer_states
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
from lightning_per.replay.functional import (
    average_accuracy,
    backward_transfer,
    last_write_per_slot,
    output_targets,
    reptile_interpolate_,
    reservoir_slots,
    task_class_mask,
)
from lightning_per.replay.loop import fit_tasks
from lightning_per.replay.module import MER, ContinualModule, ExperienceReplay, evaluate_tasks
from lightning_per.replay.sumtree import SumTree

__all__ = [
    "MER",
    "ContinualDataModule",
    "ContinualModule",
    "ExperienceReplay",
    "PermutedMNIST1D",
    "PrioritizedReplayBuffer",
    "ReplaySample",
    "ReservoirBuffer",
    "RotatedDigits",
    "SplitDigits",
    "SplitMNIST1D",
    "SumTree",
    "TaskAccuracyMatrix",
    "TaskDataset",
    "TaskStreamSampler",
    "average_accuracy",
    "backward_transfer",
    "evaluate_tasks",
    "fit_tasks",
    "last_write_per_slot",
    "output_targets",
    "pool_buffer_states",
    "reptile_interpolate_",
    "reservoir_slots",
    "task_class_mask",
]
