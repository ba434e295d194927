"""Continual-learning LightningModules: fine-tuning, Experience Replay (ER, optionally prioritized) and MER.

All three take ``(x, y, task)`` batches (see :class:`~lightning_per.replay.ContinualDataModule`) and share the
output layout: ``scenario="task"`` (Task-IL: one block of ``classes_per_task`` outputs per task, logits outside
the current task's block masked) or ``scenario="class"`` (Class-IL: one shared head over the classes seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from typing_extensions import override

from lightning_per.callbacks._sync import checkpoint_due
from lightning_per.distributed import gather_objects_to_rank_zero
from lightning_per.examples.models import MLP
from lightning_per.replay.buffer import PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.functional import output_targets, reptile_interpolate_, task_class_mask
from lightning_per.replay.pooling import pool_buffer_states

__all__ = ["MER", "ContinualModule", "ExperienceReplay", "evaluate_tasks"]


class ContinualModule(LightningModule):
    """Online fine-tuning through a task sequence (no replay): the baseline, and the base of ER and MER.

    Args:
        backbone: a network mapping ``x`` to :attr:`num_outputs` logits; ``None`` builds an MLP from
            ``input_dim``, ``hidden_dim`` and ``num_hidden_layers`` (the MER paper's 2x100 by default).
        input_dim: flattened input size of the default MLP.
        hidden_dim: width of the default MLP.
        num_hidden_layers: depth of the default MLP.
        num_tasks: the number of tasks declared; task ids must lie in ``[0, num_tasks)``.
        classes_per_task: classes in each task.
        shared_classes: every task has the same labels ``[0, classes_per_task)`` (permuted / rotated
            sequences); otherwise task ``t`` owns labels ``[t * c, (t + 1) * c)`` (split sequences).
        scenario: ``"task"`` (Task-IL, task id known at test time, other tasks' outputs masked) or
            ``"class"`` (Class-IL, one head over all classes seen so far).
        lr: SGD learning rate.

    Raises:
        ValueError: a non-positive size, an unknown ``scenario`` or a non-positive ``lr``.

    Example::

        >>> model = ContinualModule(input_dim=4, num_tasks=2, classes_per_task=2, scenario="task")
        >>> model.masked_logits(torch.zeros(1, 4), torch.tensor([1])).isinf().tolist()
        [[True, True, False, False]]
    """

    seen_tasks: Tensor

    def __init__(
        self,
        backbone: nn.Module | None = None,
        input_dim: int = 40,
        hidden_dim: int = 100,
        num_hidden_layers: int = 2,
        num_tasks: int = 5,
        classes_per_task: int = 2,
        shared_classes: bool = False,
        scenario: Literal["task", "class"] = "class",
        lr: float = 0.03,
    ) -> None:
        super().__init__()
        for name, value in (("num_tasks", num_tasks), ("classes_per_task", classes_per_task)):
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0, got {value}.")
        if scenario not in ("task", "class"):
            raise ValueError(f"`scenario` must be 'task' (Task-IL) or 'class' (Class-IL), got {scenario!r}.")
        if lr <= 0:
            raise ValueError(f"`lr` must be > 0, got {lr}.")
        self.save_hyperparameters(ignore=["backbone"])
        self.num_tasks = num_tasks
        self.classes_per_task = classes_per_task
        self.shared_classes = shared_classes
        self.scenario = scenario
        self.lr = lr
        shared_head = scenario == "class" and shared_classes
        self.num_outputs = classes_per_task if shared_head else num_tasks * classes_per_task
        self.net = backbone if backbone is not None else MLP(input_dim, hidden_dim, num_hidden_layers, self.num_outputs)
        self._input_dim = None if backbone is not None else input_dim  # checked against the data (default MLP)
        self.register_buffer("seen_tasks", torch.zeros((), dtype=torch.int64))

    # ----------------------------------------------------------------------------------------- outputs
    def forward(self, x: Tensor) -> Tensor:
        """Raw logits of the network, unmasked."""
        return self.net(x)

    def check_batch(self, y: Tensor, task: Tensor, x: Tensor | None = None) -> None:
        """Validate task ids and labels against the declared sequence.

        Raises:
            ValueError: a task id outside ``[0, num_tasks)``, a label outside its task's classes, or (with the
                default MLP) inputs whose size per sample is not ``input_dim``.
        """
        if x is not None and self._input_dim is not None and x.shape[0] and x[0].numel() != self._input_dim:
            raise ValueError(
                f"The inputs have {x[0].numel()} features per sample (shape {tuple(x.shape[1:])}), but the default "
                f"MLP was built with `input_dim={self._input_dim}`: set `input_dim: {x[0].numel()}`."
            )
        if task.numel() == 0:
            return
        lo, hi = int(task.min()), int(task.max())
        if lo < 0 or hi >= self.num_tasks:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"`task` id {bad} is outside the declared tasks [0, {self.num_tasks}); "
                f"raise `num_tasks` (now {self.num_tasks}) or fix the task ids of the data."
            )
        c = self.classes_per_task
        low = torch.zeros_like(task) if self.shared_classes else task * c
        bad_label = (y < low) | (y >= low + c)
        if bool(bad_label.any()):
            i = int(torch.nonzero(bad_label)[0])
            raise ValueError(
                f"label {int(y[i])} of task {int(task[i])} is outside that task's classes "
                f"[{int(low[i])}, {int(low[i]) + c}) (`classes_per_task={c}`, `shared_classes={self.shared_classes}`)."
            )

    def masked_logits(self, x: Tensor, task: Tensor) -> Tensor:
        """Logits with the outputs a sample may not use set to ``-inf``.

        Task-IL: only the block of the sample's task. Class-IL with per-task classes: the classes of the tasks
        seen in training so far (the task id is not used; all classes before any training). Class-IL with
        shared classes: nothing is masked.
        """
        logits = self(x)
        if logits.shape[-1] != self.num_outputs:
            raise ValueError(
                f"The backbone gives {logits.shape[-1]} outputs, but {self.scenario!r} scenario with "
                f"{self.num_tasks} tasks of {self.classes_per_task} classes needs {self.num_outputs}."
            )
        if self.scenario == "task":
            mask = task_class_mask(task, self.classes_per_task, self.num_outputs)
        elif self.shared_classes:
            return logits
        else:
            seen = int(self.seen_tasks) or self.num_tasks
            mask = (torch.arange(self.num_outputs, device=logits.device) < seen * self.classes_per_task).expand_as(
                logits
            )
        return logits.masked_fill(~mask, float("-inf"))

    def targets(self, y: Tensor, task: Tensor) -> Tensor:
        """Output unit of each label (see :func:`~lightning_per.replay.functional.output_targets`)."""
        return output_targets(y, task, self.classes_per_task, self.scenario, self.shared_classes)

    def per_sample_loss(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """Cross-entropy of each sample on its masked logits."""
        return F.cross_entropy(self.masked_logits(x, task), self.targets(y, task), reduction="none")

    def observe_tasks(self, task: Tensor) -> None:
        """Record that the tasks of a training batch were seen (widens the Class-IL head)."""
        if task.numel():
            self.seen_tasks.fill_(max(int(self.seen_tasks), int(task.max()) + 1))

    def predict_batch(self, x: Tensor, task: Tensor) -> Tensor:
        """Predicted labels (in the data's label convention) for evaluation."""
        pred = self.masked_logits(x, task).argmax(-1)
        if self.scenario == "task" and self.shared_classes:
            pred = pred - task * self.classes_per_task
        return pred

    # ----------------------------------------------------------------------------------------- steps
    def _unpack(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        if len(batch) != 3:
            raise ValueError(
                f"Continual modules take `(x, y, task)` batches, got {len(batch)} tensors; "
                "wrap each task's dataset in `TaskDataset` or use `ContinualDataModule`."
            )
        x, y, task = batch
        task = task.to(torch.int64)
        self.check_batch(y, task, x)
        return x, y, task

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, task = self._unpack(batch)
        self.observe_tasks(task)
        loss = self.per_sample_loss(x, y, task).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def _eval_step(self, batch: Sequence[Tensor], stage: str) -> None:
        x, y, task = self._unpack(batch)
        correct = (self.predict_batch(x, task) == y).float()
        for t in torch.unique(task).tolist():
            sel = task == t
            self.log(
                f"{stage}/acc_task{t}",
                correct[sel].mean(),
                batch_size=int(sel.sum()),
                add_dataloader_idx=False,
                sync_dist=True,
            )

    @override
    def validation_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    @override
    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class _ReplayModule(ContinualModule):
    """A ContinualModule with a replay buffer: per-rank capacity under DDP, every rank's buffer saved in checkpoints.

    Under DDP each rank keeps its own buffer of ``capacity // world_size`` slots, filled by reservoir sampling
    over that rank's shard of the stream (seeded ``buffer_seed + rank``): the memory budget summed over ranks is
    the single-process one, and the union of the ranks' buffers is a uniform sample of the whole stream.
    Checkpoints hold every rank's buffer (``checkpoint["replay_buffers"]``, one state per rank) without a
    collective at save time (a checkpoint built on rank 0 alone does not hang): the buffers are brought to rank 0
    at synchronisation points (epoch ends, validation starts, steps where a ``ModelCheckpoint`` saves by
    ``every_n_train_steps``; :meth:`configure_callbacks` adds the callback that does it), so the checkpoints
    Lightning takes hold every buffer as it is; one taken at another moment holds rank 0's buffer as it is and the
    others' as of the last synchronisation point (``None`` before the first). A run resumed on as many processes
    gets its own buffer back, one resumed on another number of processes (or loaded with ``load_from_checkpoint``)
    pools the saved buffers and re-shards them (:func:`~lightning_per.replay.pooling.pool_buffer_states`).
    """

    buffer: ReplayBuffer

    def _init_buffer(self, capacity: int, buffer_seed: int, name: str, replays: int, replays_label: str) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(
                f"`{name}` (buffer capacity) must be a positive integer, got {capacity!r}; e.g. `{name}=500`."
            )
        if replays > capacity:
            rank_zero_warn(
                f"{replays_label} = {replays} replays per draw is more than `{name}={capacity}`: each replay draws "
                "what the buffer holds (at most its capacity)."
            )
        self.total_capacity = capacity
        self.buffer_seed = buffer_seed
        self._buffer_states: list[Any] | None = None  # every rank's buffer at the last synchronisation (rank 0)
        self._capacity_name = name
        self.buffer = self._make_buffer(capacity, buffer_seed)

    def _make_buffer(self, capacity: int, seed: int) -> ReplayBuffer:
        return ReservoirBuffer(capacity, seed=seed)

    def _rank_world(self) -> tuple[int, int]:
        trainer = self._trainer
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _per_rank_capacity(self, world: int) -> int:
        per_rank = self.total_capacity // world
        if per_rank <= 0:
            raise ValueError(
                f"`{self._capacity_name}={self.total_capacity}` is smaller than the number of processes ({world}); "
                f"each rank needs at least one slot: set `{self._capacity_name}` >= {world}."
            )
        return per_rank

    def restore_buffers(self, states: Sequence[dict[str, Any] | None]) -> None:
        """Load saved buffers, one per rank of the run that saved them (``None``: a rank's buffer was not saved).

        With as many saved states as processes now, rank ``r`` loads state ``r`` (exactly, generator included);
        otherwise the saved states are pooled and re-sharded to ``capacity // world_size`` per rank.
        """
        rank, world = self._rank_world()
        saved = [s for s in states if s is not None]
        if len(saved) < len(states):
            rank_zero_warn(
                f"The checkpoint holds {len(saved)} of {len(states)} processes' replay buffers (it was taken before "
                "their first synchronisation point); "
                + ("the missing ones start empty." if len(states) == world else "the saved ones are pooled.")
            )
        if len(states) == world:
            state = states[rank]
            if state is None:
                self.buffer = self._make_buffer(self._per_rank_capacity(world), self.buffer_seed + rank)
                return
            if int(state["capacity"]) != self.buffer.capacity:
                self.buffer = self._make_buffer(int(state["capacity"]), self.buffer_seed + rank)
            self.buffer.load_state_dict(state)
            return
        capacity = self._per_rank_capacity(world)
        rank_zero_warn(
            f"Restoring {len(states)} saved replay buffer(s) on {world} process(es): they are pooled and re-sharded "
            f"({capacity} slots per rank)."
        )
        self.buffer = self._make_buffer(capacity, self.buffer_seed + rank)
        self.buffer.load_state_dict(pool_buffer_states(saved, rank, world, capacity, seed=self.buffer_seed + rank))

    def sync_buffers(self) -> None:
        """Bring every rank's buffer to rank 0 for the next checkpoint; a collective, called on every rank alike."""
        _, world = self._rank_world()
        if world > 1:
            states = gather_objects_to_rank_zero(self.buffer.state_dict(), world)
            if states is not None:
                states[0] = None  # rank 0 saves its own buffer as it is at the save
            self._buffer_states = states

    @override
    def configure_callbacks(self) -> list[Callback]:
        """The callback that synchronises the buffers before Lightning's checkpoints (see the class docstring)."""
        return [_BufferSync()]

    @override
    def setup(self, stage: str) -> None:
        """Split the memory budget over DDP ranks: each rank keeps ``capacity // world_size`` items of its shard."""
        rank, world = self._rank_world()
        per_rank = self._per_rank_capacity(world)
        if self.buffer.capacity == per_rank:
            return
        if len(self.buffer) == 0:
            self.buffer = self._make_buffer(per_rank, self.buffer_seed + rank)
        else:  # a filled buffer (e.g. from `load_from_checkpoint`) meets another world size: re-shard it
            self.restore_buffers([self.buffer.state_dict()])

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # no collective: this rank's buffer as it is, the others' as of the last synchronisation (rank 0 has them)
        rank, world = self._rank_world()
        states: list[Any] = list(self._buffer_states or [None] * world)
        if len(states) != world:
            states = [None] * world
        states[rank] = self.buffer.state_dict()
        checkpoint["replay_buffers"] = states

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("replay_buffers")
        if not states:
            rank_zero_warn("The checkpoint has no replay buffer; the buffer starts empty.")
            return
        self.restore_buffers(states)


class ExperienceReplay(_ReplayModule):
    """Experience Replay (ER): each incoming batch is trained together with a replay batch, then the buffer is updated.

    One SGD step on the mean loss of the ``b`` incoming and ``r`` replayed samples (replayed ones weighted by
    their importance weights when ``prioritized``); then the incoming batch is offered to the reservoir. While
    the buffer holds fewer than ``replay_batch_size`` items, the uniform buffer replays what it holds (the
    prioritized buffer draws with replacement, so it replays ``replay_batch_size`` as soon as it holds one).

    With ``prioritized=True`` the buffer is a :class:`~lightning_per.replay.PrioritizedReplayBuffer`: draws
    follow ``p ∝ (loss + eps) ** alpha``, new items get the max priority, and the replayed items' priorities
    are set to their losses of this step.

    Args:
        capacity: the total memory budget (items); under DDP each rank keeps ``capacity // world_size``.
        replay_batch_size: replayed samples per incoming batch.
        prioritized: prioritized instead of uniform replay.
        alpha: priority exponent (prioritized only).
        priority_beta: importance-weight exponent in ``[0, 1]`` (prioritized only).
        buffer_seed: seed of the buffer (rank ``r`` uses ``buffer_seed + r``).
        backbone: see :class:`ContinualModule`.
        input_dim: see :class:`ContinualModule`.
        hidden_dim: see :class:`ContinualModule`.
        num_hidden_layers: see :class:`ContinualModule`.
        num_tasks: see :class:`ContinualModule`.
        classes_per_task: see :class:`ContinualModule`.
        shared_classes: see :class:`ContinualModule`.
        scenario: see :class:`ContinualModule`.
        lr: SGD learning rate.

    Raises:
        ValueError: ``capacity <= 0``, ``replay_batch_size < 0``, ``alpha < 0`` or ``priority_beta`` outside
            ``[0, 1]``.

    Example::

        >>> er = ExperienceReplay(capacity=100, replay_batch_size=10, input_dim=4, num_tasks=2)
        >>> er.buffer.capacity
        100
    """

    def __init__(
        self,
        capacity: int = 500,
        replay_batch_size: int = 10,
        prioritized: bool = False,
        alpha: float = 0.6,
        priority_beta: float = 0.4,
        buffer_seed: int = 0,
        backbone: nn.Module | None = None,
        input_dim: int = 40,
        hidden_dim: int = 100,
        num_hidden_layers: int = 2,
        num_tasks: int = 5,
        classes_per_task: int = 2,
        shared_classes: bool = False,
        scenario: Literal["task", "class"] = "class",
        lr: float = 0.03,
    ) -> None:
        super().__init__(
            backbone,
            input_dim,
            hidden_dim,
            num_hidden_layers,
            num_tasks,
            classes_per_task,
            shared_classes,
            scenario,
            lr,
        )
        if replay_batch_size < 0:
            raise ValueError(f"`replay_batch_size` must be >= 0, got {replay_batch_size}.")
        if alpha < 0:
            raise ValueError(f"`alpha` (priority exponent) must be >= 0, got {alpha}; 0 is uniform replay.")
        if not 0.0 <= priority_beta <= 1.0:
            raise ValueError(
                f"`priority_beta` (importance-weight exponent) must be in [0, 1], got {priority_beta}; 1 is unbiased."
            )
        self.replay_batch_size = replay_batch_size
        self.prioritized = prioritized
        self.alpha = alpha
        self.priority_beta = priority_beta
        self._init_buffer(capacity, buffer_seed, "capacity", replay_batch_size, "`replay_batch_size`")

    @override
    def _make_buffer(self, capacity: int, seed: int) -> ReplayBuffer:
        if self.prioritized:
            return PrioritizedReplayBuffer(capacity, alpha=self.alpha, beta=self.priority_beta, seed=seed)
        return ReservoirBuffer(capacity, seed=seed)

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, task = self._unpack(batch)
        self.observe_tasks(task)
        replay = self.buffer.sample(self.replay_batch_size)
        n = x.shape[0]
        if replay.slots.numel():
            rx, ry, rt = replay.batch
            xs = torch.cat([x, rx.to(x.device, x.dtype)])
            ys = torch.cat([y, ry.to(y.device, y.dtype)])
            ts = torch.cat([task, rt.to(task.device)])
            weights = torch.cat([torch.ones(n, device=x.device), replay.weight.to(x.device)])
        else:
            xs, ys, ts, weights = x, y, task, torch.ones(n, device=x.device)
        losses = self.per_sample_loss(xs, ys, ts)
        loss = (losses * weights).mean()
        if isinstance(self.buffer, PrioritizedReplayBuffer) and replay.slots.numel():
            self.buffer.update_priorities(replay.slots, losses[n:].detach())
        self.buffer.add((x, y.to(torch.int64), task))
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/replay_size", float(replay.slots.numel()), batch_size=n)
        self.log("train/buffer_size", float(len(self.buffer)), batch_size=n)
        return loss


class MER(_ReplayModule):
    """Meta-Experience Replay (Riemer et al., ICLR 2019), with manual optimisation.

    Per incoming example (``variant="example"``, the paper's Algorithm 1): remember the weights ``θ_0``; repeat
    ``batches_per_example`` times: draw ``replay_batch_size - 1`` buffer items, append the new example, remember
    ``θ_A``, take one plain SGD step per sample, then ``θ ← θ_A + beta (θ - θ_A)`` (within-batch Reptile);
    after the batches ``θ ← θ_0 + gamma (θ - θ_0)`` (across-batch Reptile); then offer the example to the
    reservoir. ``variant="batch"`` treats the whole incoming batch as the new "example": each inner batch holds
    ``replay_batch_size - 1`` replays plus the incoming batch. ``step_batch_size`` samples go into each SGD step
    (1 is the paper's per-sample steps; larger is faster and coarser).

    Unlike the reference code (``meralg1.py``), which draws ``replay_batch_size`` memories plus the new example and
    puts the new example first, an inner batch here has exactly ``replay_batch_size`` samples (``k - 1`` distinct
    replays, then the new one last, as in the paper's batch construction and ``meralg6.py``). While the buffer
    holds fewer than ``k - 1`` items, all of them are replayed. The reference's MNIST settings with 5120 memories
    are ``lr=0.03, beta=0.03, gamma=1.0, replay_batch_size=100, batches_per_example=10``.

    Under DDP every inner SGD step is a DDP step (Lightning's ``manual_backward`` all-reduces the gradients): each
    step averages the gradients of the ranks' samples at the same position, so the weights stay identical on all
    ranks; every rank replays from its own buffer of ``memories // world_size`` items. All ranks take the same
    number of inner steps because their shards and buffers have the same sizes.

    Args:
        memories: the total memory budget (items); under DDP each rank keeps ``memories // world_size``.
        replay_batch_size: ``k``, samples per inner batch (``k - 1`` replays + the new one).
        batches_per_example: ``s``, inner batches per incoming example.
        beta: within-batch Reptile rate in ``(0, 1]``.
        gamma: across-batch Reptile rate in ``(0, 1]``.
        lr: plain SGD learning rate of the inner steps.
        variant: ``"example"`` (Algorithm 1) or ``"batch"``.
        step_batch_size: samples per inner SGD step.
        buffer_seed: seed of the buffer (rank ``r`` uses ``buffer_seed + r``).
        backbone: see :class:`ContinualModule`.
        input_dim: see :class:`ContinualModule`.
        hidden_dim: see :class:`ContinualModule`.
        num_hidden_layers: see :class:`ContinualModule`.
        num_tasks: see :class:`ContinualModule`.
        classes_per_task: see :class:`ContinualModule`.
        shared_classes: see :class:`ContinualModule`.
        scenario: see :class:`ContinualModule`.

    Raises:
        ValueError: ``memories <= 0``, ``replay_batch_size < 1``, ``batches_per_example < 1``,
            ``beta``/``gamma`` outside ``(0, 1]`` or ``step_batch_size < 1``.

    Example::

        >>> mer = MER(memories=100, replay_batch_size=5, batches_per_example=2, beta=0.1, gamma=1.0, input_dim=4)
        >>> mer.automatic_optimization
        False
    """

    def __init__(
        self,
        memories: int = 5120,
        replay_batch_size: int = 100,
        batches_per_example: int = 10,
        beta: float = 0.03,
        gamma: float = 1.0,
        lr: float = 0.03,
        variant: Literal["example", "batch"] = "example",
        step_batch_size: int = 1,
        buffer_seed: int = 0,
        backbone: nn.Module | None = None,
        input_dim: int = 40,
        hidden_dim: int = 100,
        num_hidden_layers: int = 2,
        num_tasks: int = 5,
        classes_per_task: int = 2,
        shared_classes: bool = False,
        scenario: Literal["task", "class"] = "class",
    ) -> None:
        super().__init__(
            backbone,
            input_dim,
            hidden_dim,
            num_hidden_layers,
            num_tasks,
            classes_per_task,
            shared_classes,
            scenario,
            lr,
        )
        for name, value in (("beta", beta), ("gamma", gamma)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"`{name}` (Reptile rate) must be in (0, 1], got {value}.")
        for name, ivalue in (
            ("replay_batch_size", replay_batch_size),
            ("batches_per_example", batches_per_example),
            ("step_batch_size", step_batch_size),
        ):
            if ivalue < 1:
                raise ValueError(f"`{name}` must be >= 1, got {ivalue}.")
        if variant not in ("example", "batch"):
            raise ValueError(f"`variant` must be 'example' or 'batch', got {variant!r}.")
        self.automatic_optimization = False
        self.replay_batch_size = replay_batch_size
        self.batches_per_example = batches_per_example
        self.beta = beta
        self.gamma = gamma
        self.variant = variant
        self.step_batch_size = step_batch_size
        self._replay_slack = 0
        self._init_buffer(memories, buffer_seed, "memories", replay_batch_size - 1, "`replay_batch_size - 1`")

    def _inner_batch(self, x: Tensor, y: Tensor, task: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        available = len(self.buffer) - self._replay_slack
        replay = self.buffer.sample(min(self.replay_batch_size - 1, max(available, 0)))
        if replay.slots.numel() == 0:
            return x, y, task
        rx, ry, rt = replay.batch
        return (
            torch.cat([rx.to(x.device, x.dtype), x]),
            torch.cat([ry.to(y.device, y.dtype), y]),
            torch.cat([rt.to(task.device), task]),
        )

    def meta_update(self, x: Tensor, y: Tensor, task: Tensor) -> Tensor:
        """One MER update for the new sample(s) ``(x, y, task)``; returns their loss before the update.

        Does not touch the buffer; :meth:`training_step` offers the samples to it afterwards.
        """
        opt = self.optimizers()
        if isinstance(opt, list):
            opt = opt[0]
        params = [p for p in self.parameters() if p.requires_grad]
        with torch.no_grad():
            before_loss = self.per_sample_loss(x, y, task).mean()
        theta_0 = [p.detach().clone() for p in params]
        for _ in range(self.batches_per_example):
            bx, by, bt = self._inner_batch(x, y, task)
            theta_a = [p.detach().clone() for p in params]
            for start in range(0, bx.shape[0], self.step_batch_size):
                sl = slice(start, start + self.step_batch_size)
                opt.zero_grad()
                loss = self.per_sample_loss(bx[sl], by[sl], bt[sl]).mean()
                self.manual_backward(loss)
                opt.step()
            reptile_interpolate_(params, theta_a, self.beta)
        reptile_interpolate_(params, theta_0, self.gamma)
        return before_loss

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y, task = self._unpack(batch)
        self.observe_tasks(task)
        self._replay_slack = 0
        _, world = self._rank_world()
        if world > 1:  # every rank must take the same number of (all-reduced) inner steps: replay the smallest count
            sizes = self.all_gather(torch.tensor(len(self.buffer), device=self.device))
            self._replay_slack = len(self.buffer) - int(torch.as_tensor(sizes).min())
        units = [slice(i, i + 1) for i in range(x.shape[0])] if self.variant == "example" else [slice(None)]
        losses = []
        for sl in units:
            losses.append(self.meta_update(x[sl], y[sl], task[sl]))
            self.buffer.add((x[sl], y[sl].to(torch.int64), task[sl]))
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/buffer_size", float(len(self.buffer)), batch_size=x.shape[0])
        return loss


@torch.no_grad()
def evaluate_tasks(module: ContinualModule, datasets: Sequence[Dataset], batch_size: int = 512) -> Tensor:
    """Accuracy of ``module`` on each task's ``(x, y, task)`` dataset (eval mode, restored afterwards).

    Args:
        module: the model.
        datasets: one evaluation dataset per task, yielding ``(x, y, task)``.
        batch_size: evaluation batch size.

    Returns:
        float tensor ``(len(datasets),)`` of accuracies.
    """
    was_training = module.training
    module.eval()
    accs = []
    try:
        for dataset in datasets:
            correct, total = 0, 0
            for x, y, task in DataLoader(dataset, batch_size=batch_size):
                x, y, task = x.to(module.device), y.to(module.device), task.to(module.device)
                correct += int((module.predict_batch(x, task) == y).sum())
                total += y.numel()
            accs.append(correct / max(total, 1))
    finally:
        module.train(was_training)
    return torch.tensor(accs)


class _BufferSync(Callback):
    """Calls :meth:`_ReplayModule.sync_buffers` at the points where Lightning may save a checkpoint.

    Its ``on_train_batch_end`` and ``on_train_epoch_end`` run before the checkpoint callbacks' (Lightning puts those
    last), and validation starts precede the checkpoints saved at validation ends.
    """

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if checkpoint_due(trainer):
            pl_module.sync_buffers()  # type: ignore[operator]

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            pl_module.sync_buffers()  # type: ignore[operator]

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.sync_buffers()  # type: ignore[operator]
