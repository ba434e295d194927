"""lightning_per.functional.priorities: priorities from scores, probabilities, importance weights, pruning, ESS."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import rankdata

from lightning_per import SamplingStrategy
from lightning_per import functional as PF
from lightning_per.strategy import build_plan
from tests.generators import ALPHAS, EDGE_VALUES, FAST, FINITE32, SEEDS, UNIT


def test_proportional_rejects_negative_scores_and_names_the_fix():
    with pytest.raises(ValueError, match="strategy='rank'"):
        PF.proportional_priorities(torch.tensor([1.0, -0.5]))


def test_all_zero_or_equal_priorities_fall_back_to_uniform():
    assert torch.allclose(PF.to_probabilities(torch.zeros(5)), torch.full((5,), 0.2, dtype=torch.float64))
    p = PF.to_probabilities(PF.proportional_priorities(torch.full((4,), 3.0), eps=0.0))
    assert torch.allclose(p, torch.full((4,), 0.25, dtype=torch.float64))
    p = PF.to_probabilities(PF.proportional_priorities(torch.zeros(4), eps=0.0))
    assert torch.isfinite(p).all() and torch.allclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_rank_priorities_are_order_only():
    a = PF.rank_priorities(torch.tensor([0.1, 1000.0, 2.0]), alpha=1.0)
    b = PF.rank_priorities(torch.tensor([0.1, 3.0, 2.0]), alpha=1.0)
    assert torch.equal(a, b)


def test_rank_gives_tied_scores_equal_probability_whatever_their_index():
    # all equal (e.g. every sample unseen, filled with the same score): uniform, as proportional gives
    assert torch.allclose(
        PF.to_probabilities(PF.rank_priorities(torch.full((8,), 2.0))), torch.full((8,), 0.125).double()
    )
    # a tie shares the mean of the ranks it covers: ranks 1.5, 1.5, 3, 4.5, 4.5 here
    p = PF.rank_priorities(torch.tensor([5.0, 5.0, 1.0, 0.0, 0.0]), alpha=2.0)
    assert torch.allclose(p, torch.tensor([1.5, 1.5, 3.0, 4.5, 4.5], dtype=torch.float64) ** -2.0)
    # in an epoch's plan, the tied samples at both ends of the index range get the same probability
    scores = torch.tensor([1.0] * 4 + [0.5] * 4)
    plan = build_plan(
        scores, SamplingStrategy("rank"), epoch=1, max_epochs=None, generator=torch.Generator(), dataset_size=8
    )
    p = torch.diff(plan.cdf, prepend=plan.cdf.new_zeros(1))
    assert torch.allclose(p[:4], p[0]) and torch.allclose(p[4:], p[4]) and p[0] > p[4]


def test_importance_weights_make_the_weighted_mean_of_p_uniform():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    w = PF.importance_weights(p, 4)
    assert torch.allclose((p * w).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(PF.importance_weights(p, 4, max_weight=float(w.max())).max(), torch.tensor(1.0).double())


def test_prune_keeps_everything_above_the_threshold():
    scores = torch.arange(10.0)
    keep, below = PF.prune_keep_mask(scores, 0.5, 5.0, torch.rand(10, generator=torch.Generator().manual_seed(0)))
    assert keep[5:].all() and below[:5].all() and not below[5:].any()
    keep, _ = PF.prune_keep_mask(scores, 1.0, 5.0, torch.rand(10))
    assert keep.tolist() == [False] * 5 + [True] * 5


def test_a_point_mass_has_the_effective_sample_size_of_one_sample():
    p = torch.zeros(10, dtype=torch.float64)
    p[3] = 1
    assert math.isclose(PF.effective_sample_size(p), 0.1)


_priorities = st.lists(
    st.sampled_from([0.0, 1.0, 1e-300, 1e300, math.inf]) | st.floats(0.0, allow_nan=False), min_size=1, max_size=40
)


@FAST
@given(priorities=_priorities, inplace=st.booleans())
def test_to_probabilities_is_a_distribution_proportional_to_finite_priorities(priorities, inplace):
    x = torch.tensor(priorities, dtype=torch.float64)
    p = PF.to_probabilities(x.clone(), inplace=inplace)
    assert p.dtype == torch.float64 and p.shape == x.shape
    assert bool(torch.isfinite(p).all()) and bool((p >= 0).all()) and abs(float(p.sum()) - 1) < 1e-12
    total = float(x.sum())
    if math.isfinite(total) and total > 0:
        assert torch.allclose(p, x / total, rtol=1e-12, atol=0)
    else:  # documented: uniform when the priorities sum to zero or to inf
        assert torch.equal(p, torch.full_like(p, 1 / len(priorities)))


@FAST
@given(priorities=_priorities, lam=UNIT)
def test_mix_uniform_keeps_a_distribution_and_bounds_every_probability_below(priorities, lam):
    p = PF.to_probabilities(torch.tensor(priorities, dtype=torch.float64))
    mixed = PF.mix_uniform(p, lam)
    n = p.numel()
    assert abs(float(mixed.sum()) - 1) < 1e-12 and bool((mixed >= lam / n * (1 - 1e-12)).all())
    assert torch.allclose(mixed, (1 - lam) * p + lam / n, rtol=1e-12, atol=1e-300)
    assert torch.equal(PF.mix_uniform(p.clone(), lam, inplace=True), mixed)


@FAST
@given(priorities=_priorities, beta=UNIT, normalize=st.booleans())
def test_importance_weights_are_positive_finite_and_unbiased_at_beta_one(priorities, beta, normalize):
    p = PF.to_probabilities(torch.tensor(priorities, dtype=torch.float64))
    p = p[p * p.numel() >= 1e-300]  # drawable points with a representable weight 1 / (n p)
    n = len(priorities)
    largest = float(PF.importance_weights(p.min().reshape(1), n, beta)) if normalize else None
    w = PF.importance_weights(p, n, beta, largest)
    assert bool(torch.isfinite(w).all()) and bool((w > 0).all())
    assert torch.allclose(w, (n * p) ** -beta / (largest or 1.0), rtol=1e-12, atol=0)
    if normalize:
        assert float(w.max()) <= 1 + 1e-12
    if beta == 1 and p.numel() == n:  # all points drawable: E_p[w f] is the uniform mean
        assert abs(float((p * PF.importance_weights(p, n, 1.0)).sum()) - 1) < 1e-9


_rankable = st.lists(st.one_of(FINITE32, EDGE_VALUES, st.sampled_from([math.inf, -math.inf])), min_size=1, max_size=40)


@FAST
@given(values=_rankable, alpha=ALPHAS)
def test_rank_priorities_share_mean_ranks_between_ties_and_preserve_order(values, alpha):
    scores = torch.tensor(values, dtype=torch.float32)
    ranks = torch.from_numpy(rankdata(-scores.double().numpy(), method="average"))  # 1 = the largest score
    assert torch.allclose(PF.rank_priorities(scores, 1.0), ranks.reciprocal(), rtol=1e-12, atol=0)
    priorities = PF.rank_priorities(scores, alpha)
    assert priorities.dtype == torch.float64 and bool(torch.isfinite(priorities).all())
    assert bool((priorities >= 0).all()) and bool((priorities <= 1).all())
    higher = scores[:, None] > scores[None, :]
    tied = scores[:, None] == scores[None, :]
    assert bool((priorities[:, None] >= priorities[None, :] * (1 - 1e-12))[higher].all())
    # equal up to an ulp: the ranks of a tie are equal, but torch's vectorised and scalar `pow` round differently
    assert bool(torch.isclose(priorities[:, None], priorities[None, :], rtol=1e-12, atol=0)[tied].all())


@FAST
@given(values=_rankable | st.lists(st.just(math.nan), min_size=1, max_size=3), alpha=ALPHAS, eps=st.floats(0, 1e6))
def test_proportional_priorities_refuse_negative_or_non_finite_scores(values, alpha, eps):
    scores = torch.tensor(values, dtype=torch.float32)
    if not bool(torch.isfinite(scores).all()):
        with pytest.raises(ValueError, match="`scores` must be finite"):
            PF.proportional_priorities(scores, alpha, eps)
    elif float(scores.min()) < 0:
        with pytest.raises(ValueError, match=r"non-negative scores, got a minimum of .*strategy='rank'"):
            PF.proportional_priorities(scores, alpha, eps)
    else:
        priorities = PF.proportional_priorities(scores, alpha, eps)
        assert priorities.dtype == torch.float64 and bool((priorities >= 0).all())
        assert not bool(torch.isnan(priorities).any())
        higher = scores[:, None] > scores[None, :]
        assert bool((priorities[:, None] >= priorities[None, :] * (1 - 1e-12))[higher].all())


@FAST
@given(values=st.lists(FINITE32, min_size=1, max_size=40), ratio=UNIT, threshold=FINITE32, seed=SEEDS)
def test_prune_keeps_every_score_above_the_threshold_and_drops_below_ones_at_the_ratio(values, ratio, threshold, seed):
    scores = torch.tensor(values, dtype=torch.float32)
    uniforms = torch.rand(scores.numel(), generator=torch.Generator().manual_seed(seed))
    keep, below = PF.prune_keep_mask(scores, ratio, threshold, uniforms)
    assert torch.equal(below, scores < threshold)
    assert bool(keep[~below].all())
    assert torch.equal(keep[below], uniforms[below] >= ratio)
    if ratio == 0:
        assert bool(keep.all())


@FAST
@given(priorities=_priorities, lam=UNIT)
def test_effective_sample_size_of_a_distribution_is_a_fraction_of_its_support(priorities, lam):
    p = PF.mix_uniform(PF.to_probabilities(torch.tensor(priorities, dtype=torch.float64)), lam)
    ess = PF.effective_sample_size(p)
    assert 1 / p.numel() - 1e-12 <= ess <= 1 + 1e-12  # floating point may exceed 1 by an ulp
    if bool((p == p[0]).all()):
        assert abs(ess - 1) < 1e-12
