"""Replay buffer operations per call (µs) at capacities 10^4, 10^6 and 10^7: the work must not grow with the capacity.

Each buffer is filled to its capacity with samples ``(x, y)``, ``x`` float32 of ``--feature-dim`` features and ``y``
int64, then every operation is called ``--calls`` times on one torch thread and each call timed alone; the figure
is the median. ``prioritized_draw_us``: :meth:`PrioritizedReplayBuffer.sample` of ``--batch-size`` items with
``alpha=0.6, beta=0.4`` (sum-tree search, importance weights and gathering the items). ``priority_update_us``:
:meth:`PrioritizedReplayBuffer.update_priorities` of ``--batch-size`` slots from an earlier draw (with its
repeats) and fresh losses. ``uniform_draw_us``: the slots of a uniform draw of ``--batch-size`` distinct items
(:class:`UniformReplaySampler`); ``uniform_draw_gather_us`` adds gathering the items (:meth:`ReservoirBuffer.sample`).
``insert_us``: :meth:`ReservoirBuffer.add` of ``--batch-size`` new items offered when the buffer has just filled
(its count of items seen is set back to the capacity before each call, so nearly every item is written: the most
work an insert does); ``prioritized_insert_us`` is the same for the prioritized buffer (new items at the max
priority). ``randint_us``: ``torch.randint(capacity, (batch_size,))`` in the same run (the median of three
medians, taken before, between and after the buffers' operations), the reference that makes figures from other
machines comparable; ``ratio_to_randint`` divides every operation by it. ``growth`` divides each figure by its
value at 10^6 (the goals: at most 1.5 at 10^4 and 10^7). ``settings.load_average_before_after`` records how busy
the machine was: other processes on the same cores inflate every figure.

Goals at capacity 10^6 (issue 14): prioritized draw <= 60, priority update <= 60, uniform draw <= 10, insert <= 30.

python -m benchmarks.replay_buffers --out bench_out/replay_buffers.json
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python benchmarks/replay_buffers.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, parser, protocol, save_figure, save_json
from lightning_per.replay import PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer

OPS = (
    "prioritized_draw_us",
    "priority_update_us",
    "uniform_draw_us",
    "uniform_draw_gather_us",
    "insert_us",
    "prioritized_insert_us",
    "randint_us",
)
GOALS_US = {"prioritized_draw_us": 60.0, "priority_update_us": 60.0, "uniform_draw_us": 10.0, "insert_us": 30.0}
FILL_CHUNK = 1 << 16


def time_calls(fn: Callable[[int], Any], calls: int, warmup: int, before: Callable[[], None] | None = None) -> float:
    """Median µs of ``fn(i)`` over ``calls`` calls (after ``warmup``), each timed alone; ``before`` runs untimed."""
    for i in range(warmup):
        if before is not None:
            before()
        fn(i)
    times = []
    gc.disable()
    try:
        for i in range(calls):
            if before is not None:
                before()
            start = time.perf_counter_ns()
            fn(i)
            times.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    return median(times) / 1000.0


def fill(buffer: ReplayBuffer, capacity: int, dim: int) -> None:
    """Offer ``capacity`` items in large batches (the buffer is then full, every item at the max priority)."""
    for start in range(0, capacity, FILL_CHUNK):
        n = min(FILL_CHUNK, capacity - start)
        buffer.add((torch.randn(n, dim), torch.arange(start, start + n)))


def measure_prioritized(capacity: int, batch: int, calls: int, warmup: int, dim: int, seed: int) -> dict[str, float]:
    """Draw, update and insert of a filled prioritized buffer."""
    g = torch.Generator().manual_seed(seed)
    incoming = (torch.randn(batch, dim, generator=g), torch.zeros(batch, dtype=torch.long))
    buffer = PrioritizedReplayBuffer(capacity, alpha=0.6, beta=0.4, seed=seed)
    fill(buffer, capacity, dim)
    draws = [buffer.sample(batch).slots for _ in range(calls + warmup)]
    losses = [torch.rand(batch, generator=g) * 4 for _ in range(calls + warmup)]

    def full_again() -> None:
        buffer.writer.seen = capacity

    return {
        "priority_update_us": time_calls(lambda i: buffer.update_priorities(draws[i], losses[i]), calls, warmup),
        "prioritized_draw_us": time_calls(lambda i: buffer.sample(batch), calls, warmup),
        "prioritized_insert_us": time_calls(lambda i: buffer.add(incoming), calls, warmup, full_again),
    }


def measure_uniform(capacity: int, batch: int, calls: int, warmup: int, dim: int, seed: int) -> dict[str, float]:
    """Draw (slots alone, and with the items) and insert of a filled reservoir buffer."""
    g = torch.Generator().manual_seed(seed)
    incoming = (torch.randn(batch, dim, generator=g), torch.zeros(batch, dtype=torch.long))
    buffer = ReservoirBuffer(capacity, seed=seed)
    fill(buffer, capacity, dim)
    rng = np.random.default_rng(seed)

    def full_again() -> None:
        buffer.writer.seen = capacity

    return {
        "uniform_draw_us": time_calls(lambda i: buffer.sampler.sample(capacity, batch, rng), calls, warmup),
        "uniform_draw_gather_us": time_calls(lambda i: buffer.sample(batch), calls, warmup),
        "insert_us": time_calls(lambda i: buffer.add(incoming), calls, warmup, full_again),
    }


def measure(capacity: int, batch: int, calls: int, warmup: int, dim: int, seed: int) -> dict[str, float]:
    """Every operation's median µs at one capacity (one buffer at a time in memory)."""

    def randint() -> float:
        return time_calls(lambda i: torch.randint(capacity, (batch,)), calls, warmup)

    references = [randint()]
    out = measure_prioritized(capacity, batch, calls, warmup, dim, seed)
    gc.collect()
    references.append(randint())
    out.update(measure_uniform(capacity, batch, calls, warmup, dim, seed))
    gc.collect()
    references.append(randint())
    out["randint_us"] = median(references)  # measured before, between and after: robust to a busy spell
    return {k: round(out[k], 2) for k in OPS}


