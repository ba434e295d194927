"""Experience Replay as a callback: replayed samples mixed into the batches of any LightningModule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per._checks import check_device, check_int
from lightning_per.plumbing.internals import logs_this_step
from lightning_per.plumbing.publish import publish, publish_due
from lightning_per.plumbing.requirements import require_batch, require_datamodule
from lightning_per.plumbing.sync import checkpoint_due
from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.ranks import RankBuffers
from lightning_per.tree import flatten, join

__all__ = ["REPLAYED", "ExperienceReplay"]

REPLAYED = -1
"""The ``batch.index`` of a replayed sample (incoming samples keep their dataset indices)."""

# callbacks that read `batch.index` as dataset indices or replace the batch themselves
_REFUSED = ("LossTracker", "ImportanceSamplingCallback", "OnlineSelection")


class ExperienceReplay(Callback):
    """Experience Replay (ER) for any LightningModule: every training batch is mixed with samples from a buffer.

    At the start of each training step ``replay_batch_size`` buffer samples (your structure: tensors, tuples, lists,
    dicts) are appended, leaf by leaf, to the incoming batch: ``batch.index`` is ``-1`` (``REPLAYED``) for them,
    ``batch.weight`` their importance weight (1 for uniform replay). After the step the incoming samples are offered
    to the buffer (a batch repeated by ``TaskSequence(repeats=m)`` is offered once). Training batches must come from a
    ``PrioritizedDataModule`` (or a ``TaskSequence``) and ``training_step`` returns ``weighted_mean(losses, batch)``;
    a ``PrioritizedReplayBuffer`` also needs ``"per_sample_loss"``, which become the replayed items' priorities.
    Under DDP each rank keeps its own buffer of the same kind with ``capacity // world_size`` items (seed
    ``seed + rank``); checkpoints hold every rank's buffer.

    Args:
        buffer: the memory, with its capacity (the total over all processes), sampler and seed: a
            ``ReservoirBuffer`` (uniform replay, the default with capacity 500), a ``PrioritizedReplayBuffer`` or any
            ``ReplayBuffer``; a ``class_path`` in YAML.
        replay_batch_size: replayed samples mixed into each training batch (fewer while a uniform buffer holds
            fewer; prioritized replay draws with replacement).
        device: where the buffer keeps its samples: ``None`` (the buffer's own device), ``"module"`` (the training
            device of each process, e.g. GPU memory) or a device name.
        loss_key: the key of the per-sample losses in ``training_step``'s output (prioritized replay).

    Raises:
        ValueError: ``replay_batch_size < 0`` or a bad ``device``; at setup, a capacity below the number of
            processes, or ``LossTracker`` or a selection callback alongside (they read ``batch.index`` as dataset
            indices); during training, prioritized replay when ``training_step`` returns no per-sample losses under
            ``loss_key``, or not one per sample.
        TypeError: ``buffer`` is not a ``ReplayBuffer``; at setup, training data that does not come from a
            ``PrioritizedDataModule``; a training batch that is not a ``PrioritizedBatch``.

    Example:
        >>> from lightning_per.replay import PrioritizedReplayBuffer
        >>> replay = ExperienceReplay(PrioritizedReplayBuffer(capacity=1000, beta=0.4), replay_batch_size=32)
        >>> replay.buffer.capacity, replay.buffer.beta
        (1000, 0.4)
    """

    def __init__(
        self,
        buffer: ReplayBuffer | None = None,
        replay_batch_size: int = 10,
        device: str | None = None,
        loss_key: str = "per_sample_loss",
    ) -> None:
        if buffer is not None and not isinstance(buffer, ReplayBuffer):
            raise TypeError(
                f"`buffer` must be a replay buffer (e.g. `ReservoirBuffer(capacity=500)` or "
                f"`PrioritizedReplayBuffer(capacity=500)` from `lightning_per.replay`), got {type(buffer).__name__}."
            )
        check_int("replay_batch_size", replay_batch_size, 0)
        if device is not None:
            check_device("device", device, extra=("module",))
        buffer = buffer if buffer is not None else ReservoirBuffer(capacity=500)
        self.replay_batch_size = replay_batch_size
        self.device = device
        self.loss_key = loss_key
        self._shards = RankBuffers(buffer, "capacity")
        if replay_batch_size > buffer.capacity:
            rank_zero_warn(
                f"`replay_batch_size` = {replay_batch_size} replays per draw is more than the buffer's capacity "
                f"({buffer.capacity}): each draw returns what the buffer holds (at most its capacity)."
            )
        self._incoming: Any = None  # this step's incoming samples, offered to the buffer after the step
        self._incoming_size = 0
        self._slots: Tensor | None = None  # buffer slots of this step's replayed samples
        self._offer = True
        self._repeats = 1

    @property
    def buffer(self) -> ReplayBuffer:
        """This process's buffer."""
        return self._shards.buffer

    @property
    def replayed_slots(self) -> Tensor | None:
        """The buffer slots of the last (or current) training batch's replayed samples (``None``: none replayed)."""
        return self._slots

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = require_datamodule(trainer, "ExperienceReplay", why=" (or a `TaskSequence`)")
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            names = {cls.__name__ for cls in type(callback).__mro__}
            refused = next((name for name in _REFUSED if name in names), None)
            if refused is not None:
                raise ValueError(
                    f"ExperienceReplay cannot run with {type(callback).__name__}: replayed samples are buffer items "
                    f"(`batch.index == -1`), not dataset samples, and {type(callback).__name__} "
                    + (
                        "records scores by dataset index."
                        if refused == "LossTracker"
                        else "replaces each batch with points of its own choice."
                    )
                    + " Remove one of the two."
                )
        self._repeats = max(1, int(getattr(datamodule, "repeats", 1)))
        device = trainer.strategy.root_device if self.device == "module" else self.device
        self._shards.setup(trainer.global_rank, trainer.world_size, None if device is None else torch.device(device))

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        require_batch(batch, "ExperienceReplay")
        self._incoming, self._incoming_size = batch.data, batch.batch_size
        self._offer = batch_idx % self._repeats == 0  # a repeated batch is offered once
        self._slots = None
        buffer = self.buffer
        if self.replay_batch_size == 0 or len(buffer) == 0:
            return
        spec = buffer.storage.spec
        if spec is not None:  # refuse a batch the buffer could not store before training on it
            spec.check(*flatten(batch.data))
        draw = buffer.sample(self.replay_batch_size)
        if draw.batch is None or draw.slots.numel() == 0:
            return
        n = draw.slots.numel()
        batch.data = join(batch.data, draw.batch)
        replayed = torch.full((n,), REPLAYED, dtype=batch.index.dtype, device=batch.index.device)
        batch.index = torch.cat([batch.index, replayed])
        batch.weight = torch.cat([batch.weight, draw.weight.to(device=batch.weight.device, dtype=batch.weight.dtype)])
        self._slots = draw.slots

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        buffer = self.buffer
        skipped = outputs is None or (isinstance(outputs, Mapping) and not outputs)  # `training_step` returned None
        if isinstance(buffer, PrioritizedReplayBuffer) and self._slots is not None and not skipped:
            buffer.update_priorities(self._slots, self._replayed_losses(outputs))
        if self._offer and self._incoming is not None:
            buffer.add(self._incoming)
        self._incoming = None
        if publish_due(trainer, batch_idx):
            replayed = 0 if self._slots is None else int(self._slots.numel())
            fill = {"per/buffer_fill": len(buffer) / buffer.capacity, "per/replayed": float(replayed)}
            publish(trainer, fill, to_loggers=logs_this_step(trainer), prog_bar=("per/buffer_fill",))
        if checkpoint_due(trainer):
            self._shards.sync()

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._shards.sync()  # a checkpoint saved at the validation's end holds every rank's buffer

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shards.sync()

    def _replayed_losses(self, outputs: Any) -> Tensor:
        """The per-sample losses of this step's replayed samples (one value per sample, detached)."""
        losses = outputs.get(self.loss_key) if isinstance(outputs, Mapping) else None
        if not isinstance(losses, Tensor):
            raise ValueError(
                f"Prioritized replay sets the replayed items' priorities to their losses, but `training_step` returned "
                f"no per-sample losses under {self.loss_key!r}. Return them: "
                '`return {"loss": weighted_mean(losses, batch), "per_sample_loss": losses}` with '
                "`losses = F.cross_entropy(logits, y, reduction='none')`."
            )
        n, r = self._incoming_size, int(self._slots.numel()) if self._slots is not None else 0
        if losses.ndim == 0 or losses.shape[0] != n + r:
            raise ValueError(
                f"`training_step` returned {self.loss_key!r} of shape {tuple(losses.shape)}, but the batch holds "
                f"{n} incoming and {r} replayed samples: return one loss per sample of the batch as it arrived."
            )
        replayed = losses.detach()[n:]
        return replayed.reshape(r, -1).float().mean(1) if replayed.ndim > 1 else replayed

    # ------------------------------------------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        """Every rank's buffer (this one's as it is, the others' as of the last synchronisation); no collective."""
        return {"buffers": self._shards.states(), "capacity": self._shards.total_capacity}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the buffers: exactly on as many processes, pooled and re-sharded on another number."""
        states = state_dict.get("buffers")
        if states:
            self._shards.restore(states)
