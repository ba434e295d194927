"""lightning_per.functional.sampling: inverse-CDF draws, importance draws of a presample, top-k and percentile keeps."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.stats import chisquare
from torch import nn

import lightning_per as lp
from lightning_per import functional as PF
from lightning_per.functional import draw_importance_sample
from tests.generators import FAST, SEEDS


def test_inverse_cdf_frequencies_match_p_chi_square():
    # 200k draws over 20 categories; reject only below p-value 1e-3 (fixed seed)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(20, generator=g, dtype=torch.float64) ** 2
    p /= p.sum()
    draws = PF.inverse_cdf_sample(p.cumsum(0), torch.rand(200_000, generator=g, dtype=torch.float64))
    counts = torch.bincount(draws, minlength=20).double()
    assert chisquare(counts.numpy(), (p * 200_000).numpy()).pvalue > 1e-3


def test_inverse_cdf_never_draws_zero_probability_entries():
    p = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64)
    draws = PF.inverse_cdf_sample(
        p.cumsum(0), torch.rand(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    )
    assert set(draws.unique().tolist()) == {1, 3}


def test_inverse_cdf_has_no_2_pow_24_category_limit():
    n = (1 << 24) + 16
    p = torch.ones(n, dtype=torch.float64)
    p[-1] = 1e9  # the last category above 2^24 dominates
    with pytest.raises(RuntimeError):
        torch.multinomial(p, 1)
    draws = PF.inverse_cdf_sample(
        p.cumsum(0), torch.rand(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    assert draws.dtype == torch.int64 and (draws == n - 1).float().mean() > 0.9


def test_draw_from_cdf_frequencies_match_p_and_probabilities_are_exact():
    g = torch.Generator().manual_seed(4)
    priorities = torch.tensor([1.0, 0.0, 2.0, 5.0, 2.0], dtype=torch.float64)
    index, p = PF.draw_from_cdf(priorities.cumsum(0), 100_000, g)
    expected_p = priorities / priorities.sum()
    assert torch.equal(p, expected_p[index])  # each draw carries its own probability
    counts = torch.bincount(index, minlength=5).double()
    assert counts[1] == 0  # zero priority: never drawn
    keep = expected_p > 0
    assert chisquare(counts[keep].numpy(), (expected_p[keep] * 100_000).numpy()).pvalue > 1e-3
    # the order is random, not sorted: consecutive draws are independent (lag-1 correlation ~ 0, |r| < 0.02)
    x = index.double()
    r = torch.corrcoef(torch.stack([x[:-1], x[1:]]))[0, 1]
    assert abs(float(r)) < 0.02


def test_draw_from_cdf_ranks_hold_disjoint_shares_of_one_draw():
    cdf = torch.rand(1000, generator=torch.Generator().manual_seed(5), dtype=torch.float64).cumsum(0)
    whole, p_whole = PF.draw_from_cdf(cdf, 999, torch.Generator().manual_seed(6))
    for rank in range(3):
        mine, p_mine = PF.draw_from_cdf(cdf, 999, torch.Generator().manual_seed(6), rank=rank, num_replicas=3)
        assert torch.equal(mine, whole[rank::3]) and torch.equal(p_mine, p_whole[rank::3])


_cdf_priorities = st.lists(
    st.sampled_from([0.0, 0.0, 1.0]) | st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=30
).filter(lambda xs: sum(xs) >= 1e-300)  # near the subnormal range, u * total loses its resolution


@FAST
@given(priorities=_cdf_priorities, seed=SEEDS, world=st.integers(1, 4))
def test_cdf_draws_stay_in_range_and_never_pick_a_zero_priority(priorities, seed, world):
    x = torch.tensor(priorities, dtype=torch.float64)
    cdf, n = x.cumsum(0), x.numel()
    g = torch.Generator().manual_seed(seed)
    uniforms = torch.cat(
        [torch.rand(200, generator=g, dtype=torch.float64), torch.tensor([0.0, 1 - 2**-53], dtype=torch.float64)]
    )
    drawn = PF.inverse_cdf_sample(cdf, uniforms)
    assert drawn.dtype == torch.int64 and int(drawn.min()) >= 0 and int(drawn.max()) < n
    assert bool((x[drawn] > 0).all())
    num = 8 * world
    shares = [PF.draw_from_cdf(cdf, num, torch.Generator().manual_seed(seed), r, world) for r in range(world)]
    whole, whole_p = PF.draw_from_cdf(cdf, num, torch.Generator().manual_seed(seed))
    for index, p in shares:
        assert index.dtype == torch.int64 and index.numel() == num // world
        assert int(index.min()) >= 0 and int(index.max()) < n and bool((x[index] > 0).all())
        assert torch.allclose(p, x[index] / cdf[-1], rtol=1e-9, atol=1e-15)
    assert torch.equal(torch.stack([index for index, _ in shares], 1).reshape(-1), whole)  # strides of one draw
    assert torch.equal(torch.stack([p for _, p in shares], 1).reshape(-1), whole_p)


def test_importance_weighted_gradient_is_unbiased_for_the_presample_mean():
    g = torch.Generator().manual_seed(0)
    B, b = 24, 8
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(B, 4, generator=g), torch.randint(3, (B,), generator=g)

    def flat_grad(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()

    per_sample = torch.stack([flat_grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])) for i in range(B)])
    target = per_sample.mean(0)  # the presample's mean gradient
    with torch.no_grad():
        scores = PF.softmax_ce_grad_norm(model(x), y)
    assert scores.max() / scores.min() > 5  # far from uniform, so unweighted sampling would be biased

    # what training_step computes: the gradient of weighted_mean over the b chosen points
    positions, weights, _ = draw_importance_sample(scores, b, torch.Generator().manual_seed(1))
    chosen = lp.PrioritizedBatch(None, positions, weights)
    step_grad = flat_grad(
        lp.weighted_mean(F.cross_entropy(model(x[positions]), y[positions], reduction="none"), chosen)
    )
    assert torch.allclose(step_grad, (weights.double()[:, None] * per_sample[positions]).mean(0), atol=1e-6)

    draws = 4000
    gen = torch.Generator().manual_seed(2)
    weighted, unweighted = [], []
    for _ in range(draws):
        positions, weights, _ = draw_importance_sample(scores, b, gen)
        weighted.append((weights.double()[:, None] * per_sample[positions]).mean(0))
        unweighted.append(per_sample[positions].mean(0))
    for estimates, unbiased in ((torch.stack(weighted), True), (torch.stack(unweighted), False)):
        stderr = estimates.std(0) / math.sqrt(draws)
        z = ((estimates.mean(0) - target).abs() / stderr).max()
        # tolerance: every one of the 15 coordinates within 4.5 standard errors (fixed seeds, so deterministic)
        if unbiased:
            assert z < 4.5, float(z)
        else:  # the same test detects the bias of sampling by score without weights
            assert z > 10, float(z)


def test_draws_never_pick_a_non_finite_score_and_weights_use_the_finite_count():
    scores = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 0.0, 4.0])
    positions, weights, p = draw_importance_sample(scores, 20000, torch.Generator().manual_seed(0))
    assert set(positions.tolist()) == {0, 2, 5}  # NaN, inf and zero scores have probability 0
    assert p.tolist() == pytest.approx([0.125, 0, 0.375, 0, 0, 0.5])
    n_finite = 4
    assert torch.allclose(weights.double(), 1 / (n_finite * p[positions]))
    assert draw_importance_sample(torch.tensor([float("nan"), float("inf")]), 3) is None
    assert draw_importance_sample(torch.zeros(3), 3) is None
    with pytest.raises(ValueError, match="non-negative"):
        draw_importance_sample(torch.tensor([1.0, -1.0]), 3)


def test_top_k_picks_exactly_the_highest_scores_with_ties_to_the_earlier_point():
    scores = torch.tensor([3.0, 1.0, 3.0, float("nan"), 2.0, 3.0, float("inf")])
    assert PF.top_k_positions(scores, 3).tolist() == [0, 2, 5]
    assert PF.top_k_positions(scores, 4).tolist() == [0, 2, 5, 4]
    assert PF.top_k_positions(scores, 10).tolist() == [0, 2, 5, 4, 1]  # never a non-finite score


def test_selective_backprop_keeps_each_point_with_probability_its_percentile_to_the_selectivity():
    # F of the i-th smallest of n history values is i / n: keep probability (i / n) ** selectivity, checked by counts
    n, selectivity, trials = 20, 2.0, 4000
    history = torch.arange(1.0, n + 1)
    generator = torch.Generator().manual_seed(0)
    kept = torch.zeros(n)
    for _ in range(trials):
        kept += PF.percentile_keep(history, history, selectivity, torch.rand(n, generator=generator)).float()
    expected = trials * (torch.arange(1.0, n + 1) / n) ** selectivity
    assert kept[-1] == trials  # the highest score has F = 1: always kept
    kept, expected = kept[:-1], expected[:-1]
    chi2 = float((((kept - expected) ** 2) / (expected * (1 - expected / trials))).sum())
    assert stats.chi2.sf(chi2, df=n - 1) > 1e-3  # a binomial count per point; fixed seed
    assert PF.percentile_keep(torch.tensor([float("nan")]), history, selectivity, torch.zeros(1)).tolist() == [False]
