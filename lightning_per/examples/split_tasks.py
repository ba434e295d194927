"""Split task sequences: task ``t`` owns the labels ``[t * c, (t + 1) * c)`` of the digits or of MNIST-1D.

Each is a ``TaskSequence`` whose samples are ``(x, y, task)``: flattened inputs, int64 labels and the task id (the
Task-IL vs Class-IL setting). The data are embedded (no download).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lightning_per.continual.tasks import SequenceMode, TaskSequence
from lightning_per.examples.data import load_digits, mnist1d_tensors

__all__ = ["SplitDigits", "SplitMNIST1D"]


class SplitDigits(TaskSequence):
    """Split digits: scikit-learn's 8x8 digits in ``num_tasks`` tasks of ``10 // num_tasks`` classes (0-1, 2-3, ...).

    Args:
        num_tasks: number of tasks (a divisor of 10).
        test_fraction: share of each class held out for evaluation.
        data_seed: seed of the split.
        mode: ``"stream"`` or ``"task"``.
        repeats: training steps per incoming batch.
        batch_size: incoming batch size.
        eval_batch_size: evaluation batch size.
        shuffle: shuffle within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.

    Raises:
        ValueError: ``num_tasks`` does not divide 10, or ``test_fraction`` is outside ``(0, 1)``.
    """

    def __init__(
        self,
        num_tasks: int = 5,
        test_fraction: float = 0.25,
        data_seed: int = 0,
        mode: SequenceMode = "stream",
        repeats: int = 1,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if num_tasks <= 0 or 10 % num_tasks:
            raise ValueError(f"`num_tasks` must divide the 10 classes, got {num_tasks}.")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction}.")
        super().__init__(
            num_tasks=num_tasks,
            classes_per_task=10 // num_tasks,
            mode=mode,
            repeats=repeats,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
        )
        self.test_fraction = test_fraction
        self.data_seed = data_seed

    def _load(self) -> tuple[Tensor, Tensor]:
        return load_digits()

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Split by class, then hold out ``test_fraction`` of each task."""
        x, y = self._load()
        generator = torch.Generator().manual_seed(self.data_seed)
        train: list[Dataset] = []
        test: list[Dataset] = []
        for t in range(int(self.num_tasks or 0)):
            idx = torch.nonzero(y // self.classes_per_task == t).flatten()
            idx = idx[torch.randperm(idx.numel(), generator=generator)]
            n_test = max(1, round(self.test_fraction * idx.numel()))
            test.append(TensorDataset(x[idx[:n_test]], y[idx[:n_test]]))
            train.append(TensorDataset(x[idx[n_test:]], y[idx[n_test:]]))
        return train, test


class SplitMNIST1D(SplitDigits):
    """Split MNIST-1D: generated MNIST-1D signals in ``num_tasks`` tasks of ``10 // num_tasks`` classes.

    Args:
        num_tasks: number of tasks (a divisor of 10).
        num_samples: signals generated (split evenly over the 10 classes).
        test_fraction: share of each task held out for evaluation.
        data_seed: seed of the generator and of the split.
        data_dir: cache directory of the signals (``None``: ``$LIGHTNING_PER_DATA`` or ``~/.cache/lightning_per``).
        mode: ``"stream"`` or ``"task"``.
        repeats: training steps per incoming batch.
        batch_size: incoming batch size.
        eval_batch_size: evaluation batch size.
        shuffle: shuffle within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        num_tasks: int = 5,
        num_samples: int = 2500,
        test_fraction: float = 0.2,
        data_seed: int = 0,
        data_dir: str | None = None,
        mode: SequenceMode = "stream",
        repeats: int = 1,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            num_tasks, test_fraction, data_seed, mode, repeats, batch_size, eval_batch_size, shuffle, seed, num_workers
        )
        self.num_samples = num_samples
        self.data_dir = data_dir

    def _load(self) -> tuple[Tensor, Tensor]:
        return mnist1d_tensors(self.num_samples, self.data_seed, self.data_dir)
