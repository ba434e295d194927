import pytest
import torch
from scipy.stats import chisquare

from lightning_per import SamplingStrategy
from lightning_per import functional as PF
from lightning_per.sampler import PrioritizedSampler
from lightning_per.score_table import ScoreTable


def _table(n, seed=0):
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
    table = _table(n)
    strategy = SamplingStrategy(name)
    single = list(PrioritizedSampler(range(n), table, strategy, num_replicas=1, rank=0, seed=7))
    shards = [
        list(PrioritizedSampler(range(n), table, strategy, num_replicas=world, rank=r, seed=7)) for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1
    interleaved = [shards[p % world][p // world] for p in range(len(shards[0]) * world)]
    if name in ("proportional", "rank"):  # i.i.d. draws: the ranks hold the strides of one draw of the epoch
        sampler = PrioritizedSampler(range(n), table, strategy, num_replicas=world, seed=7)
        whole, _ = PF.draw_from_cdf(sampler.plan().cdf, len(interleaved), sampler._generator())
        assert _indices(interleaved) == whole.tolist()
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
    table = _table(20)
    s = PrioritizedSampler(range(20), table, SamplingStrategy("rank", alpha=1.0, beta=1.0, uniform_mix=0.0))
    items = list(s)
    assert all(isinstance(i, tuple) for i in items)
    plan = s.plan()
    p = plan.weights(torch.arange(20)).reciprocal() / 20
    assert torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_world_size_larger_than_the_dataset_still_gives_every_rank_a_sample():
    shards = [list(PrioritizedSampler(range(2), num_replicas=4, rank=r)) for r in range(4)]
    assert all(len(s) == 1 for s in shards) and {s[0] for s in shards} == {0, 1}


def test_sampler_state_dict_loads_weights_only(tmp_path):
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


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="`rank` must be in"):
        PrioritizedSampler(range(3), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="length 0"):
        PrioritizedSampler([])
    with pytest.raises(ValueError, match="`chunk_size` must be >= 1, got 0"):
        PrioritizedSampler(range(3), chunk_size=0)


def test_any_int_seed_works_and_small_seeds_draw_as_before():
    assert sorted(PrioritizedSampler(range(5), seed=2**62)) == list(range(5))  # overflowed 64 bits before
    assert sorted(PrioritizedSampler(range(5), seed=-3)) == list(range(5))
    # the generator of a seed below 2**43 is seeded as it always was: seed * 1_000_003 + epoch
    expected = torch.randperm(5, generator=torch.Generator().manual_seed(7 * 1_000_003 + 0)).tolist()
    assert list(PrioritizedSampler(range(5), seed=7)) == expected
