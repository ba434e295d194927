"""Task sequences for continual learning, as a ``PrioritizedDataModule`` of your datasets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset, default_collate

from lightning_per._checks import check_choice, check_int
from lightning_per.continual.stream import StreamLoader, TaskStreamSampler, resume_batches
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import IndexedCollate, IndexedDataset
from lightning_per.tree import SampleSpec

__all__ = ["TaskDataset", "TaskSequence"]

SequenceMode = Literal["stream", "task"]


class TaskDataset(Dataset):
    """Wrap a task's dataset so that every sample also carries its task id (an int64 tensor).

    A tuple or list sample ``(x, y)`` becomes ``(x, y, task)``, a dict sample gets the key ``"task"``, any other
    sample ``s`` becomes ``(s, task)``.

    Args:
        dataset: the task's samples.
        task: the task id.

    Example:
        >>> TaskDataset(TensorDataset(torch.zeros(2, 3), torch.tensor([4, 5])), task=2)[1][1:]
        (tensor(5), tensor(2))
    """

    def __init__(self, dataset: Dataset, task: int) -> None:
        check_int("task", task, 0)
        _check_task_dataset("dataset", dataset)
        self.dataset = dataset
        self.task = task

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        task = torch.tensor(self.task, dtype=torch.int64)
        if isinstance(sample, Mapping):
            return {**sample, "task": task}
        if isinstance(sample, (tuple, list)):
            return (*sample, task)
        return sample, task


class TaskSequence(PrioritizedDataModule):
    """A sequence of tasks for continual learning: one fit over the stream, or one fit per task.

    Describe the sequence as one dataset per task (``tasks``, and ``test_tasks`` for evaluation), or as one
    ``dataset`` split by ``task_fn(index, label) -> task`` (default ``label // classes_per_task``; the label is
    ``sample[1]``); subclasses build the lists in ``build_tasks``. Samples keep your structure; with ``task_ids``
    each also carries its task id (``TaskDataset``). Training batches are ``PrioritizedBatch`` (weights 1;
    ``batch.index`` numbers the samples of the concatenated tasks). In ``mode="stream"`` one ``trainer.fit`` yields
    task 0, then task 1, ... (shuffled within each task): one epoch is one pass over the stream, resumable mid-stream,
    and under DDP each rank gets every ``world_size``-th item. In ``mode="task"`` the loader yields only
    ``current_task``: call ``set_task`` and ``fit`` once per task (``fit_tasks``). The validation and test loaders
    run over every task's evaluation set.

    Args:
        tasks: training datasets, one per task.
        test_tasks: evaluation datasets, one per task.
        dataset: alternatively one training dataset split into tasks by ``task_fn``.
        test_dataset: the evaluation dataset split by ``task_fn``.
        task_fn: ``(index, label) -> task id``; default ``label // classes_per_task``.
        num_tasks: number of tasks (inferred from ``tasks`` when given).
        classes_per_task: classes in each task (for the default ``task_fn``).
        task_ids: append each sample's task id to it (``TaskDataset``).
        mode: ``"stream"`` (one fit over the stream) or ``"task"`` (one fit per task).
        repeats: each incoming batch is trained this many times in a row (several gradient steps per incoming batch,
            the "iterations" of online continual learning); replay offers it to its buffer once.
        batch_size: training batch size (the size of each incoming batch of the stream).
        eval_batch_size: batch size of the evaluation loaders.
        shuffle: shuffle the samples within each task.
        seed: seed of the order.
        num_workers: DataLoader workers.
        collate_fn: collates samples (``None``: ``default_collate``); an import path in YAML.

    Raises:
        ValueError: no or both descriptions, a task id from ``task_fn`` outside ``[0, num_tasks)``, tasks whose
            samples differ in structure or shape, or a non-positive size.

    Example:
        >>> t0 = TensorDataset(torch.randn(6, 3), torch.tensor([0, 1] * 3))
        >>> t1 = TensorDataset(torch.randn(6, 3), torch.tensor([2, 3] * 3))
        >>> dm = TaskSequence(tasks=[t0, t1], batch_size=4)
        >>> dm.setup("fit")
        >>> [b[2].tolist() for b in dm.train_dataloader()]  # the task ids of the stream's batches
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
        task_ids: bool = True,
        mode: SequenceMode = "stream",
        repeats: int = 1,
        batch_size: int = 10,
        eval_batch_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            seed=seed,
            collate_fn=collate_fn,
        )
        check_choice("mode", mode, get_args(SequenceMode))
        check_int("classes_per_task", classes_per_task, 1)
        check_int("repeats", repeats, 1)
        check_int("num_tasks", num_tasks, 1, optional=True)
        if tasks is not None and dataset is not None:
            raise ValueError("Give either `tasks` (one dataset per task) or `dataset` with `task_fn`, not both.")
        for name, given in (("tasks", tasks), ("test_tasks", test_tasks)):
            if given is None:
                continue
            if isinstance(given, Dataset) or not isinstance(given, (list, tuple)):
                raise TypeError(f"`{name}` must be a list of datasets, one per task; got {type(given).__name__}.")
            if name == "tasks" and not given:
                raise ValueError("`tasks` is empty: give one training dataset per task (at least one).")
            for t, task in enumerate(given):
                _check_task_dataset(f"{name}[{t}]", task)
        for name, one in (("dataset", dataset), ("test_dataset", test_dataset)):
            if one is not None:
                _check_task_dataset(name, one)
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
        self.task_ids = task_ids
        self.mode = mode
        self.repeats = repeats
        self.shuffle = shuffle
        self.current_task = 0
        self.train_tasks: list[Dataset] = []
        self.eval_tasks: list[Dataset] = []
        self._stream: TaskStreamSampler | None = None

    # ----------------------------------------------------------------------------------------------- building
    def build_tasks(self) -> tuple[list[Dataset], list[Dataset]]:
        """The ``(train, test)`` datasets of every task; subclasses generate them here."""
        if self._tasks is not None:
            return list(self._tasks), list(self._test_tasks or [])
        if self._dataset is None:
            raise ValueError("Describe the task sequence: give `tasks=[...]` or `dataset=...` (with `task_fn`).")
        train = self._split_by_task(self._dataset, "dataset")
        test = self._split_by_task(self._test_dataset, "test_dataset") if self._test_dataset is not None else []
        return train, test

    def _split_by_task(self, dataset: Dataset, name: str) -> list[Dataset]:
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
        """Build the tasks (once) and check that every task gives samples of the same structure and shapes."""
        if self.train_tasks:
            return
        train, test = self.build_tasks()
        if self.num_tasks is None:
            self.num_tasks = len(train)
        if len(train) != self.num_tasks:
            raise ValueError(f"`num_tasks` is {self.num_tasks} but the sequence has {len(train)} training tasks.")
        if test and len(test) != len(train):
            raise ValueError(f"`test_tasks` lists {len(test)} datasets for {len(train)} training tasks.")
        wrap = (lambda d, t: TaskDataset(d, t)) if self.task_ids else (lambda d, t: d)
        self.train_tasks = [wrap(d, t) for t, d in enumerate(train)]
        self.eval_tasks = [wrap(d, t) for t, d in enumerate(test)]
        _check_same_samples(self.train_tasks + self.eval_tasks, len(self.train_tasks))
        self.train_dataset = ConcatDataset(self.train_tasks)
        self.val_dataset = self.test_dataset = ConcatDataset(self.eval_tasks) if self.eval_tasks else None

    def set_task(self, task: int) -> None:
        """Select the task trained by the next ``fit`` in ``mode="task"``.

        Raises:
            ValueError: ``task`` is outside ``[0, num_tasks)``.
        """
        if self.num_tasks is not None and not 0 <= task < self.num_tasks:
            raise ValueError(f"`task` must be in [0, {self.num_tasks}), got {task}.")
        self.current_task = task

    def task_of_batch(self, batch_idx: int) -> int:
        """The task of the last sample of training batch ``batch_idx`` of the current pass (no device access)."""
        stream = self._stream
        if stream is None or len(stream) == 0:
            return self.current_task
        position = min((batch_idx // self.repeats + 1) * self.batch_size, len(stream)) - 1
        return stream.task_at(max(position, 0))

    # -------------------------------------------------------------------------------------------- loaders
    def train_dataloader(self) -> StreamLoader:
        """Task after task (``"stream"``) or the current task only (``"task"``), as prioritized batches."""
        if not self.train_tasks:
            self.setup("fit")
        trainer = self.trainer
        world, rank, epoch, done = 1, 0, 0, 0
        if trainer is not None:
            world, rank, epoch = trainer.world_size, trainer.global_rank, trainer.current_epoch
            done = resume_batches(trainer)
        sampler = TaskStreamSampler(
            [len(d) for d in self.train_tasks],  # type: ignore[arg-type]
            shuffle=self.shuffle,
            seed=int(self.seed or 0),
            num_replicas=world,
            rank=rank,
            start=(done // self.repeats) * self.batch_size,
            streamed_tasks=None if self.mode == "stream" else [self.current_task],
        )
        sampler.set_epoch(epoch)
        self._stream = sampler
        return StreamLoader(
            IndexedDataset(ConcatDataset(self.train_tasks)),
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=IndexedCollate(self.collate_fn),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            repeats=self.repeats,
            skip=done % self.repeats,
        )

    def state_dict(self) -> dict[str, Any]:
        """The current task (plain values)."""
        return {"current_task": self.current_task}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the current task."""
        self.current_task = int(state_dict.get("current_task", 0))


def _labels_of(dataset: Dataset) -> Tensor:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].to(torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)  # type: ignore[arg-type]


def _check_same_samples(datasets: Sequence[Dataset], num_train: int) -> None:
    """Every task's samples have the structure, dtypes and shapes of task 0's (a buffer stores them side by side)."""
    first: SampleSpec | None = None
    for i, d in enumerate(datasets):
        if len(d) == 0:  # type: ignore[arg-type]
            continue
        try:
            spec = SampleSpec.of(default_collate([d[0]]))
        except (TypeError, ValueError):  # samples a buffer cannot store (strings, ...): nothing to compare
            return
        if first is None:
            first = spec
        elif spec != first:
            kind, t = ("training", i) if i < num_train else ("evaluation", i - num_train)
            raise ValueError(
                f"Samples of task {t} ({kind} set) are {spec!r}, but task 0's are {first!r}: every task must give "
                "samples of the same structure, dtypes and shapes."
            )


def _check_task_dataset(name: str, dataset: Any) -> None:
    """Refuse a task that cannot be indexed: a task sequence orders and shards its samples by index.

    Raises:
        TypeError: an ``IterableDataset``, or an object without ``__len__`` and ``__getitem__``.
    """
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"`{name}` must be a map-style dataset with `__len__` and `__getitem__` (a task sequence orders and shards "
            f"its samples by index); got {type(dataset).__name__}. Materialise a task's stream into a map-style "
            "dataset (e.g. a `TensorDataset`)."
        )
