"""Meta-Experience Replay (MER) wrapped around the user's LightningModule, with manual optimisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_per._checks import check_choice, check_device, check_int, check_number
from lightning_per.batch import PrioritizedBatch
from lightning_per.functional.continual import reptile_interpolate_
from lightning_per.plumbing.inference import silenced_logging
from lightning_per.plumbing.internals import set_current_hook
from lightning_per.plumbing.sync import checkpoint_due
from lightning_per.replay.buffer import ReplayBuffer, ReservoirBuffer
from lightning_per.replay.experience import REPLAYED
from lightning_per.replay.ranks import RankBuffers
from lightning_per.tree import flatten, unflatten

__all__ = ["MER"]

MERVariant = Literal["example", "batch"]


class MER(LightningModule):
    """Meta-Experience Replay (Riemer et al., ICLR 2019) around your LightningModule, with manual optimisation.

    Algorithm 1 (``variant="example"``), per incoming example: ``batches_per_example`` times, draw
    ``replay_batch_size`` distinct buffer items, append the example, take plain SGD steps at ``lr`` over them and
    interpolate the weights back toward where the batch started by ``reptile_beta``; then interpolate toward where the
    example started by ``reptile_gamma``, and offer the example to the reservoir. The defaults are the reference's
    MNIST settings (there with ``lr=0.03``). Each inner step calls your ``training_step`` on a sub-batch (a
    ``PrioritizedBatch``, weights 1, ``index`` -1 for replayed samples; its ``self.log`` calls are silenced, MER logs
    ``train/loss``) and counts as a Trainer step (``max_steps`` stops the inner steps where it is reached). Your
    optimizer's state, schedulers and gradient clipping are not used; ``forward``, the evaluation steps, ``setup`` and
    ``configure_callbacks`` are your module's. Load a checkpoint with ``MER.load_from_checkpoint(path,
    module=YourModule(...))``. Under DDP every inner step averages gradients across ranks, each rank replays from its
    own buffer of ``capacity // world_size`` items, and
    checkpoints hold every rank's buffer.

    Args:
        module: your LightningModule (automatic optimization; ``training_step`` returns a loss or ``{"loss": ...}``).
        capacity: the total memory budget (items); under DDP each rank keeps ``capacity // world_size``.
        replay_batch_size: replayed samples in each inner batch (the paper's ``k - 1``; the reference code's
            ``replay_batch_size``).
        batches_per_example: ``s``, inner batches per incoming example.
        reptile_beta: within-batch Reptile rate in ``(0, 1]`` (the paper's ``beta``).
        reptile_gamma: across-batch Reptile rate in ``(0, 1]`` (the paper's ``gamma``).
        lr: SGD learning rate of the inner steps (``None``: that of the first parameter group of the optimizer your
            ``configure_optimizers`` returns, which must then be ``torch.optim.SGD``).
        variant: ``"example"`` (Algorithm 1) or ``"batch"`` (the whole incoming batch is the new example).
        step_batch_size: samples per inner SGD step (1: the paper's per-sample steps).
        device: where the buffer keeps its samples: ``"cpu"``, ``"module"`` (the training device) or a device name.
        seed: seed of the buffer (rank ``r`` uses ``seed + r``).

    Raises:
        ValueError: ``capacity <= 0``, ``replay_batch_size < 0``, ``batches_per_example`` or ``step_batch_size``
            below 1, ``reptile_beta`` / ``reptile_gamma`` outside ``(0, 1]``, ``lr <= 0``, ``variant`` other than
            ``"example"`` / ``"batch"``, or a module with manual optimization; at setup, ``capacity`` below the
            number of processes; with ``lr=None``, a ``configure_optimizers`` that returns no optimizer or one other
            than ``torch.optim.SGD``.

    Example:
        >>> from lightning_per.examples import ContinualClassifier
        >>> mer = MER(ContinualClassifier(in_features=4), capacity=100, replay_batch_size=5, batches_per_example=2)
        >>> mer.automatic_optimization, mer.buffer.capacity
        (False, 100)
    """

    def __init__(
        self,
        module: LightningModule,
        capacity: int = 5120,
        replay_batch_size: int = 100,
        batches_per_example: int = 10,
        reptile_beta: float = 0.03,
        reptile_gamma: float = 1.0,
        lr: float | None = None,
        variant: MERVariant = "example",
        step_batch_size: int = 1,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(module, LightningModule):
            raise TypeError(
                f"`module` must be your LightningModule instance (e.g. `MER(MyModule(), ...)`), got {module!r} "
                f"({type(module).__name__}). In YAML, give it as `module: {{class_path: ..., init_args: ...}}`."
            )
        for name, value in (("reptile_beta", reptile_beta), ("reptile_gamma", reptile_gamma)):
            check_number(name, value, 0.0, 1.0, low_open=True, hint="It is a Reptile interpolation rate.")
        check_int("capacity", capacity, 1)
        check_int("replay_batch_size", replay_batch_size, 0)
        check_int("batches_per_example", batches_per_example, 1)
        check_int("step_batch_size", step_batch_size, 1)
        check_choice("variant", variant, get_args(MERVariant))
        check_number("lr", lr, 0.0, low_open=True, optional=True, hint="None takes your optimizer's (plain SGD only).")
        check_device("device", device, extra=("module",))
        check_int("seed", seed)
        if not module.automatic_optimization:
            raise ValueError(
                f"MER takes the optimizer steps itself, so the wrapped module must use automatic optimization; "
                f"{type(module).__name__} has `automatic_optimization=False`."
            )
        self.save_hyperparameters(ignore=["module"])
        self.automatic_optimization = False
        self.module = module
        self.replay_batch_size = replay_batch_size
        self.batches_per_example = batches_per_example
        self.reptile_beta = reptile_beta
        self.reptile_gamma = reptile_gamma
        self.lr = lr
        self.variant = variant
        self.step_batch_size = step_batch_size
        self.buffer_device = device
        self._shards = RankBuffers(ReservoirBuffer(capacity, seed), "capacity")
        if replay_batch_size > capacity:
            rank_zero_warn(
                f"`replay_batch_size` = {replay_batch_size} replays per draw is more than `capacity={capacity}`: each "
                "draw returns what the buffer holds."
            )
        self.inner_lr: float | None = lr  # resolved in `configure_optimizers`
        self._slack = 0  # items of this rank's buffer left out so that all ranks replay as many

    @property
    def buffer(self) -> ReplayBuffer:
        """This process's buffer."""
        return self._shards.buffer

    # ------------------------------------------------------------------------------------------ your module's
    @override
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    @override
    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("validation_step", *args, **kwargs)

    @override
    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("test_step", *args, **kwargs)

    @override
    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._delegate("predict_step", *args, **kwargs)

    def _delegate(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call your module's hook so that its ``self.log`` logs under this hook."""
        module = self.module
        set_current_hook(module, self._current_fx_name)
        try:
            return getattr(module, name)(*args, **kwargs)
        finally:
            set_current_hook(module, None)

    @override
    def configure_callbacks(self) -> Sequence[Callback] | Callback:
        """Your module's callbacks and the one that synchronises the buffers before Lightning's checkpoints."""
        theirs = self.module.configure_callbacks()
        listed = [theirs] if isinstance(theirs, Callback) else list(theirs)
        return [*listed, _BufferSync()]

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Plain SGD over your module's parameters at ``lr`` (see the class docstring)."""
        if self.lr is None:
            self.inner_lr = _sgd_lr(self.module.configure_optimizers(), type(self.module).__name__)
        params = [p for p in self.module.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=float(self.inner_lr))  # type: ignore[arg-type]

    @override
    def setup(self, stage: str) -> None:
        """Your module's ``setup``; then this rank's buffer: ``capacity // world_size`` items on ``device``."""
        self.module.setup(stage)
        trainer = self._trainer
        if trainer is None:
            return
        device = trainer.strategy.root_device if self.buffer_device == "module" else torch.device(self.buffer_device)
        self._shards.setup(trainer.global_rank, trainer.world_size, device)

    # ------------------------------------------------------------------------------------------ the algorithm
    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        data, index = (batch.data, batch.index) if isinstance(batch, PrioritizedBatch) else (batch, None)
        leaves, treedef = flatten(data)
        n = int(leaves[0].shape[0])
        if index is None:
            index = torch.full((n,), REPLAYED, dtype=torch.int64, device=leaves[0].device)
        spec = self.buffer.storage.spec
        if spec is not None:  # refuse a batch the buffer could not store before training on it
            spec.check(leaves, treedef)
        self._slack = 0
        if self._shards.world > 1:  # every rank must take as many (all-reduced) inner steps: replay the smallest count
            sizes = self.all_gather(torch.tensor(len(self.buffer), device=self.device))
            self._slack = len(self.buffer) - int(torch.as_tensor(sizes).min())
        units = [(i, i + 1) for i in range(n)] if self.variant == "example" else [(0, n)]
        losses = []
        with silenced_logging(self.module):
            for start, stop in units:
                unit = [x[start:stop] for x in leaves]
                losses.append(self._meta_update(unit, treedef, index[start:stop], batch_idx))
                self.buffer.add(unflatten(unit, treedef))
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def _meta_update(self, unit: list[Tensor], treedef: Any, index: Tensor, batch_idx: int) -> Tensor:
        """One MER update for the new sample(s) ``unit`` (leaves); returns the mean loss of its inner steps."""
        opt = self.optimizers()
        if isinstance(opt, list):
            opt = opt[0]
        params = [p for p in self.module.parameters() if p.requires_grad]
        theta_0 = [p.detach().clone() for p in params]
        total, steps = torch.zeros((), device=self.device), 0
        for _ in range(self.batches_per_example):
            if not self._steps_left():
                break
            leaves, inner_index = self._inner_batch(unit, index)
            theta_a = [p.detach().clone() for p in params]
            size = int(leaves[0].shape[0])
            weight = torch.ones(size, device=index.device)
            for start in range(0, size, self.step_batch_size):
                if not self._steps_left():
                    break
                stop = start + self.step_batch_size
                sub = PrioritizedBatch(
                    unflatten([x[start:stop] for x in leaves], treedef), inner_index[start:stop], weight[start:stop]
                )
                opt.zero_grad()
                loss = _loss_of(self.module.training_step(sub, batch_idx))
                if loss is None:  # your `training_step` skipped this sub-batch
                    continue
                self.manual_backward(loss)
                opt.step()
                total += loss.detach()
                steps += 1
            reptile_interpolate_(params, theta_a, self.reptile_beta)
        reptile_interpolate_(params, theta_0, self.reptile_gamma)
        return total / max(steps, 1)

    def _steps_left(self) -> bool:
        """Whether the Trainer's ``max_steps`` allows another inner step (each is an optimizer step it counts)."""
        trainer = self._trainer
        return trainer is None or trainer.max_steps < 0 or trainer.global_step < trainer.max_steps

    def _inner_batch(self, unit: list[Tensor], index: Tensor) -> tuple[list[Tensor], Tensor]:
        """``replay_batch_size`` distinct replays (fewer while the buffer holds fewer), then the new sample(s)."""
        available = max(len(self.buffer) - self._slack, 0)
        draw = self.buffer.sample(min(self.replay_batch_size, available))
        r = int(draw.slots.numel())
        if draw.batch is None or r == 0:
            return unit, index
        replayed = flatten(draw.batch)[0]
        leaves = [
            torch.cat([a if a.device == b.device else a.to(b.device), b]) for a, b in zip(replayed, unit, strict=True)
        ]
        marks = torch.full((r,), REPLAYED, dtype=index.dtype, device=index.device)
        return leaves, torch.cat([marks, index])

    # ------------------------------------------------------------------------------------------ checkpoints
    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # no collective: this rank's buffer as it is, the others' as of the last synchronisation (rank 0 has them)
        checkpoint["replay_buffers"] = self._shards.states()
        self.module.on_save_checkpoint(checkpoint)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.module.on_load_checkpoint(checkpoint)
        states = checkpoint.get("replay_buffers")
        if not states:
            rank_zero_warn("The checkpoint has no replay buffer; MER's buffer starts empty.")
            return
        self._shards.restore(states)


def _loss_of(outputs: Any) -> Tensor | None:
    """The loss of a ``training_step`` output: the tensor, or its ``"loss"``; ``None`` for a skipped step."""
    if outputs is None or isinstance(outputs, Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), Tensor):
        return outputs["loss"]
    raise ValueError(
        f"MER minimises the loss your `training_step` returns, but it returned {type(outputs).__name__} without a "
        '`"loss"` tensor: return the loss, or `{"loss": weighted_mean(losses, batch), ...}`.'
    )


def _sgd_lr(configured: Any, name: str) -> float:
    """The learning rate of the first optimizer ``configure_optimizers`` returned, which must be ``torch.optim.SGD``.

    Raises:
        ValueError: there is no optimizer, or it is not SGD (its rate is tuned for another update rule).
    """
    todo = [configured]
    while todo:
        item = todo.pop(0)
        if isinstance(item, torch.optim.Optimizer):
            lr = float(item.param_groups[0]["lr"])
            if not isinstance(item, torch.optim.SGD):
                raise ValueError(
                    f"MER's inner steps are plain SGD, and with `lr=None` it would take the learning rate of "
                    f"{name}'s optimizer, {type(item).__name__}(lr={lr:g}): a rate tuned for {type(item).__name__} "
                    "is typically far too small for plain SGD, and MER would learn next to nothing. Pass "
                    "`MER(..., lr=...)` (the reference used 0.03 on MNIST; tune it on a validation split), or return "
                    "`torch.optim.SGD` from `configure_optimizers`."
                )
            return lr
        if isinstance(item, Mapping):
            todo.append(item.get("optimizer"))
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    raise ValueError(
        f"MER takes its learning rate from the optimizer of {name}.configure_optimizers(), which returned none: pass "
        "`MER(..., lr=...)`."
    )


class _BufferSync(Callback):
    """Brings every rank's MER buffer to rank 0 where Lightning may save a checkpoint (see ``.ranks``).

    Its ``on_train_batch_end`` and ``on_train_epoch_end`` run before the checkpoint callbacks' (Lightning puts those
    last), and validation starts precede the checkpoints saved at validation ends.
    """

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if checkpoint_due(trainer):
            _shards(pl_module).sync()

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            _shards(pl_module).sync()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _shards(pl_module).sync()


def _shards(pl_module: LightningModule) -> RankBuffers:
    return pl_module._shards  # type: ignore[return-value]
