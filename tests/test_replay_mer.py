"""lightning_per.replay.MER around the user's own module: the update by hand, streams, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, seed_everything
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import lightning_per as lp
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence
from lightning_per.replay import MER
from tests.helpers import DictDataset, DictModule, small_trainer, toy_tasks


class LinearModule(LightningModule):
    """A user's module around one linear layer (tuple samples), SGD at lr 0.5 from its own optimizer."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        losses = F.cross_entropy(self(x), y, reduction="none")
        self.log("train/inner", losses.mean())  # silenced within MER's inner steps
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)  # MER takes its learning rate only


def test_mer_around_a_user_module_matches_a_hand_computation(tmp_path: Path) -> None:
    lr, beta, gamma, s = 0.5, 0.3, 0.6, 2
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.2, -0.1], [0.0, 0.3]]))
        net.bias.zero_()
    model = MER(
        LinearModule(net),
        capacity=5,
        replay_batch_size=2,
        batches_per_example=s,
        reptile_beta=beta,
        reptile_gamma=gamma,
    )
    memory_x = torch.tensor([[0.5, -1.0], [-2.0, 0.5], [1.5, 1.0]])
    memory_y = torch.tensor([0, 1, 0])
    model.buffer.add((memory_x, memory_y, torch.zeros(3, dtype=torch.long)))
    drawn: list[list[int]] = []
    sample = model.buffer.sample

    def spy(n: int) -> Any:
        out = sample(n)
        drawn.append(out.slots.tolist())
        return out

    model.buffer.sample = spy  # type: ignore[method-assign]
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    dm = TaskSequence(tasks=[TensorDataset(x, y)], batch_size=1)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    trainer = small_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert model.inner_lr == lr  # the user optimizer's learning rate, plain SGD steps

    def sgd(w: Tensor, b: Tensor, xi: Tensor, yi: int) -> tuple[Tensor, Tensor]:
        d = (w @ xi + b).softmax(0) - torch.eye(2)[yi]  # d CE / d logits = softmax - onehot
        return w - lr * torch.outer(d, xi), b - lr * d

    assert [len(d) for d in drawn] == [2] * s  # replay_batch_size = 2 distinct replays in each of the s batches
    w, b = w0.clone(), b0.clone()
    for slots in drawn:
        wa, ba = w.clone(), b.clone()
        for i in slots:  # one SGD step per sample: the replays, then the new example
            w, b = sgd(w, b, memory_x[i], int(memory_y[i]))
        w, b = sgd(w, b, x[0], int(y[0]))
        w, b = wa + beta * (w - wa), ba + beta * (b - ba)  # within-batch Reptile
    w, b = w0 + gamma * (w - w0), b0 + gamma * (b - b0)  # across-batch Reptile
    assert torch.allclose(net.weight, w, atol=1e-6) and torch.allclose(net.bias, b, atol=1e-6)
    assert model.buffer.seen == 4 and trainer.global_step == 3 * s  # reservoir update after; every inner step counts
    assert "train/inner" not in trainer.callback_metrics and "train/loss" in trainer.callback_metrics


@pytest.mark.parametrize("variant", ["example", "batch"])
def test_mer_wraps_a_user_module_through_a_stream_of_dict_samples(tmp_path: Path, variant: str) -> None:
    seed_everything(0)
    dm = TaskSequence(
        tasks=[DictDataset(t) for t in toy_tasks()], test_tasks=[DictDataset(t) for t in toy_tasks()], batch_size=4
    )
    model = MER(
        DictModule(), capacity=8, replay_batch_size=2, batches_per_example=2, reptile_beta=0.5, variant=variant, lr=0.01
    )
    matrix = TaskAccuracyMatrix(inputs="x", target="y")
    small_trainer(tmp_path, max_epochs=1, callbacks=[matrix]).fit(model, datamodule=dm)
    assert model.buffer.seen == 36 and len(model.buffer) == 8
    assert model.inner_lr == 0.01
    assert matrix.completed == 3 and not torch.isnan(matrix.matrix).any()
    sizes = {b["x"].shape[0] for b in model.module.batches}  # type: ignore[union-attr]
    assert sizes == {1} if variant == "example" else max(sizes) == 1  # per-sample inner steps
    replayed = [b for b in model.module.batches if (b["index"] == -1).any()]  # type: ignore[union-attr]
    assert replayed and all(b["weight"].eq(1).all() for b in replayed)


def test_mer_with_another_optimizer_and_no_lr_is_refused_with_the_fix(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=[DictDataset(t) for t in toy_tasks()], batch_size=4)
    model = MER(DictModule(), capacity=8, replay_batch_size=2, batches_per_example=1)  # DictModule trains with Adam
    with pytest.raises(ValueError, match=r"plain SGD.*Adam\(lr=0\.01\).*Pass `MER\(\.\.\., lr=\.\.\.\)`"):
        small_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)


def test_mer_stops_its_inner_steps_at_max_steps(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=[DictDataset(t) for t in toy_tasks()], batch_size=4)
    model = MER(DictModule(), capacity=8, replay_batch_size=2, batches_per_example=3, lr=0.01)
    trainer = small_trainer(tmp_path, max_epochs=1, max_steps=7)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 7  # each incoming example alone would take 3 batches of up to 3 inner steps
