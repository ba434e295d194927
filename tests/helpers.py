"""Test helpers: tiny data, a tiny classifier that records what it was fed, small Trainers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import lightning_per as lp


def blobs(n: int = 64, features: int = 4, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    centers = torch.randn(classes, features, generator=g) * 2
    x = centers[y] + torch.randn(n, features, generator=g)
    return TensorDataset(x, y)


class DictDataset(Dataset):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x, y = self.base[i]
        return {"x": x, "y": y}


class ListDataset(DictDataset):
    def __getitem__(self, i: int) -> list[Tensor]:  # type: ignore[override]
        x, y = self.base[i]
        return [x, y]


class TinyClassifier(LightningModule):
    """Linear classifier that records the indices and weights of every training batch."""

    def __init__(self, features: int = 4, classes: int = 3, lr: float = 0.1, return_mode: str = "ok") -> None:
        super().__init__()
        self.net = nn.Linear(features, classes)
        self.lr = lr
        self.return_mode = return_mode
        self.seen_index: list[list[int]] = []
        self.seen_weight: list[list[float]] = []
        self.epoch_index: dict[int, list[int]] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch.data, dict):
            return batch["x"], batch["y"]
        x, y = batch
        return x, y

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = self._unpack(batch)
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if self.training and torch.is_grad_enabled():
            self.seen_index.append(batch.index.tolist())
            self.seen_weight.append(batch.weight.tolist())
            self.epoch_index.setdefault(self.current_epoch, []).extend(batch.index.tolist())
        if self.return_mode == "tensor":
            return losses.mean()
        if self.return_mode == "short":
            return {"loss": losses.mean(), "per_sample_loss": losses[:-1]}
        if self.return_mode == "nan":
            losses = losses.clone()
            losses[0] = float("nan")
            return {"loss": losses[1:].mean(), "per_sample_loss": losses}
        return {
            "loss": lp.weighted_mean(losses, batch),
            "per_sample_loss": losses,
            "logits": logits,
            "target": y,
            "embedding": x,
            "score": losses.detach() + 1,
        }

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def small_trainer(tmp_path: Any, **kwargs: Any) -> Trainer:
    defaults: dict[str, Any] = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return Trainer(**defaults)


class RecordingLogger(Logger):
    """Keeps what reaches the loggers: ``writes`` (the metric dicts) and ``steps`` (the step of each)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[dict[str, float]] = []
        self.steps: list[int | None] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.writes.append(dict(metrics))
        self.steps.append(step)


# ------------------------------------------------------------------------------ multi-process runs (gloo, CPU)
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on this machine now (for ``MASTER_PORT``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ddp_env(**extra: str) -> dict[str, str]:
    """This process's environment without a launcher's rank variables, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def run_two_processes(script: Path, out: Path, *args: str, timeout: int = 300) -> list[dict[str, Any]]:
    """Run ``script OUT ARGS`` (it starts 2 processes); return what ranks 0 and 1 wrote to ``OUT/rank{r}.json``."""
    run = subprocess.run(
        [sys.executable, str(script), str(out), *args],
        env=ddp_env(MASTER_PORT=str(free_port())),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


class SaveOnRankZeroOnly(Callback):
    """Builds and writes a checkpoint on global rank 0 alone after ``batches`` training batches.

    As a callback that saves on one process would: ``trainer.save_checkpoint`` itself ends with a barrier, so it must
    be called on every process, but building the checkpoint (every callback's ``state_dict`` and the module's
    ``on_save_checkpoint``) on one process must not wait for the others.
    """

    def __init__(self, path: Path, batches: int) -> None:
        self.path = path
        self.batches = batches
        self._seen = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._seen += 1
        if self._seen == self.batches and trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(trainer._checkpoint_connector.dump_checkpoint(), self.path)


class SaveOnEveryProcess(Callback):
    """The documented recipe: every process calls ``trainer.save_checkpoint(path)`` after ``batches`` batches.

    Lightning builds the checkpoint on every process, writes it on global rank 0 and waits in a barrier: called on one
    process only (``if trainer.is_global_zero: ...``), that barrier would wait for the others forever.
    """

    def __init__(self, path: Path, batches: int) -> None:
        self.path = path
        self.batches = batches
        self._seen = 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        self._seen += 1
        if self._seen == self.batches:
            trainer.save_checkpoint(self.path)
