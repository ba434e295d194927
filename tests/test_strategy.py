"""lightning_per.strategy: sampling strategies, their schedules and the plan of an epoch."""

import dataclasses
import math

import pytest
import torch
from hypothesis import assume, example, given
from hypothesis import strategies as st

from lightning_per import SamplingStrategy
from lightning_per import functional as PF
from lightning_per.sampler import schedule_notices
from lightning_per.strategy import build_plan
from tests.generators import (
    EPOCHS,
    F32_MAX,
    F32_SUBNORMAL,
    FAST,
    MAX_EPOCHS,
    PRUNE_ONE_WARNING,
    SEEDS,
    check_plan,
    plan_or_value_error,
    plan_probabilities,
    sampling_strategies,
    score_tables,
)

pytestmark = pytest.mark.filterwarnings(PRUNE_ONE_WARNING)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="bogus"), "`name` must be one of"),
        (dict(alpha=-1.0), "`alpha` must be a finite number >= 0, got -1.0"),
        (dict(beta=1.5), r"`beta` must be a finite number in \[0, 1\], got 1.5"),
        (dict(prune_ratio=-0.1), r"`prune_ratio` must be a finite number in \[0, 1\], got -0.1"),
        (dict(uniform_mix=2.0), "`uniform_mix`"),
        (dict(num_samples=0), "`num_samples` must be an integer >= 1"),
        (dict(eps=float("inf")), "`eps` must be a finite number >= 0, got inf"),
        (dict(prune_quantile=1.0), "`prune_quantile`"),
        (dict(initial_uniform_epochs=-1), "`initial_uniform_epochs` must be an integer >= 0, got -1"),
    ],
)
def test_strategy_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingStrategy(**kwargs)


def test_prune_ratio_one_is_allowed_and_warned_as_biased():
    with pytest.warns(UserWarning, match="biased"):
        SamplingStrategy("prune", prune_ratio=1.0)


def test_unseen_samples_get_the_max_score_so_they_are_visited():
    scores = torch.full((100,), float("nan"))
    scores[:50] = torch.linspace(0.1, 1.0, 50)
    strategy = SamplingStrategy(beta=1.0, uniform_mix=0.0)
    plan = build_plan(scores, strategy, 1, None, torch.Generator().manual_seed(0), 100)
    p = plan.weights(torch.arange(100)).reciprocal() / 100  # beta=1: w = 1/(N p)
    assert torch.all(p[50:] >= p[:50].max() - 1e-12)


def test_annealing_schedules_and_final_uniform_epochs():
    s = SamplingStrategy("proportional", alpha=1.0, alpha_final=0.0, beta=0.4, beta_final=1.0, final_uniform_epochs=2)
    assert s.scheduled(0, 12) == (1.0, 0.4, 0.1)
    a, b, _ = s.scheduled(9, 12)
    assert a == 0.0 and b == 1.0
    scores = torch.rand(10)
    plan = build_plan(scores, s, 10, 12, torch.Generator(), 10)
    assert plan.cdf is None and sorted(plan.order.tolist()) == list(range(10))
    assert SamplingStrategy("prune").uniform_epochs_at_end(16) == 2


def test_initial_uniform_epochs_defer_the_strategy_and_its_schedule():
    s = SamplingStrategy("proportional", beta=0.4, beta_final=1.0, uniform_mix=0.0, initial_uniform_epochs=3)
    scores = torch.rand(10)
    for epoch in range(3):  # uniform passes, scored or not
        plan = build_plan(scores, s, epoch, 8, torch.Generator(), 10)
        assert plan.cdf is None and sorted(plan.order.tolist()) == list(range(10)) and not plan.weighted
    assert build_plan(scores, s, 3, 8, torch.Generator(), 10).cdf is not None  # the strategy from epoch 3 on
    assert [round(s.scheduled(e, 8)[1], 2) for e in range(3, 8)] == [0.4, 0.55, 0.7, 0.85, 1.0]  # epochs 3 to 7
    with pytest.raises(TypeError, match=r"`initial_uniform_epochs` must be an integer >= 0, got 2\.5"):
        SamplingStrategy(initial_uniform_epochs=2.5)


