"""Task sequences as a LightningDataModule: one fit per task, or one fit over the whole stream.

Batches are ``(x, y, task)``. Labels follow one convention (see
:func:`~lightning_per.replay.functional.output_targets`): with ``shared_classes`` every task uses labels
``[0, classes_per_task)``; otherwise task ``t`` owns the labels ``[t * classes_per_task, (t + 1) * classes_per_task)``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

__all__ = [
    "ContinualDataModule",
    "PermutedMNIST1D",
    "RotatedDigits",
    "SplitDigits",
    "SplitMNIST1D",
    "TaskDataset",
    "TaskStreamSampler",
]


class TaskDataset(Dataset):
    """Wrap a dataset of ``(x, y)`` so that it yields ``(x, y, task)``, checking the label range of the task.

    Args:
        dataset: the task's samples.
        task: the task id.
    """

    def __init__(self, dataset: Dataset, task: int) -> None:
        self.dataset = dataset
        self.task = task

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        x, y = self.dataset[index][:2]
        return torch.as_tensor(x), torch.as_tensor(y, dtype=torch.int64), torch.tensor(self.task, dtype=torch.int64)


class TaskStreamSampler(DistributedSampler):
    """Indices of a :class:`~torch.utils.data.ConcatDataset` of tasks, task after task, shuffled within each task.

    The whole stream's order depends only on ``seed``, ``epoch`` and the task lengths; it is padded to a multiple
    of ``num_replicas`` by repeating its last items (so the padding stays in the last task) and rank ``r`` keeps the
    positions ``r, r + num_replicas, ...``: every rank sees its share of every task, in task order. Because it
    subclasses ``DistributedSampler``, Lightning leaves it alone under DDP. ``start`` skips the first items of this
    rank's share once (the next pass starts from the beginning): that is how a fit resumed mid-stream continues
    where it stopped; :meth:`__len__` stays the full share so Lightning's batch count matches.

    Args:
        lengths: the number of samples of each task.
        shuffle: shuffle within each task.
        seed: seed of the order, shared by all ranks.
        num_replicas: number of ranks.
        rank: this rank.
        start: items of this rank's share to skip on the next pass.

    Raises:
        ValueError: a negative length, ``num_replicas < 1``, ``rank`` outside ``[0, num_replicas)`` or ``start < 0``.

    Example::

        >>> list(TaskStreamSampler([3, 2], shuffle=False))
        [0, 1, 2, 3, 4]
        >>> list(TaskStreamSampler([3, 2], shuffle=False, num_replicas=2, rank=1))
        [1, 3, 4]
    """

    def __init__(
        self,
        lengths: Sequence[int],
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        start: int = 0,
    ) -> None:
        if any(n < 0 for n in lengths):
            raise ValueError(f"`lengths` must be non-negative task sizes, got {list(lengths)}.")
        if num_replicas < 1:
            raise ValueError(f"`num_replicas` must be >= 1, got {num_replicas}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}.")
        if start < 0:
            raise ValueError(f"`start` must be >= 0, got {start}.")
        # DistributedSampler's own __init__ asks torch.distributed for the world; set its attributes directly.
        self.lengths = [int(n) for n in lengths]
        self.dataset = range(sum(self.lengths))  # type: ignore[assignment]
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.drop_last = False
        self.start = start
        self.num_samples = math.ceil(sum(self.lengths) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Change the order of the next pass."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def stream_order(self) -> Tensor:
        """The whole stream's order (all ranks), before padding and sharding."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        parts: list[Tensor] = []
        offset = 0
        for n in self.lengths:
            local = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
            parts.append(local + offset)
            offset += n
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def __iter__(self) -> Iterator[int]:
        order = self.stream_order()
        padding = self.total_size - order.numel()
        if padding > 0 and order.numel():
            order = torch.cat(
                [order, order[-padding:] if padding <= order.numel() else order.repeat(padding)[:padding]]
            )
        mine = order[self.rank :: self.num_replicas][self.start :]
        self.start = 0
        return iter(mine.tolist())


