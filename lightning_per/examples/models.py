"""Small classifiers for the embedded data sets, written with the two-line ``training_step`` contract."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_per.data import weighted_mean

__all__ = ["Classifier", "ConvNet1D", "MLP"]


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
        self.log("train/loss", losses.mean(), on_step=False, on_epoch=True, prog_bar=True)
        # line 2: apply the importance weights, hand the per-sample losses to LossTracker
        return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses, "logits": logits, "target": y}

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y))
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
