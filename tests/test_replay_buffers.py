"""Tests of the replay buffer layer: any-structure storage, reservoir writer, uniform and prioritized samplers, sum
tree, state and pooling, and that per-call work does not grow with the capacity (counted, never timed)."""

from __future__ import annotations

import math
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_per.functional.reservoir import last_write_per_slot, reservoir_slots, sample_without_replacement
from lightning_per.replay import PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.pooling import pool_buffer_states
from lightning_per.replay.prioritized import PrioritizedReplaySampler
from lightning_per.replay.sumtree import SumTree
from lightning_per.replay.uniform import UniformReplaySampler
from lightning_per.tree import SampleSpec


def _pair(n: int, dim: int = 3, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n)
    return ids.float().unsqueeze(1).expand(n, dim).contiguous(), ids


def _ids(buf: ReplayBuffer) -> list[int]:
    return sorted(int(i) for i in buf.contents()[1].tolist())


# ------------------------------------------------------------------------------------------ any structure
SAMPLES: dict[str, Callable[[int], Any]] = {
    "tensor": lambda n: torch.randn(n, 2, 3),
    "tuple": lambda n: (torch.randn(n, 4), torch.randint(0, 9, (n,)), torch.zeros(n, dtype=torch.long)),
    "list": lambda n: [torch.randn(n, 4), torch.randint(0, 9, (n,))],
    "nested dict": lambda n: {
        "image": torch.rand(n, 1, 2, 2),
        "label": torch.randint(0, 9, (n,)),
        "meta": {
            "task": torch.zeros(n, dtype=torch.int32),
            "pair": (torch.ones(n, 2), torch.ones(n, dtype=torch.bool)),
        },
    },
}


def _leaves(batch: Any) -> list[torch.Tensor]:
    from lightning_per.tree import flatten

    return flatten(batch)[0]