class _StreamLoader(DataLoader):
    """The stream's DataLoader, resumable mid-stream without state of its own.

    On a restarted fit the :class:`TaskStreamSampler` starts after the batches that the trainer's progress says
    were trained; the empty ``state_dict`` tells Lightning that the loader is resumable.
    """

    def state_dict(self) -> dict[str, Any]:
        """No state: the position comes from the trainer's batch progress."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore (see :meth:`state_dict`)."""


def _resume_batches(trainer: Any) -> int:
    """Batches of the current epoch already trained when ``trainer`` resumes a fit mid-epoch (0 otherwise)."""
    try:
        loop = trainer.fit_loop
        if not loop.restarting:
            return 0
        epochs = loop.epoch_progress.total
        if epochs.started != epochs.processed + 1:  # not restarted in the middle of an epoch
            return 0
        return int(loop.epoch_loop.batch_progress.current.processed)
    except AttributeError:  # pragma: no cover - another Lightning layout: restart the pass
        return 0


def _labels_of(dataset: Dataset) -> Tensor:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].to(torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)  # type: ignore[arg-type]


class ContinualDataModule(LightningDataModule):
    """A sequence of tasks for continual learning, as ``(x, y, task)`` batches.

    Describe the sequence either as a list of datasets (``tasks``, one per task, with ``test_tasks`` for
    evaluation) or as one ``dataset`` plus ``task_fn(index, label) -> task`` (default: ``label //
    classes_per_task``, the split setting). Subclasses (:class:`PermutedMNIST1D`, :class:`SplitDigits`, ...)
    build the lists in :meth:`build_tasks`.

    Two ways to train through the sequence (``mode``):

    * ``"stream"``: one ``trainer.fit`` over the whole stream; the train loader yields task 0, then task 1, ...
      (shuffled within each task), so one epoch is one pass over the stream (use ``max_epochs=1`` for the
      single-pass setting). Works from the CLI; checkpoints, logs and progress bars span the whole run, and a
      fit resumed from a mid-stream checkpoint (``trainer.fit(..., ckpt_path=...)``) continues with the next
      batch. Under DDP each rank gets every ``world_size``-th item of the stream (:class:`TaskStreamSampler`).
    * ``"task"``: the train loader yields only :attr:`current_task`; call :meth:`set_task` and ``fit`` once
      per task with a fresh Trainer, keeping model and buffer alive (:func:`~lightning_per.replay.fit_tasks`).

    Validation and test loaders are one per task (all tasks, ``dataloader_idx == task``).

    Args:
        tasks: training datasets of ``(x, y)``, one per task.
        test_tasks: evaluation datasets, one per task.
        dataset: alternatively one training dataset split into tasks by ``task_fn``.
        test_dataset: the evaluation dataset split by ``task_fn``.
        task_fn: ``(index, label) -> task id``; default ``label // classes_per_task``.
        num_tasks: number of tasks (inferred from ``tasks`` when given).
        classes_per_task: classes in each task.
        shared_classes: every task has the same ``classes_per_task`` labels (permuted / rotated sequences).
        mode: ``"stream"`` (one fit over the stream) or ``"task"`` (one fit per task).
        batch_size: training batch size (the size of each incoming batch of the stream).
        eval_batch_size: batch size of the evaluation loaders.
        shuffle: shuffle the samples within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.

    Raises:
        ValueError: no or both descriptions, a task id from ``task_fn`` outside ``[0, num_tasks)``,
            or tasks whose samples differ in shape.

    Example::

        >>> from torch.utils.data import TensorDataset
        >>> t0 = TensorDataset(torch.randn(6, 3), torch.tensor([0, 1] * 3))
        >>> t1 = TensorDataset(torch.randn(6, 3), torch.tensor([2, 3] * 3))
        >>> dm = ContinualDataModule(tasks=[t0, t1], classes_per_task=2, batch_size=4)
        >>> dm.setup("fit")
        >>> [b[2].tolist() for b in dm.train_dataloader()]
        [[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]]
    """

    def __init__(
        self,
        tasks: list[Dataset] | None = None,
        test_tasks: list[Dataset] | None = None,
        dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        task_fn: Callable[[int, int], int] | None = None,
        num_tasks: int | None = None,
        classes_per_task: int = 2,
        shared_classes: bool = False,
        mode: Literal["stream", "task"] = "stream",
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if mode not in ("stream", "task"):
            raise ValueError(f"`mode` must be 'stream' or 'task', got {mode!r}.")
        if classes_per_task <= 0:
            raise ValueError(f"`classes_per_task` must be > 0, got {classes_per_task}.")
        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be > 0, got {batch_size}.")
        if eval_batch_size <= 0:
            raise ValueError(f"`eval_batch_size` must be > 0, got {eval_batch_size}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers}.")
        if num_tasks is not None and num_tasks <= 0:
            raise ValueError(f"`num_tasks` must be > 0, got {num_tasks}.")
        if tasks is not None and dataset is not None:
            raise ValueError("Give either `tasks` (one dataset per task) or `dataset` with `task_fn`, not both.")
        if tasks is not None:
            if num_tasks is not None and num_tasks != len(tasks):
                raise ValueError(f"`num_tasks` is {num_tasks} but `tasks` lists {len(tasks)} datasets.")
            num_tasks = len(tasks)
        self._tasks = tasks
        self._test_tasks = test_tasks
        self._dataset = dataset
        self._test_dataset = test_dataset
        self.task_fn = task_fn
        self.num_tasks = num_tasks
        self.classes_per_task = classes_per_task
        self.shared_classes = shared_classes
        self.mode = mode
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.current_task = 0
        self.train_tasks: list[TaskDataset] = []
        self.eval_tasks: list[TaskDataset] = []

    # ----------------------------------------------------------------------------------------------- building
    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """The ``(train, test)`` datasets of every task; subclasses generate them here."""
        if self._tasks is not None:
            return list(self._tasks), list(self._test_tasks or [])
        if self._dataset is None:
            raise ValueError("Describe the task sequence: give `tasks=[...]` or `dataset=...` (with `task_fn`).")
        train = self._split(self._dataset, "dataset")
        test = self._split(self._test_dataset, "test_dataset") if self._test_dataset is not None else []
        return train, test

    def _split(self, dataset: Dataset, name: str) -> list[Dataset]:
        labels = _labels_of(dataset)
        if self.task_fn is None:
            ids = labels // self.classes_per_task
        else:
            fn = self.task_fn
            ids = torch.tensor([int(fn(i, int(label))) for i, label in enumerate(labels.tolist())], dtype=torch.int64)
        num_tasks = self.num_tasks if self.num_tasks is not None else int(ids.max()) + 1 if ids.numel() else 0
        if self.num_tasks is None:
            self.num_tasks = num_tasks
        bad = (ids < 0) | (ids >= num_tasks)
        if bool(bad.any()):
            first = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"`task_fn` gave task id {int(ids[first])} for sample {first} of `{name}`, outside the declared "
                f"tasks [0, {num_tasks}); raise `num_tasks` or fix `task_fn`."
            )
        return [Subset(dataset, torch.nonzero(ids == t).flatten().tolist()) for t in range(num_tasks)]

    def setup(self, stage: str) -> None:
        """Build the tasks (once) and check that every task gives samples of the same shape."""
        if self.train_tasks:
            return
        train, test = self.build_tasks()
        if self.num_tasks is None:
            self.num_tasks = len(train)
        if len(train) != self.num_tasks:
            raise ValueError(f"`num_tasks` is {self.num_tasks} but the sequence has {len(train)} training tasks.")
        if test and len(test) != len(train):
            raise ValueError(f"`test_tasks` lists {len(test)} datasets for {len(train)} training tasks.")
        self.train_tasks = [TaskDataset(d, t) for t, d in enumerate(train)]
        self.eval_tasks = [TaskDataset(d, t) for t, d in enumerate(test)]
        shape: tuple[int, ...] | None = None
        for t, d in enumerate(self.train_tasks + self.eval_tasks):
            if len(d) == 0:
                continue
            s = tuple(d[0][0].shape)
            if shape is None:
                shape = s
            elif s != shape:
                raise ValueError(
                    f"Samples of task {d.task} have shape {s}, but task 0's have shape {shape}: every task "
                    f"(dataset #{t}) must give inputs of the same shape."
                )

    def set_task(self, task: int) -> None:
        """Select the task trained by the next ``fit`` in ``mode="task"``.

        Raises:
            ValueError: ``task`` is outside ``[0, num_tasks)``.
        """
        if self.num_tasks is not None and not 0 <= task < self.num_tasks:
            raise ValueError(f"`task` must be in [0, {self.num_tasks}), got {task}.")
        self.current_task = task

    # -------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Task after task (``"stream"``) or the current task only (``"task"``)."""
        if self.mode == "task":
            generator = torch.Generator().manual_seed(self.seed + self.current_task)
            return DataLoader(
                self.train_tasks[self.current_task],
                batch_size=self.batch_size,
                shuffle=self.shuffle,
                generator=generator,
                num_workers=self.num_workers,
            )
        stream: ConcatDataset = ConcatDataset(self.train_tasks)
        trainer = self.trainer
        world, rank, start, epoch = 1, 0, 0, 0
        if trainer is not None:
            world, rank, epoch = trainer.world_size, trainer.global_rank, trainer.current_epoch
            start = _resume_batches(trainer) * self.batch_size
        sampler = TaskStreamSampler(
            [len(d) for d in self.train_tasks],
            shuffle=self.shuffle,
            seed=self.seed,
            num_replicas=world,
            rank=rank,
            start=start,
        )
        sampler.set_epoch(epoch)
        return _StreamLoader(stream, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def _eval_loaders(self) -> list[DataLoader]:
        return [DataLoader(d, batch_size=self.eval_batch_size, num_workers=self.num_workers) for d in self.eval_tasks]

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per task over its evaluation set."""
        return self._eval_loaders()

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per task over its evaluation set."""
        return self._eval_loaders()

    def state_dict(self) -> dict[str, Any]:
        """The current task (plain values)."""
        return {"current_task": self.current_task}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the current task."""
        self.current_task = int(state_dict.get("current_task", 0))


# ------------------------------------------------------------------------------------- embedded sequences
def _mnist1d(num_samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """MNIST-1D signals ``(n, 40)`` and labels, generated offline and cached as ``.npz``.

    The cache lives in ``$LIGHTNING_PER_DATA`` (default ``~/.cache/lightning_per``), with the same file names as
    :func:`lightning_per.examples.data.load_mnist1d`. NumPy's global random state is saved and restored around the
    generator, which reseeds it.
    """
    num_samples = -(-num_samples // 10) * 10
    cache_dir = Path(os.environ.get("LIGHTNING_PER_DATA") or Path.home() / ".cache" / "lightning_per").expanduser()
    cache = cache_dir / f"mnist1d_n{num_samples}_seed{seed}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            x, y = saved["x"], saved["y"]
    else:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.train_split, args.seed = num_samples, 1.0, seed
        state = np.random.get_state()
        try:
            generated = make_dataset(args)
        finally:
            np.random.set_state(state)
        x, y = generated["x"].astype(np.float32), generated["y"].astype(np.int64)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz")
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, x=x, y=y)
            os.replace(tmp, cache)
        except OSError:  # pragma: no cover - a read-only home only loses the cache
            pass
    return torch.as_tensor(np.asarray(x, dtype=np.float32)), torch.as_tensor(np.asarray(y, dtype=np.int64))


def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(digits.target, dtype=torch.int64)


def _rotate(images: Tensor, degrees: float) -> Tensor:
    """Rotate ``(n, h, w)`` images about their centre (bilinear, zero padding)."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    matrix = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=images.dtype).expand(images.shape[0], 2, 3)
    grid = torch.nn.functional.affine_grid(matrix, [images.shape[0], 1, *images.shape[1:]], align_corners=False)
    out = torch.nn.functional.grid_sample(images.unsqueeze(1), grid, align_corners=False, padding_mode="zeros")
    return out.squeeze(1)


class _EmbeddedSequence(ContinualDataModule):
    """Shared constructor of the embedded sequences."""

    def __init__(
        self,
        num_tasks: int,
        classes_per_task: int,
        shared_classes: bool,
        mode: Literal["stream", "task"],
        batch_size: int,
        eval_batch_size: int,
        shuffle: bool,
        seed: int,
        num_workers: int,
    ) -> None:
        super().__init__(
            num_tasks=num_tasks,
            classes_per_task=classes_per_task,
            shared_classes=shared_classes,
            mode=mode,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            shuffle=shuffle,
            seed=seed,
            num_workers=num_workers,
        )


class PermutedMNIST1D(_EmbeddedSequence):
    """Permuted MNIST-1D: every task is the 10-class MNIST-1D problem under its own fixed permutation of the 40 inputs.

    Task 0 is unpermuted. Each task trains on its own ``train_per_task`` signals; all tasks are evaluated on the
    same ``test_per_task`` held-out signals under their permutation. Same classes in every task
    (``shared_classes=True``), as the MER paper's MNIST Permutations.

    Args:
        num_tasks: number of permutations.
        train_per_task: training signals per task.
        test_per_task: evaluation signals (shared by the tasks).
        data_seed: seed of the generated signals and of the permutations.
        mode: ``"stream"`` or ``"task"`` (see :class:`ContinualDataModule`).
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
        mode: Literal["stream", "task"] = "stream",
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_tasks, 10, True, mode, batch_size, eval_batch_size, shuffle, seed, num_workers)
        self.train_per_task = train_per_task
        self.test_per_task = test_per_task
        self.data_seed = data_seed

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Generate the signals and the permutations."""
        n_tasks = int(self.num_tasks or 0)
        n_train = self.train_per_task * n_tasks
        x, y = _mnist1d(n_train + self.test_per_task, self.data_seed)
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


class RotatedDigits(_EmbeddedSequence):
    """Rotated digits: scikit-learn's 8x8 digits, task ``t`` rotated by ``t * max_angle / num_tasks`` degrees.

    The MER paper's MNIST Rotations setting on the bundled digits: same 10 classes in every task
    (``shared_classes=True``). A fixed 80/20 split gives the pools; each task draws ``train_per_task``
    training images from the training pool and is evaluated on the whole (rotated) test pool.

    Args:
        num_tasks: number of rotations.
        max_angle: the rotations are spread over ``[0, max_angle)`` degrees.
        train_per_task: training images per task.
        data_seed: seed of the split and of the per-task draws.
        mode: ``"stream"`` or ``"task"``.
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
        mode: Literal["stream", "task"] = "stream",
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(num_tasks, 10, True, mode, batch_size, eval_batch_size, shuffle, seed, num_workers)
        self.max_angle = max_angle
        self.train_per_task = train_per_task
        self.data_seed = data_seed

    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """Split the digits and rotate each task's images."""
        x, y = _digits()
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
            xr = _rotate(x[pick].view(-1, 8, 8), angle).reshape(-1, 64)
            train.append(TensorDataset(xr, y[pick]))
            test.append(TensorDataset(_rotate(x[test_idx].view(-1, 8, 8), angle).reshape(-1, 64), y[test_idx]))
        return train, test


class SplitDigits(_EmbeddedSequence):
    """Split digits: scikit-learn's 8x8 digits in ``num_tasks`` tasks of ``10 // num_tasks`` classes (0-1, 2-3, ...).

    The Task-IL vs Class-IL setting: task ``t`` owns labels ``[t * c, (t + 1) * c)``.

    Args:
        num_tasks: number of tasks (a divisor of 10).
        test_fraction: share of each class held out for evaluation.
        data_seed: seed of the split.
        mode: ``"stream"`` or ``"task"``.
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
        mode: Literal["stream", "task"] = "stream",
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
            num_tasks, 10 // num_tasks, False, mode, batch_size, eval_batch_size, shuffle, seed, num_workers
        )
        self.test_fraction = test_fraction
        self.data_seed = data_seed

    def _load(self) -> tuple[Tensor, Tensor]:
        return _digits()

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
        mode: ``"stream"`` or ``"task"``.
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
        mode: Literal["stream", "task"] = "stream",
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__(
            num_tasks, test_fraction, data_seed, mode, batch_size, eval_batch_size, shuffle, seed, num_workers
        )
        self.num_samples = num_samples

    def _load(self) -> tuple[Tensor, Tensor]:
        return _mnist1d(self.num_samples, self.data_seed)
