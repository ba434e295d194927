"""Task sequences whose tasks share 10 classes under a fixed transform: permuted MNIST-1D, permuted / rotated digits.

Each is a ``TaskSequence`` whose samples are ``(x, y, task)``: flattened inputs, int64 labels and the task id. Every
task has the same 10 classes (the MER paper's MNIST Permutations / Rotations setting). The data are embedded (no
download).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from lightning_per.continual.tasks import SequenceMode, TaskSequence
from lightning_per.examples.data import DIGITS_TRAIN_POOL, load_digits, mnist1d_tensors

__all__ = ["PermutedDigits", "PermutedMNIST1D", "RotatedDigits"]


def _rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate ``(n, h, w)`` images about their centre (bilinear, zero padding)."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype).expand(images.shape[0], 2, 3)
    grid = torch.nn.functional.affine_grid(matrix, [images.shape[0], 1, *images.shape[1:]], align_corners=False)
    out = torch.nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False, padding_mode="zeros")
    return out.squeeze(1)


class PermutedMNIST1D(TaskSequence):
    """Permuted MNIST-1D: every task is the 10-class MNIST-1D problem under its own fixed permutation of the 40 inputs.

    Task 0 is unpermuted. Each task trains on its own ``train_per_task`` signals; all tasks are evaluated on the
    same ``test_per_task`` held-out signals under their permutation.

    Args:
        num_tasks: number of permutations.
        train_per_task: training signals per task.
        test_per_task: evaluation signals (shared by the tasks).
        data_seed: seed of the generated signals and of the permutations.
        data_dir: cache directory of the signals (``None``: ``$LIGHTNING_PER_DATA`` or ``~/.cache/lightning_per``).
        mode: ``"stream"`` or ``"task"`` (see ``TaskSequence``).
        repeats: training steps per incoming batch.
        batch_size: incoming batch size.
        eval_batch_size: evaluation batch size.
        shuffle: shuffle within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.
    """

    def __init__(
        self,
        num_tasks: int = 10,
        train_per_task: int = 200,
        test_per_task: int = 200,
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
            num_tasks=num_tasks,
            classes_per_task=10,
            mode=mode,
            repeats=repeats,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
        )
        self.train_per_task = train_per_task
        self.test_per_task = test_per_task
        self.data_seed = data_seed
        self.data_dir = data_dir

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Generate the signals and the permutations."""
        n_tasks = int(self.num_tasks or 0)
        n_train = self.train_per_task * n_tasks
        x, y = mnist1d_tensors(n_train + self.test_per_task, self.data_seed, self.data_dir)
        generator = torch.Generator().manual_seed(self.data_seed)
        xtest, ytest = x[n_train : n_train + self.test_per_task], y[n_train : n_train + self.test_per_task]
        train: list[Dataset] = []
        test: list[Dataset] = []
        for t in range(n_tasks):
            perm = torch.arange(x.shape[1]) if t == 0 else torch.randperm(x.shape[1], generator=generator)
            chunk = slice(t * self.train_per_task, (t + 1) * self.train_per_task)
            train.append(TensorDataset(x[chunk][:, perm], y[chunk]))
            test.append(TensorDataset(xtest[:, perm], ytest))
        return train, test


class PermutedDigits(TaskSequence):
    """Permuted digits: scikit-learn's 8x8 digits, every task under its own fixed permutation of the 64 pixels.

    The MER paper's MNIST Permutations on the embedded digits: same 10 classes in every task, task 0 unpermuted. A
    fixed 80/20 split gives the pools; each task draws ``train_per_task`` training images from the training pool and
    is evaluated on the whole (permuted) test pool. A permutation hides the image's geometry but not its content: an
    MLP, blind to pixel order, learns every task as well as the first (a 2x400 MLP: 0.80-0.92 after 100 steps of 10
    images, in ``benchmarks/continual.py``).

    Args:
        num_tasks: number of permutations.
        train_per_task: training images per task (at most the 1438 of the training pool).
        data_seed: seed of the split, of the per-task draws and of the permutations.
        mode: ``"stream"`` or ``"task"``.
        repeats: training steps per incoming batch.
        batch_size: incoming batch size.
        eval_batch_size: evaluation batch size.
        shuffle: shuffle within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.

    Raises:
        ValueError: ``train_per_task`` is not in ``[1, 1437]``.
    """

    def __init__(
        self,
        num_tasks: int = 10,
        train_per_task: int = 1000,
        data_seed: int = 0,
        mode: SequenceMode = "stream",
        repeats: int = 1,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        if not 1 <= train_per_task <= DIGITS_TRAIN_POOL:
            raise ValueError(
                f"`train_per_task` must be in [1, {DIGITS_TRAIN_POOL}] (the digits' training pool), "
                f"got {train_per_task}."
            )
        super().__init__(
            num_tasks=num_tasks,
            classes_per_task=10,
            mode=mode,
            repeats=repeats,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
        )
        self.train_per_task = train_per_task
        self.data_seed = data_seed

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Split the digits and permute each task's pixels."""
        x, y = load_digits()
        generator = torch.Generator().manual_seed(self.data_seed)
        order = torch.randperm(x.shape[0], generator=generator)
        n_test = x.shape[0] // 5
        test_idx, train_idx = order[:n_test], order[n_test:]
        train: list[Dataset] = []
        test: list[Dataset] = []
        for t in range(int(self.num_tasks or 0)):
            perm = torch.arange(x.shape[1]) if t == 0 else torch.randperm(x.shape[1], generator=generator)
            pick = train_idx[torch.randperm(train_idx.numel(), generator=generator)[: self.train_per_task]]
            train.append(TensorDataset(x[pick][:, perm], y[pick]))
            test.append(TensorDataset(x[test_idx][:, perm], y[test_idx]))
        return train, test


class RotatedDigits(TaskSequence):
    """Rotated digits: scikit-learn's 8x8 digits, task ``t`` rotated by ``t * max_angle / num_tasks`` degrees.

    Same 10 classes in every task. A fixed 80/20 split gives the pools; each task draws ``train_per_task`` training
    images from the training pool and is evaluated on the whole (rotated) test pool.

    Args:
        num_tasks: number of rotations.
        max_angle: the rotations are spread over ``[0, max_angle)`` degrees.
        train_per_task: training images per task.
        data_seed: seed of the split and of the per-task draws.
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
        num_tasks: int = 10,
        max_angle: float = 180.0,
        train_per_task: int = 200,
        data_seed: int = 0,
        mode: SequenceMode = "stream",
        repeats: int = 1,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            num_tasks=num_tasks,
            classes_per_task=10,
            mode=mode,
            repeats=repeats,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
        )
        self.max_angle = max_angle
        self.train_per_task = train_per_task
        self.data_seed = data_seed

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Split the digits and rotate each task's images."""
        x, y = load_digits()
        generator = torch.Generator().manual_seed(self.data_seed)
        order = torch.randperm(x.shape[0], generator=generator)
        n_test = x.shape[0] // 5
        test_idx, train_idx = order[:n_test], order[n_test:]
        n_tasks = int(self.num_tasks or 0)
        train: list[Dataset] = []
        test: list[Dataset] = []
        for t in range(n_tasks):
            angle = t * self.max_angle / n_tasks
            pick = train_idx[torch.randperm(train_idx.numel(), generator=generator)[: self.train_per_task]]
            train.append(TensorDataset(_rotate(x[pick].view(-1, 8, 8), angle).reshape(-1, 64), y[pick]))
            test.append(TensorDataset(_rotate(x[test_idx].view(-1, 8, 8), angle).reshape(-1, 64), y[test_idx]))
        return train, test