def test_a_strategy_left_no_prioritized_epoch_is_warned_naming_both_counts():
    s = SamplingStrategy("prune", initial_uniform_epochs=7)  # prune: 8 // 8 = 1 final uniform epoch
    notice, _ = schedule_notices(s, 8, None, 0)
    assert "never applies" in notice and "`initial_uniform_epochs=7` and 1 final uniform epochs" in notice
    assert schedule_notices(dataclasses.replace(s, initial_uniform_epochs=6), 8, None, 0)[0] is None
    assert schedule_notices(SamplingStrategy("uniform", initial_uniform_epochs=9), 8, None, 0)[0] is None
    one_epoch = SamplingStrategy("rank", beta_final=None)  # a fresh 1-epoch run: epoch 0 has nothing to draw by
    assert "never applies: epoch 0 (nothing is scored yet) and 0 final" in schedule_notices(one_epoch, 1, None, 0)[0]
    assert schedule_notices(one_epoch, 1, None, 0, scored=True)[0] is None  # a second fit prioritizes epoch 0
    assert "never applies" in schedule_notices(dataclasses.replace(one_epoch, final_uniform_epochs=1), 2, None, 0)[0]


def test_a_resume_before_the_first_prioritized_epoch_is_not_said_to_change_the_draws():
    s = SamplingStrategy("proportional", initial_uniform_epochs=3)  # beta anneals from epoch 3 on
    assert schedule_notices(s, 8, 2, 3)[1] is None  # only uniform passes so far: nothing drawn differs
    assert "from epoch 4 on" in schedule_notices(s, 8, 6, 4)[1]


def test_the_largest_proportional_priority_is_exactly_one_at_any_alpha():
    scores = torch.tensor([1.0083152560319986, 0.5, 0.0], dtype=torch.float64)  # torch.log, math.log differ by an ulp
    for alpha in (0.5, 3.0, 1e17, 1e300):
        priorities = PF.proportional_priorities(scores, alpha, eps=0.0)
        assert priorities[0] == 1.0 and bool((priorities[1:] < 1.0).all()), alpha


def test_prune_plan_is_shorter_and_weights_the_kept_below_samples():
    scores = torch.cat([torch.zeros(500), torch.ones(500)])
    plan = build_plan(
        scores, SamplingStrategy("prune", prune_ratio=0.5), 0, None, torch.Generator().manual_seed(0), 1000
    )
    assert 700 < plan.num_draws < 800 and abs(plan.stats["pruned_fraction"] - 0.25) < 0.05
    w = plan.weights(plan.order)
    assert set(w.tolist()) == {1.0, 2.0}
    assert torch.all(w[plan.order >= 500] == 1.0)


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


@FAST
@given(scores=score_tables(), strategy=sampling_strategies(), epoch=EPOCHS, max_epochs=MAX_EPOCHS, seed=SEEDS)
@example(scores=torch.tensor([math.nan, math.nan]), strategy=SamplingStrategy("rank"), epoch=3, max_epochs=None, seed=0)
@example(
    scores=torch.tensor([0.0, 0.0, 0.0]),
    strategy=SamplingStrategy(eps=0.0, uniform_mix=0.0, alpha=3.0, normalize_weights=True),
    epoch=1,
    max_epochs=None,
    seed=0,
)
@example(
    scores=torch.tensor([F32_MAX, F32_SUBNORMAL, math.nan]),
    strategy=SamplingStrategy(alpha=40.0, uniform_mix=0.0, eps=0.0),
    epoch=1,
    max_epochs=None,
    seed=0,
)
@example(
    scores=torch.tensor([math.inf, -math.inf, 1.0]),
    strategy=SamplingStrategy("prune", prune_quantile=0.5),
    epoch=0,
    max_epochs=None,
    seed=0,
)
def test_build_plan_gives_a_valid_plan_or_a_value_error_naming_the_problem(scores, strategy, epoch, max_epochs, seed):
    before = scores.clone()
    plan = plan_or_value_error(scores, strategy, epoch, max_epochs, seed)
    assert torch.equal(scores.nan_to_num(7.0), before.nan_to_num(7.0))  # the table itself is left alone
    assert torch.equal(torch.isnan(scores), torch.isnan(before))
    if plan is not None:
        check_plan(plan, scores.numel(), strategy)


@FAST
@given(scores=score_tables(), strategy=sampling_strategies(), epoch=EPOCHS, max_epochs=MAX_EPOCHS, seed=SEEDS)
def test_the_same_seed_epoch_and_scores_give_the_same_plan(scores, strategy, epoch, max_epochs, seed):
    first = plan_or_value_error(scores, strategy, epoch, max_epochs, seed)
    if first is None:
        return
    again = build_plan(scores.clone(), strategy, epoch, max_epochs, torch.Generator().manual_seed(seed), len(scores))
    for field in ("order", "cdf", "below"):
        a, b = getattr(first, field), getattr(again, field)
        assert (a is None and b is None) or torch.equal(a, b)
    assert (first.num_draws, first.beta, first.max_weight) == (again.num_draws, again.beta, again.max_weight)
    assert repr(first.stats) == repr(again.stats)  # repr: a NaN statistic compares equal to itself


