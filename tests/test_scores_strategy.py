import pytest
import torch

from lightning_per import SamplingStrategy
from lightning_per.score_table import ScoreTable
from lightning_per.strategy import build_plan


def test_score_table_averages_duplicates_and_blends_with_ema():
    t = ScoreTable(3)
    t.update(torch.tensor([0, 0, 1]), torch.tensor([1.0, 3.0, 5.0]))
    assert t.scores[:2].tolist() == [2.0, 5.0]
    t.update(torch.tensor([0]), torch.tensor([4.0]), ema=0.5)
    assert t.scores[0].item() == 3.0


def test_score_table_drops_non_finite_values():
    t = ScoreTable(3)
    dropped = t.update(torch.tensor([0, 1, 2]), torch.tensor([float("nan"), float("inf"), 1.0]))
    assert dropped == 2 and t.seen == 1 and torch.isnan(t.scores[:2]).all()


def test_score_table_rejects_out_of_range_index():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ScoreTable(3).update(torch.tensor([3]), torch.tensor([1.0]))


def test_score_table_refuses_float_indices_and_mismatched_sizes_before_changing_anything():
    t = ScoreTable(3)
    with pytest.raises(ValueError, match=r"`index` must hold integer sample indices, got dtype torch\.float32"):
        t.update(torch.tensor([0.5, 1.7]), torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="`index` has 2 entries but `values` has 3"):
        t.update(torch.tensor([0, 1]), torch.tensor([1.0, 2.0, 3.0]))
    assert t.seen == 0 and t.version == 0


def test_score_table_state_loads_weights_only(tmp_path):
    t = ScoreTable(4)
    t.update(torch.tensor([1]), torch.tensor([2.0]))
    torch.save(t.state_dict(), tmp_path / "s.pt")
    u = ScoreTable(4)
    u.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert torch.equal(u.scores.nan_to_num(-1), t.scores.nan_to_num(-1))
    with pytest.raises(ValueError, match="4 samples but the training set has 5"):
        ScoreTable(5).load_state_dict(t.state_dict())


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


def test_prune_plan_is_shorter_and_weights_the_kept_below_samples():
    scores = torch.cat([torch.zeros(500), torch.ones(500)])
    plan = build_plan(
        scores, SamplingStrategy("prune", prune_ratio=0.5), 0, None, torch.Generator().manual_seed(0), 1000
    )
    assert 700 < plan.num_draws < 800 and abs(plan.stats["pruned_fraction"] - 0.25) < 0.05
    w = plan.weights(plan.order)
    assert set(w.tolist()) == {1.0, 2.0}
    assert torch.all(w[plan.order >= 500] == 1.0)


def test_plan_statistics_read_in_chunks_equal_the_whole_tensor_forms():
    from lightning_per import functional as PF
    from lightning_per.strategy import _plan_stats, _quantile

    g = torch.Generator().manual_seed(3)
    p = torch.rand(1000, generator=g, dtype=torch.float64)
    p[::5] = 0.0  # never drawn: not the smallest probability
    p /= p.sum()
    scores = torch.rand(1000, generator=g) ** 3
    scores[::7] = float("nan")  # unseen: filled with the largest score, so top-scored
    filled = PF.fill_unseen(scores)
    threshold = _quantile(filled, 0.9, torch.Generator().manual_seed(0))
    smallest, mass = _plan_stats(p, scores, threshold, chunk=64)
    assert smallest == float(p[p > 0].min())
    assert mass == pytest.approx(float(p[filled >= threshold].sum()), rel=1e-12, abs=0)
