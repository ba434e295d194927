"""lightning_per.score_table: one score per training sample, its updates and its state."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lightning_per.score_table import ScoreTable
from tests.generators import EDGE_VALUES, FAST, FINITE32, UNIT, table_of


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


@FAST
@given(
    old=st.lists(FINITE32 | st.just(math.nan), min_size=1, max_size=10),
    updates=st.lists(
        st.tuples(
            st.integers(0, 9), st.one_of(FINITE32, EDGE_VALUES, st.sampled_from([math.nan, math.inf, -math.inf]))
        ),
        max_size=20,
    ),
    ema=UNIT,
)
def test_score_table_update_drops_non_finite_values_and_blends_between_old_and_new(old, updates, ema):
    n = len(old)
    table = table_of(torch.tensor(old, dtype=torch.float32))
    updates = [(i % n, v) for i, v in updates]
    index = torch.tensor([i for i, _ in updates], dtype=torch.int64)
    values = torch.tensor([v for _, v in updates], dtype=torch.float32)
    before = table.scores.clone()
    dropped = table.update(index, values, ema=ema)
    assert dropped == sum(not math.isfinite(v) for _, v in updates)
    after = table.scores
    assert not bool(torch.isinf(after).any())  # a table holds finite scores or NaN (unseen)
    for i in range(n):
        new = [float(torch.tensor(v, dtype=torch.float32)) for j, v in updates if j == i and math.isfinite(v)]
        if not new:
            assert torch.equal(after[i : i + 1].nan_to_num(7.0), before[i : i + 1].nan_to_num(7.0))
            continue
        mean, value = sum(new) / len(new), float(after[i])
        if math.isnan(float(before[i])) or ema == 0:
            assert value == pytest.approx(mean, rel=1e-6, abs=1e-37)
        else:
            low, high = sorted((float(before[i]), mean))
            slack = 1e-6 * max(abs(low), abs(high)) + 1e-37
            assert low - slack <= value <= high + slack


def test_a_checkpointed_score_table_with_infinite_scores_is_refused():
    table = ScoreTable(3)
    with pytest.raises(ValueError, match="holds 1 infinite scores"):
        table.load_state_dict({"scores": torch.tensor([1.0, float("inf"), float("nan")])})
    with pytest.raises(ValueError, match="holds 1 infinite scores"):  # above float32's range
        table.load_state_dict({"scores": torch.tensor([1.0, 1e300, 2.0], dtype=torch.float64)})