@pytest.mark.parametrize("kind", list(SAMPLES))
@pytest.mark.parametrize("prioritized", [False, True])
def test_any_structure_round_trips_through_a_weights_only_checkpoint(
    tmp_path: Path, kind: str, prioritized: bool
) -> None:
    def make() -> ReplayBuffer:
        return PrioritizedReplayBuffer(6, alpha=0.7, seed=3) if prioritized else ReservoirBuffer(6, seed=3)

    buf = make()
    buf.add(SAMPLES[kind](4))
    buf.add(SAMPLES[kind](5))
    if isinstance(buf, PrioritizedReplayBuffer):
        buf.update_priorities(torch.tensor([0, 2]), torch.tensor([3.0, 0.5]))
    draw = buf.sample(3)
    assert type(draw.batch) is type(SAMPLES[kind](1))  # the structure comes back, leading dimension = the draw
    assert [x.shape[0] for x in _leaves(draw.batch)] == [3] * len(_leaves(draw.batch))
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    other = make()
    other.load_state_dict(torch.load(tmp_path / "buf.pt", weights_only=True))
    assert len(other) == 6 and other.seen == 9
    for a, b in zip(_leaves(buf.contents()), _leaves(other.contents()), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    first, second = buf.sample(4), other.sample(4)  # generator state restored: the same draw
    assert torch.equal(first.slots, second.slots) and torch.equal(first.weight, second.weight)
    for a, b in zip(_leaves(first.batch), _leaves(second.batch), strict=True):
        assert torch.equal(a, b)


def test_samples_are_copied_into_storage_bounded_by_the_capacity() -> None:
    buf = ReservoirBuffer(capacity=4, device="cpu")
    x = torch.ones(2, 3, requires_grad=True)
    buf.add({"x": x, "y": torch.zeros(2, dtype=torch.long)})
    with torch.no_grad():
        x.fill_(5.0)
    assert torch.equal(buf.contents()["x"], torch.ones(2, 3)) and not buf.contents()["x"].requires_grad
    for _ in range(20):
        buf.add({"x": torch.randn(50, 3), "y": torch.zeros(50, dtype=torch.long)})
    assert len(buf) == 4 and buf.seen == 1002
    assert buf.storage.nbytes == 4 * 3 * 4 + 4 * 8  # memory bounded by the capacity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_storage_on_a_gpu_takes_cpu_batches_and_draws_there() -> None:
    buf = PrioritizedReplayBuffer(capacity=8, device="cuda")
    buf.add((torch.randn(10, 3), torch.arange(10)))
    draw = buf.sample(5)
    assert draw.batch[0].is_cuda and draw.weight.is_cuda and not draw.slots.is_cuda
    buf.update_priorities(draw.slots, torch.rand(5, device="cuda"))


def test_a_later_batch_of_another_structure_dtype_or_shape_is_refused_naming_both() -> None:
    buf = ReservoirBuffer(capacity=5)
    buf.add({"x": torch.zeros(2, 3), "y": torch.zeros(2, dtype=torch.long)})
    both = r"samples \{'x': Tensor\[float32, \(4,\)\], 'y': Tensor\[int64, \(\)\]\}, but the buffer holds samples \{'x'"
    with pytest.raises(ValueError, match=both):
        buf.add({"x": torch.zeros(2, 4), "y": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"Tensor\[int32, \(\)\].*Tensor\[int64, \(\)\]"):
        buf.add({"x": torch.zeros(2, 3), "y": torch.zeros(2, dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"samples \(Tensor\[float32, \(3,\)\], Tensor\[int64, \(\)\]\), but"):
        buf.add((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"\{'x': Tensor\[float32, \(3,\)\]\}, but"):
        buf.add({"x": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"the same batch size .* got \[2, 3\]"):
        buf.add({"x": torch.zeros(2, 3), "y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"batch\['y'\]\[0\] is of type int"):
        buf.add({"x": torch.zeros(2, 3), "y": [1, 2]})
    assert buf.seen == 2  # nothing refused was counted
    buf.add({"y": torch.ones(1, dtype=torch.long), "x": torch.ones(1, 3)})  # key order does not matter
    seq = ReservoirBuffer(capacity=5)
    seq.add((torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)))
    seq.add([torch.zeros(1, 3), torch.zeros(1, dtype=torch.long)])  # a collated list matches a tuple
    assert isinstance(seq.sample(2).batch, tuple) and seq.seen == 3


def test_spec_describes_nested_structures() -> None:
    spec = SampleSpec.of({"a": (torch.zeros(2, 5), [torch.zeros(2, dtype=torch.bool)]), "b": torch.zeros(2)})
    assert repr(spec) == "{'a': (Tensor[float32, (5,)], [Tensor[bool, ()]]), 'b': Tensor[float32, ()]}"


def test_a_buffer_composes_any_sampler_that_follows_the_protocol() -> None:
    class Newest:
        """Draws the most recently written slots (a toy policy: the protocol is four small methods)."""

        def __init__(self) -> None:
            self.written = np.zeros(0, dtype=np.int64)

        def sample(self, size: int, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
            return self.written[-batch_size:], np.full(min(batch_size, self.written.size), 0.5, dtype=np.float32)

        def on_write(self, slots: np.ndarray) -> None:
            self.written = np.concatenate([self.written, slots])

        def state_dict(self, size: int) -> dict[str, Any]:
            return {"written": torch.from_numpy(self.written)}

        def load_state_dict(self, state: dict[str, Any], size: int) -> None:
            self.written = state["written"].numpy()

    buf = ReplayBuffer(capacity=10, sampler=Newest())
    buf.add(_pair(4))
    draw = buf.sample(2)
    assert draw.slots.tolist() == [2, 3] and draw.batch[1].tolist() == [2, 3] and draw.weight.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="The sampler has capacity 5, the buffer 10"):
        ReplayBuffer(capacity=10, sampler=PrioritizedReplaySampler(5))


# ------------------------------------------------------------------------------------------ reservoir writer
def test_reservoir_acceptance_is_exactly_k_over_j() -> None:
    # item j = 20 with k = 10 must be kept with probability 10/20 = 0.5, not 10/21 = 0.476 (the off-by-one).
    rng = np.random.default_rng(0)
    trials = 40_000
    kept = sum(int(reservoir_slots(seen=19, capacity=10, n=1, rng=rng)[0] >= 0) for _ in range(trials))
    se = math.sqrt(0.25 / trials)  # 0.0025
    assert abs(kept / trials - 0.5) < 4 * se  # 0.476 is 9.5 standard errors away
    assert reservoir_slots(seen=0, capacity=10, n=10, rng=rng).tolist() == list(range(10))  # the first k kept
    mixed = reservoir_slots(seen=8, capacity=10, n=5, rng=rng)  # items 9, 10 fill; 11, 12, 13 draw
    assert mixed[:2].tolist() == [8, 9] and bool(((mixed[2:] >= -1) & (mixed[2:] < 10)).all())


def test_buffer_keeps_item_j_with_probability_capacity_over_seen() -> None:
    # after a stream of 60 items offered in uneven batches, each item is held with probability 12/60 = 0.2
    n_items, capacity, runs = 60, 12, 1500
    counts = np.zeros(n_items)
    for run in range(runs):
        buf = ReservoirBuffer(capacity, seed=run)
        for start in range(0, n_items, 7):
            buf.add(_pair(min(7, n_items - start), dim=1, start=start))
        counts[_ids(buf)] += 1
        assert len(buf) == capacity and buf.seen == n_items
    expected = runs * capacity / n_items  # 300 per item
    _, p = chisquare(counts, [expected] * n_items)
    assert p > 1e-3, f"inclusion counts not uniform (p={p:.2e})"  # fixed seeds: deterministic


def test_last_write_per_slot_matches_applying_the_writes_in_order() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        slots = rng.integers(-1, 6, rng.integers(0, 20))
        written, items = last_write_per_slot(slots)
        expected: dict[int, int] = {}
        for i, s in enumerate(slots.tolist()):
            if s >= 0:
                expected[s] = i
        assert dict(zip(written.tolist(), items.tolist(), strict=True)) == expected
        assert items.tolist() == sorted(items.tolist())  # in item order


def test_batched_insert_applies_the_last_write_per_slot() -> None:
    buf = ReservoirBuffer(capacity=3, seed=0)
    buf.add(_pair(3))
    for i in range(20):
        slots = buf.add(_pair(50, start=100 * (i + 1)))
        assert slots.unique().numel() == slots.numel()
    assert len(buf) == 3 and buf.seen == 1003 and buf.storage.nbytes == 3 * 3 * 4 + 3 * 8


# ------------------------------------------------------------------------------------------ uniform draws
def test_uniform_draws_are_distinct_and_uniform_over_ordered_tuples() -> None:
    rng = np.random.default_rng(0)
    for n, k in [(10**9, 50), (1000, 256), (300, 256), (5, 9), (7, 0)]:
        draw = sample_without_replacement(n, k, rng)
        assert draw.size == min(n, k) and np.unique(draw).size == draw.size and (draw < n).all()
    # small population, many repeats in the spare-draw path: every ordered pair of distinct values equally likely
    n, trials = 9, 36_000  # n >= 4 k with k = 2: the with-replacement path
    pairs = np.array([sample_without_replacement(n, 2, rng) for _ in range(trials)])
    counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
    assert (np.diag(counts) == 0).all()
    off = counts[~np.eye(n, dtype=bool)]
    _, p = chisquare(off, np.full(off.size, trials / off.size))
    assert p > 1e-3, f"ordered pairs not uniform (p={p:.2e})"


def test_uniform_buffer_draws_what_it_holds_while_filling() -> None:
    buf = ReservoirBuffer(capacity=100, seed=0)
    assert buf.sample(4).batch is None
    buf.add(_pair(3))
    draw = buf.sample(10)
    assert sorted(draw.slots.tolist()) == [0, 1, 2] and torch.equal(draw.weight, torch.ones(3))
    with pytest.raises(ValueError, match=r"`batch_size` must be >= 0, got -1"):
        buf.sample(-1)


# ------------------------------------------------------------------------------------------ prioritized draws
def test_prioritized_draws_follow_priority_to_the_alpha() -> None:
    buf = PrioritizedReplayBuffer(capacity=13, alpha=0.5, beta=1.0, eps=1e-3, seed=0)
    buf.add(_pair(13))
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
    buf.add(_pair(4))
    assert torch.allclose(buf.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))  # new = max priority
    buf.update_priorities(torch.tensor([0, 1, 2, 3]), torch.tensor([3.0, 1.0, 0.0, -8.0]))  # |priority|
    raw = torch.tensor([3.0, 1.0, 0.0, 8.0], dtype=torch.float64) + 1e-3
    p = raw.pow(0.5) / raw.pow(0.5).sum()
    assert buf.max_priority == pytest.approx(8.001)
    draw = buf.sample(64)
    weight = (4 * p[draw.slots]) ** -0.7 / (4 * p.min()) ** -0.7  # (n p)^-beta / max
    assert torch.allclose(draw.weight.double(), weight, rtol=1e-6) and draw.weight.dtype == torch.float32
    buf.add(_pair(1, start=4))
    assert float(buf.sampler.tree.values(np.array([4]))[0]) == pytest.approx(8.001**0.5)


def test_duplicate_slots_in_one_update_keep_the_last_finite_value() -> None:
    buf = PrioritizedReplayBuffer(capacity=6, alpha=1.0, eps=1e-3, seed=0)
    buf.add(_pair(6))
    with pytest.warns(UserWarning, match="1 non-finite priorities"):
        dropped = buf.update_priorities(torch.tensor([2, 4, 2, 2, 4]), torch.tensor([5.0, 1.0, 7.0, float("nan"), 3.0]))
    assert dropped == 1
    values = buf.sampler.tree.values()
    assert values[2] == pytest.approx(7.001) and values[4] == pytest.approx(3.001)  # last finite write wins
    again = PrioritizedReplayBuffer(capacity=6, alpha=1.0, eps=1e-3, seed=0)
    again.add(_pair(6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.update_priorities(torch.tensor([2, 4, 2, 2, 4]), torch.tensor([5.0, 1.0, 7.0, float("nan"), 3.0]))
    assert np.array_equal(again.sampler.tree.values(), values)  # deterministic


def test_non_finite_priorities_leave_items_and_the_max_priority_intact() -> None:
    buf = PrioritizedReplayBuffer(capacity=8, alpha=1.0)
    buf.add(_pair(4))
    before = buf.sampler.tree.values()[:4]
    with pytest.warns(UserWarning, match="2 non-finite priorities"):
        dropped = buf.update_priorities(torch.tensor([0, 1, 2]), torch.tensor([float("inf"), float("nan"), 5.0]))
    assert dropped == 2 and math.isfinite(buf.max_priority)
    values = buf.sampler.tree.values()
    assert np.array_equal(values[:2], before[:2]) and values[2] == pytest.approx(5.001)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        buf.update_priorities(torch.tensor([3]), torch.tensor([float("nan")]))
    buf.add(_pair(2, start=4))  # new items get the (finite) max priority and are drawable
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


# ------------------------------------------------------------------------------------------ sum tree
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
    buf.add(_pair(10))
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
    assert np.array_equal(tree._sums[0], np.add.reduce(tree._child_sums[0], axis=1)) or np.allclose(
        tree._sums[0], tree._child_sums[0].sum(axis=1), rtol=1e-15
    )
    fresh = SumTree(5000)
    fresh.load_state_dict(tree.state_dict())
    assert fresh.total == tree.total and np.array_equal(fresh._sums[0], tree._sums[0])
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


# ------------------------------------------------------------------------------------------ per-call work
class _CountTorch(TorchDispatchMode):
    """Counts the elements every torch operator produces (its work, up to a constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in args if isinstance(a, torch.Tensor)]
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not any(t is a for a in inputs):  # in place: the rows written count
                self.elements += t.numel()
        if func._schema.is_mutable:
            self.elements += sum(a.numel() for a in inputs[1:])  # e.g. index_copy_: the index and the source
        return out


def _work(fn: Callable[[], Any], calls: int = 5) -> tuple[int, int]:
    """(largest NumPy allocation peak in bytes, torch elements produced) per call, over ``calls`` calls."""
    peaks, counter = [], _CountTorch()
    with counter:
        for _ in range(calls):
            tracemalloc.start()
            fn()
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    return max(peaks), counter.elements // calls


def _filled(capacity: int, prioritized: bool) -> ReplayBuffer:
    buf: ReplayBuffer = PrioritizedReplayBuffer(capacity, seed=0) if prioritized else ReservoirBuffer(capacity, seed=0)
    for start in range(0, capacity, 1 << 17):
        buf.add(_pair(min(1 << 17, capacity - start), dim=2, start=start))
    return buf


def test_per_call_work_does_not_grow_with_the_capacity() -> None:
    k = 256
    work: dict[int, dict[str, tuple[int, int]]] = {}
    for capacity in (10**4, 10**6):
        prioritized, uniform = _filled(capacity, True), _filled(capacity, False)
        slots = prioritized.sample(k).slots
        losses = torch.rand(k)
        incoming = _pair(k, dim=2)

        def insert(buf: ReplayBuffer = uniform, cap: int = capacity, batch: Any = incoming) -> None:
            buf.writer.seen = cap  # just full: nearly every item is written
            buf.add(batch)

        def update(buf: Any = prioritized, index: torch.Tensor = slots, loss: torch.Tensor = losses) -> None:
            buf.update_priorities(index, loss)

        work[capacity] = {
            "prioritized draw": _work(lambda buf=prioritized: buf.sample(k)),
            "priority update": _work(update),
            "uniform draw": _work(lambda buf=uniform: buf.sample(k)),
            "insert": _work(insert),
        }
        assert prioritized.sampler.tree.depth == {10**4: 1, 10**6: 2}[capacity]  # log16(capacity / 4096) levels
    for op, (small_bytes, small_torch) in work[10**4].items():
        big_bytes, big_torch = work[10**6][op]
        # 100x the capacity: at most one more tree level and some fixed overhead, never a pass over the slots
        assert big_bytes <= 3 * small_bytes + 64_000 and big_bytes < 10**6, (op, small_bytes, big_bytes)
        assert big_torch <= 3 * small_torch + 8192 and big_torch < 10**5, (op, small_torch, big_torch)


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


# ------------------------------------------------------------------------------------------ resume and pooling
@pytest.mark.parametrize("prioritized", [False, True])
def test_state_mid_stream_resumes_exactly(prioritized: bool) -> None:
    def make() -> ReplayBuffer:
        return PrioritizedReplayBuffer(20, alpha=0.6, seed=5) if prioritized else ReservoirBuffer(20, seed=5)

    def step(buf: ReplayBuffer, i: int) -> torch.Tensor:
        buf.add({"x": torch.full((7, 2), float(i)), "id": torch.arange(7 * i, 7 * i + 7)})
        draw = buf.sample(5)
        if isinstance(buf, PrioritizedReplayBuffer):
            buf.update_priorities(draw.slots, draw.batch["x"][:, 0] % 3)
        return torch.cat([draw.slots.double(), draw.weight.double(), draw.batch["id"].double()])

    full, cut = make(), make()
    reference = [step(full, i) for i in range(12)]
    for i in range(5):
        step(cut, i)
    resumed = make()
    resumed.load_state_dict(cut.state_dict())
    assert all(torch.equal(step(resumed, i), reference[i]) for i in range(5, 12))
    assert resumed.seen == full.seen and torch.equal(resumed.contents()["id"], full.contents()["id"])


def test_pooling_reshards_buffers_for_another_world_size() -> None:
    ranks = [PrioritizedReplayBuffer(capacity=5, alpha=1.0, seed=r) for r in range(2)]
    for r, buf in enumerate(ranks):
        buf.add(_pair(8, dim=1, start=100 * r))
        buf.update_priorities(torch.arange(5), buf.contents()[0][:, 0])  # priority = id + eps
    states = [b.state_dict() for b in ranks]
    one = PrioritizedReplayBuffer(capacity=10, alpha=1.0)
    one.load_state_dict(pool_buffer_states(states, part=0, parts=1, capacity=10))
    ids = one.contents()[0][:, 0]
    assert len(one) == 10 and one.seen == 16
    assert sorted(ids.tolist()) == sorted(torch.cat([b.contents()[0][:, 0] for b in ranks]).tolist())
    assert np.allclose(one.sampler.tree.values()[:10], ids.double().numpy() + 1e-3)  # priorities follow their items
    shares = [pool_buffer_states(states, part=r, parts=4, capacity=2, seed=r) for r in range(4)]
    assert [s["size"] for s in shares] == [2, 2, 2, 2] and all(s["writer"]["seen"] == 4 for s in shares)
    assert torch.cat([s["storage"]["items"][0][:, 0] for s in shares]).unique().numel() == 8  # disjoint shares
    uniform = ReservoirBuffer(capacity=3)
    uniform.load_state_dict(pool_buffer_states(states, part=0, parts=1, capacity=3))  # subsampled to the capacity
    assert len(uniform) == 3
    with pytest.raises(ValueError, match=r"`part` must be in \[0, 4\), got 4"):
        pool_buffer_states(states, part=4, parts=4, capacity=2)
    other = ReservoirBuffer(capacity=5)
    other.add({"x": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match=r"different structures.*cannot be pooled"):
        pool_buffer_states([*states, other.state_dict()], part=0, parts=1, capacity=8)


def test_a_pooled_buffer_with_free_slots_fills_them_with_the_items_it_keeps() -> None:
    ranks = [ReservoirBuffer(capacity=5, seed=r) for r in range(2)]
    for r, buf in enumerate(ranks):
        buf.add(_pair(8, dim=1, start=1 + 100 * r))  # ids from 1: an unfilled slot would read as id 0
    pooled = ReservoirBuffer(capacity=12, seed=0)
    pooled.load_state_dict(pool_buffer_states([b.state_dict() for b in ranks], part=0, parts=1, capacity=12))
    assert len(pooled) == 10 and pooled.seen == 16
    held = set(_ids(pooled))
    for i in range(20):
        pooled.add(_pair(4, dim=1, start=1000 + 4 * i))
        assert 0 not in _ids(pooled)  # only items ever offered are held
    assert len(pooled) == 12 and pooled.seen == 96
    assert set(_ids(pooled)) - held <= set(range(1000, 1080))
