import importlib
import inspect
import math

import pytest
import torch
from scipy.stats import chisquare

import lightning_per.functional as PF
from lightning_per.strategy import SamplingStrategy, build_plan


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


def test_weighted_minibatch_gradient_is_unbiased_for_the_full_batch_gradient():
    # least squares: per-sample gradient g_i = 2 (w.x_i - y_i) x_i. Draw 4000 minibatches of 32 with the
    # proportional plan (with replacement), weight (N p)^-1, and average: within 2% (relative L2) of the
    # full-batch gradient; the unweighted average of the same draws is far off (the test can fail).
    g = torch.Generator().manual_seed(0)
    n, d = 500, 5
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64) * 3
    w = torch.randn(d, generator=g, dtype=torch.float64)
    per_sample = 2 * ((x @ w - y)[:, None] * x)
    full = per_sample.mean(0)
    scores = (x @ w - y).abs().float()
    plan = build_plan(scores, SamplingStrategy("proportional", alpha=1.0, beta=1.0, uniform_mix=0.0), 0, None, g, n)
    idx = PF.inverse_cdf_sample(plan.cdf, torch.rand(4000 * 32, generator=g, dtype=torch.float64))
    weights = plan.weights(idx)
    weighted = (weights[:, None] * per_sample[idx]).mean(0)
    unweighted = per_sample[idx].mean(0)
    assert (weighted - full).norm() / full.norm() < 0.02
    assert (unweighted - full).norm() / full.norm() > 0.2


def test_prune_keeps_everything_above_the_threshold():
    scores = torch.arange(10.0)
    keep, below = PF.prune_keep_mask(scores, 0.5, 5.0, torch.rand(10, generator=torch.Generator().manual_seed(0)))
    assert keep[5:].all() and below[:5].all() and not below[5:].any()
    keep, _ = PF.prune_keep_mask(scores, 1.0, 5.0, torch.rand(10))
    assert keep.tolist() == [False] * 5 + [True] * 5


def test_effective_sample_size_of_a_point_mass():
    p = torch.zeros(10, dtype=torch.float64)
    p[3] = 1
    assert math.isclose(PF.effective_sample_size(p), 0.1)


def test_tau_hand_computation_both_forms():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    g = s / s.sum()
    ratio = 1 - ((g - 0.25) ** 2).sum() / (g**2).sum()
    assert torch.allclose(PF.tau(s), ratio**-0.5)
    assert torch.allclose(PF.tau(s, rooted=False), 1 / ratio)
    assert torch.allclose(PF.tau(s, rooted=False), 4 * (g**2).sum())


def test_closed_form_bounds_equal_autograd():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(5, (6,), generator=g)
    cw = torch.rand(5, generator=g) + 0.5
    losses = torch.nn.functional.cross_entropy(z, y, reduction="none", label_smoothing=0.1, weight=cw)
    (grad,) = torch.autograd.grad(losses.sum(), z)
    assert torch.allclose(PF.softmax_ce_grad_norm(z, y, 0.1, cw), grad.norm(dim=1), atol=1e-6)
    t = torch.rand(6, 3, generator=g)
    zb = torch.randn(6, 3, generator=g, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(zb, t, reduction="none").sum(1)
    (gb,) = torch.autograd.grad(bce.sum(), zb)
    assert torch.allclose(PF.sigmoid_bce_grad_norm(zb, t), gb.norm(dim=1), atol=1e-6)
    mse = ((zb - t) ** 2).mean(1)
    (gm,) = torch.autograd.grad(mse.sum(), zb)
    assert torch.allclose(PF.mse_grad_norm(zb, t), gm.norm(dim=1), atol=1e-6)


def test_deviation_and_margin():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    y = torch.tensor([0, 0])
    dev = PF.prediction_deviation(logits, y)
    assert dev[0] < 0.01 and dev[1] > 0.99
    m = PF.margin_score(logits, y)
    assert m[0] < 0.02 and m[1] > 1.98


def test_the_ce_bound_takes_class_indices_of_any_integer_dtype_and_integer_one_hot_targets():
    z = torch.randn(6, 4)
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    expected = (z.softmax(-1) - torch.nn.functional.one_hot(y, 4)).norm(dim=-1)
    for dtype in (torch.int64, torch.int32, torch.uint8):
        assert torch.allclose(PF.softmax_ce_grad_norm(z, y.to(dtype)), expected, atol=1e-6)
    assert torch.allclose(PF.softmax_ce_grad_norm(z, torch.nn.functional.one_hot(y, 4)), expected, atol=1e-6)
    assert torch.allclose(PF.softmax_ce_grad_norm(z.bfloat16(), y), expected, atol=2e-2)


def test_functional_all_lists_every_public_function_of_the_package():
    defined = set()
    for name in ("bounds", "priorities", "sampling", "variance"):
        module = importlib.import_module(f"lightning_per.functional.{name}")
        defined |= {
            n
            for n, obj in vars(module).items()
            if inspect.isfunction(obj) and obj.__module__ == module.__name__ and not n.startswith("_")
        }
    assert defined == set(PF.__all__)