@FAST
@given(
    values=st.lists(st.floats(0.0, 1e6, width=32) | st.sampled_from([0.0, 0.5, 1.0, 1e-30, 1e30]), max_size=40),
    alpha=st.sampled_from([0.0, 1.0, 2.0]) | st.floats(0.0, 20.0),
    eps=st.sampled_from([0.0, 1e-6]) | st.floats(0.0, 10.0),
)
@example(values=[0.0, 2.0], alpha=0.03125, eps=5e-324)  # eps / 2 is below float64's range; its power is not
def test_proportional_probabilities_follow_the_powers_of_the_scores(values, alpha, eps):
    scores = torch.tensor([*values, 1.0], dtype=torch.float32)
    base = scores.double() + eps
    positive = base[base > 0]
    # powers inside the float64 range (outside it, see test_proportional_plans_survive_powers_outside_float64)
    assume(float(positive.log10().abs().max()) * alpha < 290)
    strategy = SamplingStrategy("proportional", alpha=alpha, eps=eps, uniform_mix=0.0, uniform_mix_final=None)
    plan = build_plan(scores, strategy, 1, None, torch.Generator().manual_seed(0), scores.numel())
    if alpha == 0:
        expected = torch.full_like(base, 1 / base.numel())
    else:  # p_i = (s_i + eps)^alpha / sum_j (s_j + eps)^alpha, computed in log space
        expected = torch.where(base > 0, alpha * base.log(), -math.inf).softmax(0)
    assert torch.allclose(plan_probabilities(plan), expected, rtol=1e-9, atol=1e-15)


def test_build_plan_never_overflows_when_the_smallest_probability_is_subnormal():
    # rank 2 gets 2**-1070 (subnormal): n * min_p ** -1 exceeds the float range and Python's `**` raises
    strategy = SamplingStrategy("rank", alpha=1070.0, uniform_mix=0.0, beta=1.0, beta_final=None)
    plan = build_plan(torch.tensor([3.0, 1.0]), strategy, 1, None, torch.Generator().manual_seed(0), 2)
    check_plan(plan, 2, strategy)


def test_normalized_weights_are_at_most_one_when_some_samples_have_zero_probability():
    strategy = SamplingStrategy(
        "proportional", eps=0.0, uniform_mix=0.0, beta=1.0, beta_final=None, normalize_weights=True
    )
    plan = build_plan(torch.tensor([0.0, 1.0, 3.0]), strategy, 1, None, torch.Generator().manual_seed(0), 3)
    drawable = plan_probabilities(plan) > 0
    assert float(plan.weights(torch.arange(3))[drawable].max()) <= 1.0  # got 4/3: max_weight stayed None


@pytest.mark.parametrize(
    "scores, alpha, eps, expected",
    [
        ([1.0, 1e20], 16.0, 1e-6, [0.0, 1.0]),  # 1e320 is inf in float64: got [0.5, 0.5]
        ([1e-30, 2e-30], 11.0, 0.0, [1 / 2049, 2048 / 2049]),  # both powers are 0 in float64: got [0.5, 0.5]
    ],
)
def test_proportional_plans_survive_powers_outside_float64(scores, alpha, eps, expected):
    strategy = SamplingStrategy("proportional", alpha=alpha, eps=eps, uniform_mix=0.0, uniform_mix_final=None)
    plan = build_plan(torch.tensor(scores), strategy, 1, None, torch.Generator().manual_seed(0), len(scores))
    assert torch.allclose(plan_probabilities(plan), torch.tensor(expected, dtype=torch.float64), rtol=1e-6, atol=1e-12)


def test_plan_statistics_read_in_chunks_equal_the_whole_tensor_forms():
    g = torch.Generator().manual_seed(3)
    p = torch.rand(1000, generator=g, dtype=torch.float64)
    p[::5] = 0.0  # never drawn: not the smallest probability
    p /= p.sum()
    scores = torch.rand(1000, generator=g) ** 3
    scores[::7] = float("nan")  # unseen: filled with the largest score, so top-scored
    filled = PF.fill_unseen(scores)
    threshold = PF.sampled_quantile(filled, 0.9, torch.Generator().manual_seed(0))
    smallest, mass = PF.smallest_and_top_mass(p, scores, threshold, chunk=64)
    assert smallest == float(p[p > 0].min())
    assert mass == pytest.approx(float(p[filled >= threshold].sum()), rel=1e-12, abs=0)
