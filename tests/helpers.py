"""Test helpers: tiny data, a tiny classifier that records what it was fed, small Trainers and the one small fit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from torch import Tensor, nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset

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


def blob_datamodule(
    n: int = 64, batch_size: int = 8, *, features: int = 4, classes: int = 3, **kwargs: Any
) -> lp.PrioritizedDataModule:
    """A ``PrioritizedDataModule`` over ``blobs(n)``, with ``strategy='uniform'`` and ``seed=0`` unless given."""
    kwargs.setdefault("strategy", "uniform")
    kwargs.setdefault("seed", 0)
    return lp.PrioritizedDataModule(blobs(n, features=features, classes=classes), batch_size=batch_size, **kwargs)


class Fitted(NamedTuple):
    trainer: Trainer
    model: Any
    datamodule: Any


def fit(
    tmp_path: Any,
    callbacks: Any = (),
    *,
    model: Any = None,
    datamodule: Any = None,
    ckpt_path: Any = None,
    **trainer_kwargs: Any,
) -> Fitted:
    """The small fit: ``model`` (a fresh ``TinyClassifier``) on ``datamodule`` (``blob_datamodule()``) with
    ``callbacks``, in a ``small_trainer(tmp_path, **trainer_kwargs)``.

    What each step trained on is in ``model.seen_index`` / ``model.seen_weight`` (a ``TinyClassifier`` records it).
    """
    model = model if model is not None else TinyClassifier()
    datamodule = datamodule if datamodule is not None else blob_datamodule()
    trainer = small_trainer(tmp_path, callbacks=list(callbacks), **trainer_kwargs)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return Fitted(trainer, model, datamodule)


class StopAfterEpochs(Callback):
    """Stops the run at the end of epoch ``epochs - 1``: a kill, with the Trainer configured as the full run."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class CheckedClassifier(TinyClassifier):
    """Checks in every call (training and scoring) that each row is the dataset sample its index says."""

    def __init__(self, reference: tuple[Tensor, Tensor]) -> None:
        super().__init__()
        self.reference = reference
        self.checked = 0

    def _unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        if isinstance(batch.data, dict):
            x, y = batch["x"], batch["y"]
        else:
            x, y = batch.data[0], batch.data[1]
        ref_x, ref_y = self.reference
        assert torch.equal(x, ref_x[batch.index]) and torch.equal(y, ref_y[batch.index])
        self.checked += 1
        return x, y


# ------------------------------------------------------------------------------ online selection
NEVER = 1e9  # a tau_th that tau never exceeds: every step uniform
ALWAYS = 1e-9  # a tau_th that any positive tau exceeds: every step after the first is an importance step


def heavy_scores(n: int, seed: int = 0) -> Tensor:
    """Log-normal scores with sigma 3: a few points carry most of the mass."""
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, generator=g, dtype=torch.float64)).exp().float()


def table_score(table: Tensor) -> Any:
    """A custom score function that looks every point's score up by its dataset index."""

    def score_fn(outputs: Any, batch: Any) -> Tensor:
        return table[batch.index.cpu()]

    return score_fn


class Steps(Callback):
    """Put after the importance callback: per training step, its phase, tau and what was trained."""

    def __init__(self, cb: lp.ImportanceSamplingCallback) -> None:
        self.cb = cb
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.rows.append(
            dict(
                step=trainer.global_step,
                tau=self.cb.tau,
                importance=self.cb.last_step_was_importance,
                index=batch.index.tolist(),
                weight=batch.weight.tolist(),
            )
        )


# ------------------------------------------------------------------------------ continual learning and replay
def numbered(n: int, dim: int = 3, start: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` samples ``(x, id)`` numbered from ``start``; every feature of ``x`` is the sample's id."""
    ids = torch.arange(start, start + n)
    return ids.float().unsqueeze(1).expand(n, dim).contiguous(), ids


def held_ids(buffer: Any) -> list[int]:
    """The ids of the ``numbered`` samples a replay buffer holds, sorted."""
    return sorted(int(i) for i in buffer.contents()[1].tolist())


def toy_tasks(num_tasks: int = 3, per_task: int = 12, dim: int = 4, classes: int = 2) -> list[TensorDataset]:
    """``num_tasks`` small classification tasks, ``classes`` labels each (task t has labels t * classes + ...)."""
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(num_tasks):
        y = torch.arange(per_task) % classes + t * classes
        x = torch.randn(per_task, dim, generator=g) + y.unsqueeze(1).float()
        tasks.append(TensorDataset(x, y))
    return tasks


class DictModule(LightningModule):
    """A user's module: dict samples, Adam, the two-line contract; records every batch it trains on."""

    def __init__(self, features: int = 4, classes: int = 6, lr: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Linear(features, classes)
        self.lr = lr
        self.batches: list[dict[str, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        losses = F.cross_entropy(self.net(batch["x"]), batch["y"], reduction="none")
        record = {k: v.detach().clone() for k, v in batch.items()}
        record.update(index=batch.index.clone(), weight=batch.weight.clone(), losses=losses.detach().clone())
        self.batches.append(record)
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


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


class Stream(IterableDataset):
    """``blobs(n)`` as a stream of ``(x, y, id)`` samples, each DDP process its own share, with no length."""

    def __init__(self, n: int = 96) -> None:
        self.data = blobs(n)

    def __iter__(self):
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        for i in range(rank, len(self.data), world):
            x, y = self.data[i]
            yield x, y, torch.tensor(i)


class StreamClassifier(TinyClassifier):
    def _unpack(self, batch):
        return batch[0], batch[1]
