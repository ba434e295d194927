"""PrioritizedSampler: a seeded, self-sharding ``DistributedSampler`` that draws from a score table."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from lightning_per import functional as PF
from lightning_per.score_table import ScoreTable
from lightning_per.strategy import SamplingPlan, SamplingStrategy, build_plan

__all__ = ["PrioritizedSampler", "schedule_notices"]


class PrioritizedSampler(DistributedSampler):
    """Draws one epoch of indices from a ``ScoreTable`` with a ``SamplingStrategy``.

    Every rank builds the same plan from the same table, generator seeded by ``seed`` and the epoch, and keeps
    the positions ``rank, rank + world, ...`` of it: the ranks' shares are disjoint parts of one epoch's draw.
    Because it subclasses ``DistributedSampler``, Lightning leaves it alone under DDP (no ``list(sampler)``).

    Indices are produced lazily in chunks, by inverse-CDF lookup for draws with replacement, so there is no
    2^24-category limit and no epoch-sized Python list or tensor. Weighted strategies yield ``(index, weight)`` pairs,
    the uniform strategy plain ints; ``IndexedDataset`` accepts both.

    Args:
        data_source: the training set (only its length is used).
        scores: the score table (``None``: uniform).
        strategy: the sampling strategy (``None``: uniform).
        num_replicas: number of ranks.
        rank: this rank.
        seed: base seed, shared by all ranks.
        max_epochs: the Trainer's ``max_epochs`` for annealing schedules (``None``: no annealing).
        chunk_size: draws generated per chunk.

    Example:
        >>> sampler = PrioritizedSampler(range(10), seed=0)
        >>> sorted(sampler) == list(range(10))
        True
    """

    def __init__(
        self,
        data_source: Sized,
        scores: ScoreTable | None = None,
        strategy: SamplingStrategy | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        max_epochs: int | None = None,
        chunk_size: int = 1 << 18,
    ) -> None:
        if num_replicas < 1:
            raise ValueError(f"`num_replicas` must be >= 1, got {num_replicas}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"`rank` must be in [0, {num_replicas}), got {rank}.")
        if chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
        if len(data_source) == 0:
            raise ValueError("The training set is empty: `data_source` has length 0.")
        if scores is not None and len(scores) != len(data_source):
            raise ValueError(f"`scores` has {len(scores)} entries but `data_source` has {len(data_source)} samples.")
        # DistributedSampler's own __init__ asks torch.distributed for the world; set its attributes directly.
        self.dataset = data_source  # type: ignore[assignment]
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.seed = seed
        self.shuffle = True
        self.drop_last = False
        self.scores = scores
        self.strategy = strategy or SamplingStrategy("uniform")
        self.max_epochs = max_epochs
        self.chunk_size = chunk_size
        self._plan_key: tuple[Any, ...] | None = None
        self._plan: SamplingPlan | None = None

    @property
    def num_samples(self) -> int:
        """Indices this rank yields in the current epoch."""
        return math.ceil(self.plan().num_draws / self.num_replicas)

    @num_samples.setter
    def num_samples(self, value: int) -> None:  # DistributedSampler assigns it; the plan decides
        pass

    @property
    def total_size(self) -> int:
        """Indices all ranks yield together (the plan's size rounded up to a multiple of the world size)."""
        return self.num_samples * self.num_replicas

    @total_size.setter
    def total_size(self, value: int) -> None:
        pass

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (Lightning calls this at every epoch start; the plan is rebuilt lazily)."""
        self.epoch = epoch

    def _generator(self) -> torch.Generator:
        # modulo 2**64, as torch maps a seed itself: any int `seed` works, negative or above 2**64
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (1 << 64))

    def plan(self) -> SamplingPlan:
        """The current epoch's plan, cached until the epoch or the score table changes."""
        version = self.scores.version if self.scores is not None else 0
        key = (self.epoch, version, self.max_epochs, dataclasses.astuple(self.strategy))  # a changed strategy re-plans
        if self._plan is None or key != self._plan_key:
            self._plan = build_plan(
                self.scores.scores if self.scores is not None else None,
                self.strategy,
                self.epoch,
                self.max_epochs,
                self._generator(),
                len(self.dataset),  # type: ignore[arg-type]
            )
            self._plan_key = key
        return self._plan

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[Any]:
        plan = self.plan()
        per_rank = self.num_samples
        if plan.order is not None:
            order = plan.order
            padding = per_rank * self.num_replicas - order.numel()
            if padding > 0:  # as DistributedSampler: repeat from the start so every rank gets the same count
                order = torch.cat([order, order.repeat(math.ceil(padding / order.numel()))[:padding]])
            mine = order[self.rank :: self.num_replicas]
            for start in range(0, per_rank, self.chunk_size):
                yield from self._emit(plan, mine[start : start + self.chunk_size])
            return
        assert plan.cdf is not None
        generator = self._generator()
        # chunks of one global draw sequence, a multiple of the world size; each rank keeps its stride of it
        step = self.chunk_size * self.num_replicas
        total = per_rank * self.num_replicas
        n = plan.cdf.numel()
        for start in range(0, total, step):
            index, p = PF.draw_from_cdf(plan.cdf, min(step, total - start), generator, self.rank, self.num_replicas)
            weights = PF.importance_weights(p, n, plan.beta, plan.max_weight)
            yield from zip(index.tolist(), weights.tolist(), strict=True)

    @staticmethod
    def _emit(plan: SamplingPlan, index: torch.Tensor) -> Iterator[Any]:
        if not plan.weighted:
            return iter(index.tolist())
        return zip(index.tolist(), plan.weights(index).tolist(), strict=True)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the seed and ``max_epochs`` (the plan itself is rebuilt from the score table)."""
        return {"epoch": self.epoch, "seed": self.seed, "max_epochs": self.max_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the epoch and seed (``max_epochs`` stays the current Trainer's)."""
        self.epoch = int(state.get("epoch", self.epoch))
        self.seed = int(state.get("seed", self.seed))


def schedule_notices(
    strategy: SamplingStrategy, max_epochs: int | None, saved: int | None, epoch: int, scored: bool = False
) -> tuple[str | None, str | None]:
    """What to tell the user about the schedule: it cannot anneal, or never applies; a resume rescaled it.

    Args:
        strategy: the sampling strategy.
        max_epochs: the Trainer's ``max_epochs`` (``None`` or negative: training stops by steps or time).
        saved: the ``max_epochs`` of the run a checkpoint came from (``None``: not resumed).
        epoch: the epoch the run goes on from.
        scored: whether the score table holds scores already (a second ``fit``), so epoch 0 can be prioritized.

    Example:
        >>> schedule_notices(SamplingStrategy("rank"), None, None, 0)[0] is not None  # beta anneals to 1.0
        True
    """
    annealed = strategy.annealed()
    unknown = max_epochs is None or max_epochs < 0
    missing = None
    if annealed and unknown:
        missing = (
            f"The sampling strategy anneals {', '.join(annealed)} over the Trainer's `max_epochs`, but "
            f"`max_epochs={max_epochs}` (training stops by `max_steps` or `max_time`), so they stay at their "
            "start values. Set `Trainer(max_epochs=...)`, or set the `*_final` values to None for constant ones."
        )
    final, initial = strategy.uniform_epochs_at_end(max_epochs), strategy.initial_uniform_epochs
    length = max_epochs if max_epochs is not None and max_epochs > 0 and strategy.name != "uniform" else None
    if length is not None and strategy.first_prioritized_epoch(scored) >= length - final:
        start = f"`initial_uniform_epochs={initial}`" if initial else "epoch 0 (nothing is scored yet)"
        missing = (
            f"The sampling strategy {strategy.name!r} never applies: {start} and {final} final uniform epochs leave "
            f"no prioritized epoch of `max_epochs={max_epochs}`, so every epoch is a uniform pass. Raise `max_epochs` "
            "or lower the uniform epochs."
        )
    first = strategy.first_prioritized_epoch()  # nothing was drawn by the saved schedule before this epoch
    if saved is None or saved == max_epochs or unknown or strategy.name == "uniform" or epoch <= first:
        return missing, None
    changes = [*annealed]
    if strategy.uniform_epochs_at_end(saved) or strategy.uniform_epochs_at_end(max_epochs):
        changes.append(
            f"the final uniform epochs ({strategy.uniform_epochs_at_end(saved)} of {saved}, now "
            f"{strategy.uniform_epochs_at_end(max_epochs)} of {max_epochs})"
        )
    if not changes:
        return missing, None
    return missing, (
        f"Resumed from a run with `max_epochs={saved}`, now `max_epochs={max_epochs}`: the sampling schedule "
        f"({'; '.join(changes)}) is rescaled to {max_epochs} epochs from epoch {epoch} on, so the rest of the run "
        f"draws differently from a run started with `max_epochs={max_epochs}`. Resume with `max_epochs={saved}` to "
        "continue the saved schedule."
    )
