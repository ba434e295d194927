"""lightning_per.replay buffers (storage, reservoir writer, state): any structure, bounded memory, bounded work."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_per.replay import PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.prioritized import PrioritizedReplaySampler
from tests.helpers import held_ids, numbered

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
    buf.add(numbered(4))
    draw = buf.sample(2)
    assert draw.slots.tolist() == [2, 3] and draw.batch[1].tolist() == [2, 3] and draw.weight.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="The sampler has capacity 5, the buffer 10"):
        ReplayBuffer(capacity=10, sampler=PrioritizedReplaySampler(5))


def test_buffer_keeps_item_j_with_probability_capacity_over_seen() -> None:
    # after a stream of 60 items offered in uneven batches, each item is held with probability 12/60 = 0.2
    n_items, capacity, runs = 60, 12, 1500
    counts = np.zeros(n_items)
    for run in range(runs):
        buf = ReservoirBuffer(capacity, seed=run)
        for start in range(0, n_items, 7):
            buf.add(numbered(min(7, n_items - start), dim=1, start=start))
        counts[held_ids(buf)] += 1
        assert len(buf) == capacity and buf.seen == n_items
    expected = runs * capacity / n_items  # 300 per item
    _, p = chisquare(counts, [expected] * n_items)
    assert p > 1e-3, f"inclusion counts not uniform (p={p:.2e})"  # fixed seeds: deterministic


def test_batched_insert_applies_the_last_write_per_slot() -> None:
    buf = ReservoirBuffer(capacity=3, seed=0)
    buf.add(numbered(3))
    for i in range(20):
        slots = buf.add(numbered(50, start=100 * (i + 1)))
        assert slots.unique().numel() == slots.numel()
    assert len(buf) == 3 and buf.seen == 1003 and buf.storage.nbytes == 3 * 3 * 4 + 3 * 8


@pytest.mark.parametrize("prioritized", [False, True])
def test_a_buffer_state_taken_mid_stream_resumes_exactly(prioritized: bool) -> None:
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
        buf.add(numbered(min(1 << 17, capacity - start), dim=2, start=start))
    return buf


def test_per_call_work_does_not_grow_with_the_capacity() -> None:
    k = 256
    work: dict[int, dict[str, tuple[int, int]]] = {}
    for capacity in (10**4, 10**6):
        prioritized, uniform = _filled(capacity, True), _filled(capacity, False)
        slots = prioritized.sample(k).slots
        losses = torch.rand(k)
        incoming = numbered(k, dim=2)

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


REPO = Path(__file__).resolve().parents[1]


def test_replay_imports_without_sklearn_mnist1d_or_the_examples() -> None:
    code = (
        "import sys\n"
        "sys.modules['sklearn'] = None\n"  # `import sklearn` now raises ImportError
        "sys.modules['mnist1d'] = None\n"
        "import lightning_per.replay as replay\n"
        "assert 'lightning_per.examples' not in sys.modules, sorted(m for m in sys.modules if 'examples' in m)\n"
        "assert not {'sklearn', 'mnist1d'} & {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "public = set(replay.__all__)\n"
        "internals = {'flatten', 'unflatten', 'join', 'RankBuffers', 'pool_buffer_states', 'SampleSpec', 'SumTree',\n"
        "             'reservoir_slots', 'last_write_per_slot', 'task_class_mask', 'reptile_interpolate_',\n"
        "             'TaskStreamSampler', 'UniformReplaySampler', 'PrioritizedReplaySampler', 'ReservoirWriter'}\n"
        "assert not public & internals, public & internals\n"
        "from lightning_per.functional.continual import reptile_interpolate_  # still importable\n"
        "from lightning_per.functional.reservoir import reservoir_slots\n"
        "from lightning_per.continual.stream import TaskStreamSampler\n"
        "from lightning_per.replay.sumtree import SumTree\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
