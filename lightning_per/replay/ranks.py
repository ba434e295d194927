"""One replay buffer per DDP process: the memory budget split, every rank's buffer in checkpoints, re-sharding.

Shared by ``ExperienceReplay`` (a callback) and ``MER`` (a
module). Under DDP each rank keeps its own buffer of ``capacity // world_size`` slots, filled by reservoir sampling
over that rank's shard of the stream (seeded ``seed + rank``): the memory budget summed over ranks is the
single-process one, and the union of the ranks' buffers is a uniform sample of the whole stream.

Checkpoints hold every rank's buffer without a collective at save time (a checkpoint built on rank 0 alone does not
hang): ``RankBuffers.sync`` brings the buffers to rank 0 at synchronisation points (epoch ends, validation starts,
steps where a ``ModelCheckpoint`` saves by ``every_n_train_steps``), and ``RankBuffers.states`` gives this rank's
buffer as it is and the others' as of the last synchronisation (``None`` before the first). A run resumed on as many
processes gets each rank's buffer back exactly; on another number of processes the saved buffers are pooled and
re-sharded (``pool_buffer_states``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

from lightning_per.plumbing.distributed import gather_objects_to_rank_zero
from lightning_per.replay.buffer import ReplayBuffer
from lightning_per.replay.pooling import pool_buffer_states

__all__ = ["RankBuffers"]


class RankBuffers:
    """This process's replay buffer, sized and seeded for its rank, and the other ranks' states for checkpoints.

    Args:
        prototype: the buffer as configured for one process: its kind, settings, capacity (the total memory budget)
            and seed; rank ``r`` of ``world`` gets ``prototype.like(capacity // world, seed + r)``. It is the
            buffer until the setup.
        name: the argument that set the capacity, named in errors.

    Example:
        >>> from lightning_per.replay import ReservoirBuffer
        >>> shards = RankBuffers(ReservoirBuffer(10, seed=0))
        >>> shards.setup(rank=1, world=2)
        >>> shards.buffer.capacity, shards.buffer.seed
        (5, 1)
    """

    def __init__(self, prototype: ReplayBuffer, name: str = "capacity") -> None:
        self.total_capacity = prototype.capacity
        self.seed = prototype.seed
        self.name = name
        self._prototype = prototype
        self.rank, self.world = 0, 1
        self.device: torch.device | None = None
        self.buffer = prototype
        self._gathered: list[Any] | None = None  # every rank's state at the last synchronisation (rank 0)
        self._saved: list[Any] | None = None  # states restored before `setup` knew the world size
        self._ready = False

    def per_rank_capacity(self, world: int) -> int:
        """``capacity // world``.

        Raises:
            ValueError: fewer slots than processes.
        """
        per_rank = self.total_capacity // world
        if per_rank <= 0:
            raise ValueError(
                f"`{self.name}={self.total_capacity}` is smaller than the number of processes ({world}); each rank "
                f"needs at least one slot: set `{self.name}` >= {world}."
            )
        return per_rank

    def setup(self, rank: int, world: int, device: torch.device | None = None) -> None:
        """Size this rank's buffer (``capacity // world``, on ``device``); restore states loaded before the setup."""
        per_rank = self.per_rank_capacity(world)
        self.rank, self.world, self.device, self._ready = rank, world, device, True
        if self._saved is not None:
            saved, self._saved = self._saved, None
            self.restore(saved)
            return
        same_device = device is None or self.buffer.device == torch.device(device)
        if self.buffer.capacity == per_rank and same_device:
            return
        if len(self.buffer) == 0:
            self.buffer = self._make_buffer(per_rank, self.seed + rank, device)
        else:  # a filled buffer meets another world size or device: re-shard (or move) it
            self.restore([self.buffer.state_dict()], warn=self.buffer.capacity != per_rank)

    def restore(self, states: Sequence[dict[str, Any] | None], warn: bool = True) -> None:
        """Load saved buffers, one per rank of the run that saved them (``None``: a rank's buffer was not saved).

        With as many saved states as processes, rank ``r`` loads state ``r`` exactly (generator included); otherwise
        the saved states are pooled and re-sharded to ``capacity // world_size`` per rank. Before ``setup`` the
        states are loaded as for one process (so that the buffer can be inspected) and loaded again at the setup.
        """
        states = list(states)
        if not self._ready:
            self._saved = states
            warn = False
        rank, world = self.rank, self.world
        saved = [s for s in states if s is not None]
        if warn and len(saved) < len(states):
            rank_zero_warn(
                f"The checkpoint holds {len(saved)} of {len(states)} processes' replay buffers (it was taken before "
                "their first synchronisation point); "
                + ("the missing ones start empty." if len(states) == world else "the saved ones are pooled.")
            )
        if len(states) == world:
            state = states[rank]
            if state is None:
                self.buffer = self._make_buffer(self.per_rank_capacity(world), self.seed + rank, self.device)
                return
            self.buffer = self._make_buffer(int(state["capacity"]), self.seed + rank, self.device)
            self.buffer.load_state_dict(state)
            return
        capacity = self.per_rank_capacity(world)
        if warn:
            rank_zero_warn(
                f"Restoring {len(states)} saved replay buffer(s) on {world} process(es): they are pooled and "
                f"re-sharded ({capacity} slots per rank)."
            )
        self.buffer = self._make_buffer(capacity, self.seed + rank, self.device)
        self.buffer.load_state_dict(pool_buffer_states(saved, rank, world, capacity, seed=self.seed + rank))

    def sync(self) -> None:
        """Bring every rank's buffer to rank 0 for the next checkpoint; a collective, called on every rank alike."""
        if self.world > 1:
            states = gather_objects_to_rank_zero(self.buffer.state_dict(), self.world)
            if states is not None:
                states[0] = None  # rank 0 saves its own buffer as it is at the save
            self._gathered = states

    def states(self) -> list[Any]:
        """Every rank's buffer state for a checkpoint, without a collective (see the module docstring)."""
        states: list[Any] = list(self._gathered or [None] * self.world)
        if len(states) != self.world:
            states = [None] * self.world
        states[self.rank] = self.buffer.state_dict()
        return states

    def _make_buffer(self, capacity: int, seed: int, device: torch.device | None) -> ReplayBuffer:
        return self._prototype.like(capacity, seed, device)
