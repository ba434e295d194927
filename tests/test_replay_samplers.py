"""lightning_per.replay samplers: uniform draws, prioritized draws and their weights, the sum tree beneath them."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from lightning_per.replay import PrioritizedReplayBuffer, ReservoirBuffer
from lightning_per.replay.sumtree import SumTree
from lightning_per.replay.uniform import UniformReplaySampler
from tests.helpers import numbered


def test_uniform_buffer_draws_what_it_holds_while_filling() -> None:
    buf = ReservoirBuffer(capacity=100, seed=0)
    assert buf.sample(4).batch is None
    buf.add(numbered(3))
    draw = buf.sample(10)
    assert sorted(draw.slots.tolist()) == [0, 1, 2] and torch.equal(draw.weight, torch.ones(3))
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 0, got -1"):
        buf.sample(-1)


def test_uniform_draw_without_replacement_asks_for_about_k_random_numbers() -> None:
    class Recording:
        def __init__(self) -> None:
            self.rng, self.sizes = np.random.default_rng(0), []

        def random(self, size: int) -> np.ndarray:
            self.sizes.append(size)
            return self.rng.random(size)

        def permutation(self, n: int) -> np.ndarray:
            self.sizes.append(n)
            return self.rng.permutation(n)

    for n in (10**4, 10**6, 10**12):
        rng = Recording()
        UniformReplaySampler().sample(n, 256, rng)  # type: ignore[arg-type]
        assert sum(rng.sizes) <= 2 * 256 + 64, (n, rng.sizes)  # O(k) random numbers, never a permutation of n


def test_prioritized_draws_follow_priority_to_the_alpha() -> None:
    buf = PrioritizedReplayBuffer(capacity=13, alpha=0.5, beta=1.0, eps=1e-3, seed=0)
    buf.add(numbered(13))
    priority = torch.rand(13, generator=torch.Generator().manual_seed(0)) * 5
    assert buf.update_priorities(torch.arange(13), priority) == 0
    expected = (priority.double() + 1e-3).pow(0.5)  # alpha applied exactly once
    expected /= expected.sum()
    assert torch.allclose(buf.probabilities(), expected, rtol=1e-12)
    draws = 100_000
    slots = torch.cat([buf.sample(1000).slots for _ in range(draws // 1000)])
    counts = torch.bincount(slots, minlength=13).double()
    _, p = chisquare(counts.numpy(), (expected * draws).numpy())
    assert p > 1e-3, f"prioritized draws do not follow p (p={p:.2e})"


def test_importance_weights_and_new_items_at_the_max_priority() -> None:
    buf = PrioritizedReplayBuffer(capacity=5, alpha=0.5, beta=0.7, eps=1e-3, seed=0)
    buf.add(numbered(4))
    assert torch.allclose(buf.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # new = max priority
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([3.0, 1.0, 0.0, -8.0]))  # |priority|
    raw = torch.tensor([3.0, 1.0, 0.0, 8.0], dtype=torch.float64) + 1e-3
    p = raw.pow(0.5) / raw.pow(0.5).sum()
    assert buf.max_priority == pytest.approx(8.001)
    draw = buf.sample(64)
    weight = (4 * p[draw.slots]) ** -0.7 / (4 * p.min()) ** -0.7  # (n p)^-beta / max
    assert torch.allclose(draw.weight.double(), weight, rtol=1e-6) and draw.weight.dtype == torch.float32
    buf.add(numbered(1, start=4))
    assert float(buf.sampler.tree.values(np.array([4]))[0]) == pytest.approx(8.001**0.5)


def test_duplicate_slots_in_one_update_keep_the_last_finite_value() -> None:
    buf = PrioritizedReplayBuffer(capacity=6, alpha=1.0, eps=1e-3, seed=0)
    buf.add(numbered(6))
    with pytest.warns(UserWarning, match="1 non-finite priorities"):
        dropped = buf.update_priorities(torch.tensor([2, 4, 2, 2, 4]), torch.tensor([5.0, 1.0, 7.0, float("nan"), 3.0]))
    assert dropped == 1
    values = buf.sampler.tree.values()
    assert values[2] == pytest.approx(7.001) and values[4] == pytest.approx(3.001)  # last finite write wins
    again = PrioritizedReplayBuffer(capacity=6, alpha=1.0, eps=1e-3, seed=0)
    again.add(numbered(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.update_priorities(torch.tensor([2, 4, 2, 2, 4]), torch.tensor([5.0, 1.0, 7.0, float("nan"), 3.0]))
    assert np.array_equal(again.sampler.tree.values(), values)  # deterministic


def test_non_finite_priorities_leave_items_and_the_max_priority_intact() -> None:
    buf = PrioritizedReplayBuffer(capacity=8, alpha=1.0)
    buf.add(numbered(4))
    before = buf.sampler.tree.values()[:4]
    with pytest.warns(UserWarning, match="2 non-finite priorities"):
        dropped = buf.update_priorities(torch.tensor([0, 1, 2]), torch.tensor([float("inf"), float("nan"), 5.0]))
    assert dropped == 2 and math.isfinite(buf.max_priority)
    values = buf.sampler.tree.values()
    assert np.array_equal(values[:2], before[:2]) and values[2] == pytest.approx(5.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        buf.update_priorities(torch.tensor([3]), torch.tensor([float("nan")]))
    buf.add(numbered(2, start=4))  # new items get the (finite) max priority and are drawable
    assert len(buf) == 6 and bool((buf.probabilities() > 0).all())
    with pytest.raises(ValueError, match=r"`index` must point at items held, in \[0, 6\), got \[6\]"):
        buf.update_priorities(torch.tensor([6]), torch.tensor([1.0]))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": -1.0}, r"`alpha` must be a finite number >= 0, got -1.0"),
    ({"beta": 1.5}, r"`beta` must be a finite number in \[0, 1\], got 1.5"),
    ({"eps": 0.0}, r"`eps` must be a finite number > 0, got 0.0"),
    ({"capacity": 0}, r"`capacity` must be an integer >= 1, got 0"),
])  # fmt: skip
def test_prioritized_settings_out_of_range_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrioritizedReplayBuffer(**kwargs)


def test_sum_tree_find_matches_prefix_sums_at_every_depth() -> None:
    rng = np.random.default_rng(0)
    for capacity in [1, 7, 4096, 4097, 70_000]:
        tree, values = SumTree(capacity), np.zeros(capacity)
        for _ in range(20):
            idx = rng.choice(capacity, min(capacity, 300), replace=False)
            val = rng.random(idx.size) * (rng.random(idx.size) > 0.2)  # some zeros: never drawn
            tree.update(idx, val)
            values[idx] = val
        assert np.array_equal(tree.values(), values)
        assert tree.total == pytest.approx(math.fsum(values.tolist()), rel=1e-12)
        assert tree.min == values[values > 0].min()
        target = rng.random(5000) * tree.total
        slots, found = tree.find(target)
        assert np.array_equal(slots, np.searchsorted(np.cumsum(values), target, side="right"))
        assert np.array_equal(found, values[slots]) and (found > 0).all()


def test_a_zero_valued_slot_from_a_rounding_edge_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = PrioritizedReplayBuffer(capacity=100, seed=0)
    buf.add(numbered(10))
    tree, find = buf.sampler.tree, buf.sampler.tree.find
    calls: list[int] = []

    def edge_once(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots, values = find(target)
        if not calls:  # the first search lands past the items, as a target rounded onto a node's end would
            slots[0], values[0] = 99, 0.0
        calls.append(target.size)
        return slots, values

    monkeypatch.setattr(tree, "find", edge_once)
    draw = buf.sample(8)
    assert calls == [8, 1] and bool((draw.slots < 10).all())


def test_sum_tree_draws_match_probabilities_and_internal_nodes_are_recomputed() -> None:
    rng = np.random.default_rng(1)
    tree = SumTree(5000)
    values = rng.random(5000) + 0.05
    values[4] = 0.0
    tree.update(np.arange(5000), values)
    for _ in range(50):  # many small updates: totals recomputed from the children, no drift
        idx = rng.choice(5000, 40, replace=False)
        values[idx] = rng.random(40) * 3
        tree.update(idx, values[idx])
    assert np.array_equal(tree.values(), values)
    assert tree.total == pytest.approx(math.fsum(values.tolist()), rel=1e-12)  # drift would show in the total
    fresh = SumTree(5000)
    fresh.load_state_dict(tree.state_dict())
    assert fresh.total == tree.total and np.array_equal(fresh.values(), tree.values())
    probe = rng.random(1000) * tree.total
    assert all(np.array_equal(a, b) for a, b in zip(fresh.find(probe), tree.find(probe), strict=True))
    draws = 200_000
    slots, _ = tree.find(rng.random(draws) * tree.total)
    counts = np.bincount(slots, minlength=5000)
    assert counts[values == 0].sum() == 0
    coarse = counts.reshape(50, 100).sum(1)  # 50 groups of 100 slots: enough draws per cell for the test
    expected = values.reshape(50, 100).sum(1) / values.sum() * draws
    _, p = chisquare(coarse, expected)
    assert p > 1e-3, f"sum-tree draws do not follow p (p={p:.2e})"


def test_sum_tree_refuses_bad_updates() -> None:
    tree = SumTree(4)
    with pytest.raises(ValueError, match="must not repeat a slot"):
        tree.update(np.array([1, 1]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"`index` must be in \[0, 4\)"):
        tree.update(np.array([4]), np.array([1.0]))
    with pytest.raises(ValueError, match="finite and non-negative"):
        tree.update(np.array([0]), np.array([-1.0]))
