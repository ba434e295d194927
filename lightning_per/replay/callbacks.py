"""The accuracy matrix of a continual run (accuracy on every task after each task), ACC and BWT."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per.replay.functional import average_accuracy, backward_transfer
from lightning_per.replay.module import ContinualModule, evaluate_tasks

__all__ = ["TaskAccuracyMatrix"]


class TaskAccuracyMatrix(Callback):
    """Evaluate on every task's evaluation set each time a task ends; log ``cl/acc`` and ``cl/bwt``.

    ``matrix[i, j]`` is the accuracy on task ``j`` after training on task ``i`` (NaN until then). In
    ``mode="stream"`` a task ends when the first batch of a later task arrives, and the last one when training
    ends; in ``mode="task"`` each ``fit`` ends one task, so pass the same instance to every per-task Trainer.
    Needs a :class:`~lightning_per.replay.ContinualDataModule` with evaluation sets and a
    :class:`~lightning_per.replay.ContinualModule`.

    Args:
        eval_batch_size: batch size of the evaluation passes.
        verbose: print each row (rank 0).

    Example::

        trainer = Trainer(max_epochs=1, callbacks=[TaskAccuracyMatrix()])
    """

    def __init__(self, eval_batch_size: int = 512, verbose: bool = False) -> None:
        self.eval_batch_size = eval_batch_size
        self.verbose = verbose
        self.matrix: Tensor = torch.zeros(0, 0)
        self._next_task = 0

    @property
    def completed(self) -> int:
        """The number of rows filled."""
        return self._next_task

    @property
    def acc(self) -> float:
        """ACC after the last completed task, over the tasks trained so far (NaN if none).

        Once every task is completed this is the usual ACC over all tasks; before, future tasks (near 0 in
        Class-IL) do not count, as in ``bwt``.
        """
        n = self._next_task
        if n == 0:
            return float("nan")
        return average_accuracy(self.matrix[:n, :n])

    @property
    def bwt(self) -> float:
        """BWT over the completed rows."""
        if self._next_task == 0:
            return float("nan")
        return backward_transfer(self.matrix[: self._next_task, : self._next_task])

    def _ensure(self, num_tasks: int) -> None:
        if self.matrix.shape[0] != num_tasks:
            self.matrix = torch.full((num_tasks, num_tasks), float("nan"))
            self._next_task = 0

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> bool:
        """Fill row ``task``; ``False`` when there is nothing to evaluate (no evaluation sets, unknown task)."""
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if not isinstance(pl_module, ContinualModule) or not getattr(dm, "eval_tasks", None):
            return False
        self._ensure(len(dm.eval_tasks))
        if not 0 <= task < self.matrix.shape[0]:
            return False
        self.matrix[task] = evaluate_tasks(pl_module, dm.eval_tasks, self.eval_batch_size)
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
        dm = trainer.datamodule  # type: ignore[attr-defined]
        mode = getattr(dm, "mode", None)
        if mode == "task":
            task = int(dm.current_task)
            if self._next_task <= task:
                self._record(trainer, pl_module, task)
        elif mode == "stream":
            self._record_until(trainer, pl_module, int(getattr(pl_module, "seen_tasks", 0)) - 1)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        if getattr(dm, "mode", None) == "stream" and trainer.max_epochs not in (1, None):
            rank_zero_warn(
                f"`TaskAccuracyMatrix` fills its rows during the first pass over the stream, but `max_epochs` is "
                f"{trainer.max_epochs}: later passes revisit old tasks. Use `max_epochs=1` for the continual setting."
            )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        dm = trainer.datamodule  # type: ignore[attr-defined]
        if getattr(dm, "mode", None) != "stream" or len(batch) != 3:
            return
        self._record_until(trainer, pl_module, int(batch[2].max()) - 1)  # a later task arrived: earlier ones ended

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
        return {"matrix": self.matrix.clone(), "next_task": self._next_task}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.matrix = state_dict.get("matrix", torch.zeros(0, 0))
        self._next_task = int(state_dict.get("next_task", 0))
