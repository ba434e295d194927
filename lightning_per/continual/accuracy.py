"""The accuracy matrix of a continual run (accuracy on every task after each task), ACC and BWT, for any module."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_per._checks import check_int
from lightning_per.continual.tasks import TaskSequence
from lightning_per.functional.continual import average_accuracy, backward_transfer
from lightning_per.plumbing.inference import scoring_mode

__all__ = ["TaskAccuracyMatrix", "evaluate_tasks"]

Key = int | str
Predict = Callable[[pl.LightningModule, Any], Tensor]


@torch.no_grad()
def evaluate_tasks(
    module: pl.LightningModule,
    datasets: Sequence[Dataset],
    eval_batch_size: int = 512,
    inputs: Key | list[Key] = 0,
    target: Key = 1,
    predict: Predict | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    trainer: pl.Trainer | None = None,
) -> Tensor:
    """Accuracy of ``module`` on each dataset (eval mode, no gradients; every submodule's mode restored afterwards).

    The predicted labels of a batch are ``predict(module, batch)``, by default the argmax over the last dimension of
    ``module(batch[k] for k in inputs)``; they are compared with ``batch[target]``.

    Args:
        module: the model.
        datasets: one evaluation dataset per task.
        eval_batch_size: evaluation batch size.
        inputs: the key(s) (tuple positions or dict keys) of the module's inputs in a batch, in call order.
        target: the key of the labels.
        predict: ``predict(module, batch) -> labels`` instead of the argmax of the outputs.
        collate_fn: collates the samples (``None``: ``default_collate``).
        trainer: applies its precision (input conversion, autocast) when given.

    Returns:
        float tensor ``(len(datasets),)`` of accuracies.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> model = pl.LightningModule()
        >>> model.forward = lambda x: torch.stack([-x[:, 0], x[:, 0]], dim=1)  # class 1 when x > 0
        >>> data = TensorDataset(torch.tensor([[1.0], [-1.0], [2.0]]), torch.tensor([1, 0, 0]))
        >>> evaluate_tasks(model, [data])
        tensor([0.6667])
    """
    keys = inputs if isinstance(inputs, list) else [inputs]
    context = trainer.precision_plugin.val_step_context() if trainer is not None else nullcontext()
    accs = []
    with scoring_mode(module), context:  # a submodule the user keeps in eval mode (frozen) stays in it
        for dataset in datasets:
            correct, total = 0, 0
            for batch in DataLoader(dataset, batch_size=eval_batch_size, collate_fn=collate_fn):
                if trainer is not None:
                    batch = trainer.precision_plugin.convert_input(batch)
                batch = move_data_to_device(batch, module.device)
                pred = predict(module, batch) if predict is not None else module(*[batch[k] for k in keys]).argmax(-1)
                y = batch[target]
                correct += int((pred.reshape(y.shape) == y).sum())
                total += y.numel()
            accs.append(correct / max(total, 1))
    return torch.tensor(accs)


class TaskAccuracyMatrix(Callback):
    """Evaluate on every task's evaluation set each time a task ends; log ``cl/acc``, ``cl/bwt`` and ``cl/task``.

    ``matrix[i, j]`` is the accuracy on task ``j`` after training on task ``i`` (NaN until then); ``acc``, ``bwt``
    and ``diagonal`` summarise it. The training data must be a ``TaskSequence`` with evaluation sets. In
    ``mode="stream"`` a task ends when the first batch of a later task arrives, and the last one when training ends;
    in ``mode="task"`` each ``fit`` ends one task, so pass the same instance to every per-task Trainer. The
    predicted label is the argmax of ``module(*[batch[k] for k in inputs])``, or ``predict(module, batch)``.

    Args:
        inputs: the key(s) (tuple positions or dict keys) of the module's inputs in an evaluation batch, in call
            order (e.g. ``[0, 2]`` also passes the task id, for a Task-IL model).
        target: the key of the labels.
        predict: ``predict(module, batch) -> labels`` instead of the argmax; an import path in YAML.
        eval_batch_size: batch size of the evaluation passes.
        verbose: print each row (rank 0).

    Raises:
        ValueError: ``eval_batch_size <= 0``; at setup, a datamodule that is not a ``TaskSequence`` with evaluation
            sets, or evaluation samples without the ``inputs`` or ``target`` keys.
        TypeError: a key that is neither an int nor a str.

    Example:
        >>> matrix = TaskAccuracyMatrix(inputs=[0, 2])  # forward(x, task)
        >>> matrix.completed, matrix.matrix.shape
        (0, torch.Size([0, 0]))
    """

    def __init__(
        self,
        inputs: Key | list[Key] = 0,
        target: Key = 1,
        predict: Predict | None = None,
        eval_batch_size: int = 512,
        verbose: bool = False,
    ) -> None:
        check_int("eval_batch_size", eval_batch_size, 1)
        for key in inputs if isinstance(inputs, list) else [inputs]:
            _check_key("inputs", key)
        _check_key("target", target)
        self.inputs = inputs
        self.target = target
        self.predict = predict
        self.eval_batch_size = eval_batch_size
        self.verbose = verbose
        self.matrix: Tensor = torch.zeros(0, 0)
        self._next_task = 0
        self._trained = -1  # the latest task trained on (stream mode)
        self._warned = False

    @property
    def completed(self) -> int:
        """The number of rows filled."""
        return self._next_task

    @property
    def diagonal(self) -> Tensor:
        """Each completed task's accuracy right after it was trained."""
        n = self._next_task
        return torch.diagonal(self.matrix[:n, :n]).clone()

    @property
    def acc(self) -> float:
        """ACC after the last completed task, over the tasks trained so far (NaN if none).

        Once every task is completed this is the usual ACC over all tasks; before, future tasks do not count, as in
        ``bwt``.
        """
        n = self._next_task
        return float("nan") if n == 0 else average_accuracy(self.matrix[:n, :n])

    @property
    def bwt(self) -> float:
        """BWT over the completed rows."""
        n = self._next_task
        return float("nan") if n == 0 else backward_transfer(self.matrix[:n, :n])

    def _sequence(self, trainer: pl.Trainer) -> TaskSequence | None:
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, TaskSequence) and dm.eval_tasks:
            return dm
        if not self._warned:
            self._warned = True
            rank_zero_warn(
                "TaskAccuracyMatrix needs a `TaskSequence` with evaluation sets (`test_tasks`) as the datamodule; got "
                f"{type(dm).__name__}{' without evaluation sets' if isinstance(dm, TaskSequence) else ''}: no rows."
            )
        return None

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> bool:
        """Fill row ``task``; ``False`` when there is nothing to evaluate (no evaluation sets, unknown task)."""
        dm = self._sequence(trainer)
        if dm is None:
            return False
        if self.matrix.shape[0] != len(dm.eval_tasks):
            self.matrix = torch.full((len(dm.eval_tasks),) * 2, float("nan"))
            self._next_task = 0
        if not 0 <= task < self.matrix.shape[0]:
            return False
        self.matrix[task] = evaluate_tasks(
            pl_module,
            dm.eval_tasks,
            self.eval_batch_size,
            self.inputs,
            self.target,
            self.predict,
            dm.collate_fn,
            trainer,
        )
        self._next_task = task + 1
        metrics = {"cl/acc": self.acc, "cl/bwt": self.bwt, "cl/task": float(task)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.verbose:
            row = " ".join(f"{a:.3f}" for a in self.matrix[task, : task + 1].tolist())
            rank_zero_info(f"after task {task}: acc on tasks 0..{task} = {row}; ACC={self.acc:.4f}")
        return True

    def _record_until(self, trainer: pl.Trainer, pl_module: pl.LightningModule, last: int) -> None:
        while self._next_task <= last and self._record(trainer, pl_module, self._next_task):
            pass

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fill the rows of the tasks this fit finished (the current task, or every task seen in the stream)."""
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, TaskSequence):
            return
        if dm.mode == "task":
            if self._next_task <= dm.current_task:
                self._record(trainer, pl_module, dm.current_task)
        else:
            self._record_until(trainer, pl_module, self._trained)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, TaskSequence) or not dm.eval_tasks:
            got = type(dm).__name__ + (" without evaluation sets" if isinstance(dm, TaskSequence) else "")
            raise ValueError(
                "TaskAccuracyMatrix evaluates every task after each one, so the datamodule must be a "
                f"`lightning_per.continual.TaskSequence` with evaluation sets (`test_tasks=[...]`); got {got}. For "
                "your own datamodule, call `lightning_per.continual.evaluate_tasks(model, datasets)` yourself."
            )
        sample = dm.eval_tasks[0][0]
        for key in self.inputs if isinstance(self.inputs, list) else [self.inputs]:
            _check_sample_key("inputs", key, sample)
        _check_sample_key("target", self.target, sample)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        if isinstance(dm, TaskSequence) and dm.mode == "stream" and trainer.max_epochs not in (1, None):
            rank_zero_warn(
                f"`TaskAccuracyMatrix` fills its rows during the first pass over the stream, but `max_epochs` is "
                f"{trainer.max_epochs}: later passes revisit old tasks. Use `max_epochs=1` for the continual setting."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, TaskSequence) or dm.mode != "stream":
            return
        task = dm.task_of_batch(batch_idx)
        self._trained = max(self._trained, task)
        self._record_until(trainer, pl_module, task - 1)  # a later task arrived: earlier ones ended

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the last batch of the last epoch: fill the rows now, before an end-of-fit checkpoint is written
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or (
            batch_idx + 1 >= trainer.num_training_batches
        )
        if last_epoch and last_batch:
            self._finish(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module)  # stopped early (max_steps, early stopping): fill what remains

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"matrix": self.matrix.clone(), "next_task": self._next_task, "trained": self._trained}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.matrix = state_dict["matrix"]
        self._next_task = int(state_dict["next_task"])
        self._trained = int(state_dict["trained"])


def _check_key(name: str, key: Any) -> None:
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TypeError(f"`{name}` must hold tuple positions (int) or dict keys (str), got {key!r}.")


def _check_sample_key(name: str, key: Key, sample: Any) -> None:
    """Refuse a key the evaluation samples lack, before the first task is trained rather than after it.

    Raises:
        ValueError: ``sample`` has no such key or position.
    """
    if isinstance(sample, Mapping):
        if key not in sample:
            raise ValueError(
                f"TaskAccuracyMatrix(`{name}`={key!r}): the evaluation samples are dicts with the keys "
                f"{sorted(map(str, sample))}; name one of them."
            )
        return
    size = len(sample) if isinstance(sample, (tuple, list)) else 1
    if not isinstance(key, int) or not -size <= key < size:
        raise ValueError(
            f"TaskAccuracyMatrix(`{name}`={key!r}): the evaluation samples are {type(sample).__name__}s of {size} "
            f"fields; give a position in [0, {size})."
        )
