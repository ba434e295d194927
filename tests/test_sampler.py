"""lightning_per.sampler: the seeded, sharded, resumable sampler of an epoch's plan."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

import lightning_per as lp
from lightning_per import SamplingStrategy
from lightning_per import functional as PF
from lightning_per.sampler import PrioritizedSampler
from lightning_per.score_table import ScoreTable
from lightning_per.strategy import SamplingPlan
from tests.generators import (
    EPOCHS,
    FAST,
    MAX_EPOCHS,
    PRUNE_ONE_WARNING,
    SEEDS,
    check_plan,
    large_score_tables,
    plan_or_value_error,
    plan_probabilities,
    sampling_strategies,
    score_tables,
    split_items,
    table_of,
)

pytestmark = pytest.mark.filterwarnings(PRUNE_ONE_WARNING)


def _scored_table(n, seed=0):
    t = ScoreTable(n)
    t.update(torch.arange(n), torch.rand(n, generator=torch.Generator().manual_seed(seed)) ** 3)
    return t


def _indices(items):
    return [i if isinstance(i, int) else i[0] for i in items]


def test_uniform_sampler_is_a_seeded_permutation_that_changes_with_epoch():
    s = PrioritizedSampler(range(50), seed=3)
    first = list(s)
    assert sorted(first) == list(range(50)) and first == list(PrioritizedSampler(range(50), seed=3))
    s.set_epoch(1)
    assert list(s) != first


@pytest.mark.parametrize("name", ["uniform", "proportional", "rank", "prune"])
def test_ranks_draw_disjoint_shares_of_one_epoch(name):
    n, world = 101, 3
    table = _scored_table(n)
    strategy = SamplingStrategy(name)
    single = list(PrioritizedSampler(range(n), table, strategy, num_replicas=1, rank=0, seed=7))
    shards = [
        list(PrioritizedSampler(range(n), table, strategy, num_replicas=world, rank=r, seed=7)) for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1
    interleaved = [shards[p % world][p // world] for p in range(len(shards[0]) * world)]
    if name in ("proportional", "rank"):  # i.i.d. draws: the ranks hold the strides of one draw of the epoch
        whole = dataclasses.replace(strategy, num_samples=len(interleaved))
        one_process = PrioritizedSampler(range(n), table, whole, num_replicas=1, rank=0, seed=7)
        assert _indices(interleaved) == _indices(one_process)
    else:  # a pass without replacement: the shards partition the epoch (plus the DistributedSampler padding)
        assert _indices(interleaved)[: len(single)] == _indices(single)
        assert set(_indices(interleaved)) == set(_indices(single))


def test_weighted_sampler_frequencies_match_p_chi_square():
    n = 10
    table = ScoreTable(n)
    table.update(torch.arange(n), torch.arange(1.0, n + 1))
    s = PrioritizedSampler(
        range(n), table, SamplingStrategy("proportional", uniform_mix=0.0, eps=0.0, num_samples=100_000)
    )
    counts = torch.bincount(torch.tensor(_indices(s)), minlength=n).double()
    expected = torch.arange(1.0, n + 1, dtype=torch.float64) / 55 * 100_000
    assert chisquare(counts.numpy(), expected.numpy()).pvalue > 1e-3


def test_weighted_sampler_yields_unbiased_weights():
    table = _scored_table(20)
    s = PrioritizedSampler(range(20), table, SamplingStrategy("rank", alpha=1.0, beta=1.0, uniform_mix=0.0))
    items = list(s)
    assert all(isinstance(i, tuple) for i in items)
    plan = s.plan()
    p = plan.weights(torch.arange(20)).reciprocal() / 20
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_world_size_larger_than_the_dataset_still_gives_every_rank_a_sample():
    shards = [list(PrioritizedSampler(range(2), num_replicas=4, rank=r)) for r in range(4)]
    assert all(len(s) == 1 for s in shards) and {s[0] for s in shards} == {0, 1}


def test_a_sampler_state_loads_weights_only_and_draws_the_same_epoch(tmp_path):
    s = PrioritizedSampler(range(5), seed=11)
    s.set_epoch(4)
    torch.save(s.state_dict(), tmp_path / "s.pt")
    t = PrioritizedSampler(range(5))
    t.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert list(t) == list(s)


def test_huge_dataset_draws_lazily_beyond_multinomial_limits():
    n = (1 << 24) + 5
    table = ScoreTable(n)
    table.scores.zero_()
    table.scores[-1] = 1e6  # p of the last index ~ 1e6 / (1e6 + n * eps) ~ 0.98
    s = PrioritizedSampler(range(n), table, SamplingStrategy("proportional", uniform_mix=0.0, num_samples=1000))
    it = iter(s)
    first = [next(it) for _ in range(200)]
    assert sum(i == n - 1 for i, _ in first) > 180


def test_bad_sampler_arguments_are_refused_naming_the_problem():
    with pytest.raises(ValueError, match="`rank` must be in"):
        PrioritizedSampler(range(3), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="length 0"):
        PrioritizedSampler([])
    with pytest.raises(ValueError, match="`chunk_size` must be >= 1, got 0"):
        PrioritizedSampler(range(3), chunk_size=0)


def test_any_int_seed_works_and_a_seed_always_draws_the_same_order():
    assert sorted(PrioritizedSampler(range(5), seed=2**62)) == list(range(5))  # overflowed 64 bits before
    assert sorted(PrioritizedSampler(range(5), seed=-3)) == list(range(5))
    # the order of a seed is pinned: the generator is seeded with seed * 1_000_003 + epoch
    expected = torch.randperm(5, generator=torch.Generator().manual_seed(7 * 1_000_003 + 0)).tolist()
    assert list(PrioritizedSampler(range(5), seed=7)) == expected


def test_plan_follows_max_epochs_and_priorities_leave_their_input_alone():
    table = lp.score_table.ScoreTable(10)
    table.update(torch.arange(10), torch.rand(10, generator=torch.Generator().manual_seed(0)))
    strategy = lp.SamplingStrategy("proportional", final_uniform_epochs=1)
    sampler = lp.sampler.PrioritizedSampler(range(10), table, strategy, seed=0, max_epochs=None)
    sampler.set_epoch(1)
    assert sampler.plan().cdf is not None
    sampler.max_epochs = 2  # epoch 1 is now the final uniform epoch
    assert sampler.plan().cdf is None
    scores = torch.tensor(np.array([1.0, 2.0]))  # float64 input
    PF.proportional_priorities(scores, alpha=2.0, eps=1.0)
    assert scores.tolist() == [1.0, 2.0]


@settings(max_examples=10, deadline=None, database=None)
@given(scores=large_score_tables(), strategy=sampling_strategies(), epoch=EPOCHS, max_epochs=MAX_EPOCHS)
def test_large_tables_give_valid_plans_and_in_range_draws(scores, strategy, epoch, max_epochs):
    n = scores.numel()
    strategy = dataclasses.replace(strategy, num_samples=None)  # one epoch of n draws
    plan = plan_or_value_error(scores, strategy, epoch, max_epochs)
    if plan is None:
        return
    check_plan(plan, n, strategy)
    sampler = PrioritizedSampler(range(n), table_of(scores), strategy, num_replicas=2, rank=1, max_epochs=max_epochs)
    sampler.set_epoch(epoch)
    index, weight = split_items(list(sampler))
    assert len(index) == len(sampler) == math.ceil(sampler.plan().num_draws / 2)
    assert min(index) >= 0 and max(index) < n
    assert all(0 < w < math.inf for w in weight)


@FAST
@given(
    scores=score_tables(),
    strategy=sampling_strategies(),
    world=st.integers(1, 4),
    epoch=EPOCHS,
    max_epochs=MAX_EPOCHS,
    seed=SEEDS,
    chunk_size=st.integers(1, 16) | st.just(1 << 18),
)
def test_ranks_hold_disjoint_shares_of_one_epoch(scores, strategy, world, epoch, max_epochs, seed, chunk_size):
    n = scores.numel()
    table = table_of(scores)

    def sampler(rank: int, num_replicas: int = world, chunk: int = chunk_size, s: SamplingStrategy = strategy):
        out = PrioritizedSampler(range(n), table, s, num_replicas, rank, seed, max_epochs, chunk)
        out.set_epoch(epoch)
        return out

    if plan_or_value_error(scores, strategy, epoch, max_epochs) is None:
        with pytest.raises(ValueError):
            sampler(0).plan()
        return
    plan = sampler(0).plan()
    per_rank = math.ceil(plan.num_draws / world)
    shares = []
    for rank in range(world):
        items = list(sampler(rank))
        assert len(items) == len(sampler(rank)) == per_rank
        index, weight = split_items(items)
        assert all(0 <= i < n for i in index)
        assert all(0 < w < math.inf for w in weight)  # never NaN, never 0, never inf
        expected = plan.weights(torch.tensor(index, dtype=torch.int64))
        assert torch.allclose(torch.tensor(weight, dtype=torch.float64), expected, rtol=1e-12, atol=0)
        shares.append(items)
    interleaved = [shares[p % world][p // world] for p in range(per_rank * world)]
    index, _ = split_items(interleaved)
    if plan.order is not None:  # without replacement: the shards partition the pass, plus DistributedSampler padding
        order = plan.order.tolist()
        assert index[: len(order)] == order
        padding = index[len(order) :]
        assert len(padding) < world and padding == (order * world)[: len(padding)]
    else:  # with replacement: the ranks hold the strides of one global draw, chunk by chunk
        whole = dataclasses.replace(strategy, num_samples=per_rank * world)
        reference, reference_weight = split_items(list(sampler(0, num_replicas=1, chunk=chunk_size * world, s=whole)))
        assert index == reference
        # the same weights up to an ulp: torch's vectorised and scalar `pow` round differently
        weight = torch.tensor(split_items(interleaved)[1], dtype=torch.float64)
        assert torch.allclose(weight, torch.tensor(reference_weight, dtype=torch.float64), rtol=1e-12, atol=0)


@FAST
@given(
    scores=score_tables(),
    strategy=sampling_strategies(),
    world=st.integers(1, 4),
    epoch=EPOCHS,
    max_epochs=MAX_EPOCHS,
    seed=SEEDS,
)
def test_the_sampler_repeats_an_epoch_exactly_and_changes_with_the_epoch(
    scores, strategy, world, epoch, max_epochs, seed
):
    assume(plan_or_value_error(scores, strategy, epoch, max_epochs) is not None)
    assume(plan_or_value_error(scores, strategy, epoch + 1, max_epochs) is not None)
    n, table, rank = scores.numel(), table_of(scores), world - 1

    def run(e: int) -> tuple[list, SamplingPlan]:
        sampler = PrioritizedSampler(range(n), table, strategy, world, rank, seed, max_epochs)
        sampler.set_epoch(e)
        return list(sampler), sampler.plan()

    first, plan = run(epoch)
    assert run(epoch)[0] == first  # a fresh sampler (another rank's process, a resumed run)
    sampler = PrioritizedSampler(range(n), table, strategy, world, rank, seed, max_epochs)
    sampler.set_epoch(epoch)
    assert list(sampler) == list(sampler) == first  # iterating twice
    following, next_plan = run(epoch + 1)
    # a pass of >= 12 samples, or >= 32 draws with no probability above 1/2, repeats with probability < 1e-8
    varied = [
        len(items) >= 32 and float(plan_probabilities(p).max()) <= 0.5 if p.cdf is not None else p.num_draws >= 12
        for items, p in ((first, plan), (following, next_plan))
    ]
    if world == 1 and all(varied):
        assert following != first
