"""Small classifiers for the embedded data sets, written with the two-line ``training_step`` contract."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_per.batch import weighted_mean
from lightning_per.functional.continual import task_class_mask

__all__ = ["MLP", "Classifier", "ContinualClassifier", "ConvNet1D"]


class ConvNet1D(nn.Module):
    """The MNIST-1D CNN shape: three 1D convolutions (stride 2) and a linear head.

    Args:
        length: input signal length.
        channels: convolution channels.
        num_classes: outputs.
    """

    def __init__(self, length: int = 40, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, 1, length)).shape[1]
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.head(self.features(x.unsqueeze(1) if x.ndim == 2 else x))


class MLP(nn.Module):
    """A ReLU multilayer perceptron.

    Args:
        in_features: input features (inputs are flattened).
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        num_classes: outputs.
    """

    def __init__(self, in_features: int = 64, hidden: int = 100, depth: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)


class Classifier(LightningModule):
    """A classifier for ``(x, y)`` batches; its ``training_step`` shows the two lines lightning-per needs.

    Args:
        arch: ``cnn1d`` (MNIST-1D) or ``mlp`` (digits, or MNIST-1D's MLP baseline).
        in_features: input length (40 for MNIST-1D, 64 for digits).
        num_classes: number of classes.
        width: CNN channels or MLP hidden units.
        optimizer: ``adam`` or ``sgd`` (with momentum).
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        schedule: ``none`` or ``cosine`` (per step, over the whole fit).
    """

    def __init__(
        self,
        arch: Literal["cnn1d", "mlp"] = "cnn1d",
        in_features: int = 40,
        num_classes: int = 10,
        width: int = 32,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        schedule: Literal["none", "cosine"] = "cosine",
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}.")
        self.save_hyperparameters()
        if arch == "cnn1d":
            self.net: nn.Module = ConvNet1D(in_features, width, num_classes)
        else:
            self.net = MLP(in_features, width, 2, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")  # line 1: one loss per sample
        self.log("train/loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        # line 2: apply the importance weights, hand the per-sample losses to LossTracker
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses, "logits": logits, "target": y}

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self) -> Any:  # noqa: D102
        hp: Any = self.hparams
        if hp.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.schedule == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ContinualClassifier(LightningModule):
    """An MLP for task sequences of ``(x, y, task)`` samples, Task-IL or Class-IL, written with the two-line contract.

    Task-IL (``scenario="task"``) reads the task id: with ``shared_classes`` (every task has the labels
    ``[0, classes_per_task)``) each task has its own head of ``classes_per_task`` outputs; otherwise the outputs of
    other tasks' labels are masked. Class-IL (``scenario="class"``) has one head over every class (``classes_per_task``
    outputs with shared classes, ``num_tasks * classes_per_task`` otherwise), and masks the classes not yet seen in
    training (split sequences). ``forward(x, task)`` gives the logits in the label order of the data, so the predicted
    label is their argmax (``TaskAccuracyMatrix(inputs=[0, 2])``).

    Args:
        in_features: input features (inputs are flattened).
        hidden: width of each hidden layer.
        depth: number of hidden layers (the MER paper's MLP: 2 x 100).
        num_tasks: tasks in the sequence.
        classes_per_task: classes in each task.
        shared_classes: every task has the same labels (permuted / rotated sequences).
        scenario: ``"task"`` (Task-IL) or ``"class"`` (Class-IL).
        optimizer: ``sgd`` or ``adam``.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.

    Raises:
        ValueError: a non-positive size or ``lr``, or an unknown ``scenario``.

    Example:
        >>> model = ContinualClassifier(in_features=4, num_tasks=2, classes_per_task=2, scenario="task")
        >>> model(torch.zeros(1, 4), torch.tensor([1])).isinf().tolist()
        [[True, True, False, False]]
    """

    seen_classes: Tensor

    def __init__(
        self,
        in_features: int = 40,
        hidden: int = 100,
        depth: int = 2,
        num_tasks: int = 5,
        classes_per_task: int = 2,
        shared_classes: bool = False,
        scenario: Literal["task", "class"] = "class",
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("num_tasks", num_tasks), ("classes_per_task", classes_per_task), ("lr", lr)):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}.")
        if scenario not in ("task", "class"):
            raise ValueError(f"`scenario` must be 'task' (Task-IL) or 'class' (Class-IL), got {scenario!r}.")
        self.save_hyperparameters()
        self.num_tasks = num_tasks
        self.classes_per_task = classes_per_task
        self.shared_classes = shared_classes
        self.scenario = scenario
        self.optimizer, self.lr, self.momentum, self.weight_decay = optimizer, lr, momentum, weight_decay
        shared_head = scenario == "class" and shared_classes
        self.num_outputs = classes_per_task if shared_head else num_tasks * classes_per_task
        self.net = MLP(in_features, hidden, depth, self.num_outputs)
        self.register_buffer("seen_classes", torch.zeros((), dtype=torch.int64))

    def forward(self, x: Tensor, task: Tensor | None = None) -> Tensor:
        """Logits in the data's label order: the task's head or block in Task-IL, the classes seen in Class-IL."""
        logits = self.net(x)
        c = self.classes_per_task
        if self.scenario == "task":
            if task is None:
                raise ValueError("Task-IL (`scenario='task'`) needs the task id of every sample: forward(x, task).")
            if self.shared_classes:  # one head per task
                return logits.view(-1, self.num_tasks, c)[torch.arange(logits.shape[0], device=x.device), task]
            return logits.masked_fill(~task_class_mask(task, c, self.num_outputs), float("-inf"))
        if self.shared_classes:
            return logits
        seen = torch.where(self.seen_classes > 0, self.seen_classes, self.num_outputs)  # no host sync
        return logits.masked_fill(torch.arange(self.num_outputs, device=x.device) >= seen, float("-inf"))

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        x, y = batch[0], batch[1]
        task = batch[2] if len(batch) > 2 else None
        if self.scenario == "class" and not self.shared_classes:
            self.seen_classes = torch.maximum(self.seen_classes, y.max() + 1)
        losses = F.cross_entropy(self(x, task), y, reduction="none")  # line 1: one loss per sample
        # line 2: apply the importance weights, hand the per-sample losses to the callbacks
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        x, y = batch[0], batch[1]
        task = batch[2] if len(batch) > 2 else None
        self.log("val/acc", (self(x, task).argmax(-1) == y).float().mean(), batch_size=y.numel(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:  # noqa: D102
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