def plot(results: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caps = sorted(int(c) for c in results)
    fig, (ax, ax_ratio) = plt.subplots(1, 2, figsize=(11, 4.2))
    for op in OPS:
        ys = [results[str(c)][op] for c in caps]
        line = ax.plot(caps, ys, marker="o", label=op.removesuffix("_us"))[0]
        if op in GOALS_US:
            ax.scatter([10**6], [GOALS_US[op]], marker="_", s=400, color=line.get_color())
        if op != "randint_us":
            ax_ratio.plot(caps, [results[str(c)][op] / results[str(c)]["randint_us"] for c in caps], marker="o")
    ax.set(xscale="log", yscale="log", xlabel="capacity (items)", ylabel="median µs per call")
    ax.set_title("per call, 1 thread (bars: goals at 10^6)", fontsize=10)
    ax.legend(fontsize=7)
    ax_ratio.set(xscale="log", yscale="log", xlabel="capacity (items)", ylabel="÷ torch.randint(capacity, (batch,))")
    ax_ratio.set_title("relative to randint in the same run", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=Path("bench_out/replay_buffers.json"))
    p.add_argument("--capacities", type=int, nargs="+", default=[10**4, 10**6, 10**7])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--calls", type=int, default=2000, help="timed calls per operation (the issue asks >= 1000)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--feature-dim", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    results: dict[str, dict[str, float]] = {}
    for capacity in args.capacities:
        results[str(capacity)] = measure(
            capacity, args.batch_size, args.calls, args.warmup, args.feature_dim, args.seed
        )
        print(capacity, results[str(capacity)], flush=True)
    ratios = {
        c: {op: round(v / r["randint_us"], 2) for op, v in r.items() if op != "randint_us"} for c, r in results.items()
    }
    reference = str(10**6) if str(10**6) in results else str(args.capacities[0])
    growth = {c: {op: round(v / results[reference][op], 2) for op, v in r.items()} for c, r in results.items()}
    payload = {
        "capacity": results,
        "ratio_to_randint": ratios,
        "growth": growth,
        "goals_us_at_1e6": GOALS_US,
        "goals_met_at_1e6": (
            {op: results[str(10**6)][op] <= goal for op, goal in GOALS_US.items()} if str(10**6) in results else None
        ),
        "settings": {
            "capacities": args.capacities,
            "batch_size": args.batch_size,
            "calls": args.calls,
            "warmup": args.warmup,
            "sample": f"(x float32 ({args.feature_dim},), y int64)",
            "alpha": 0.6,
            "beta": 0.4,
            "torch_threads": torch.get_num_threads(),
            "seed": args.seed,
            "growth_reference": int(reference),
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "protocol": protocol(__doc__),
    }
    save_json(args.out, payload)
    plot(results, args.out.with_suffix(".png"))
    return payload


if __name__ == "__main__":
    main()
