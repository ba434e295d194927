"""Sampler scale: one epoch's draw of N weighted indices, against torch's own samplers.

Protocol. The score table holds N log-normal scores (float32, what ``LossTracker`` keeps). Each method runs in
its own fresh process and is timed from an empty state to the last index consumed by a Python ``for`` loop (what
a DataLoader does with a sampler):

* ``lightning_per``: ``PrioritizedSampler`` with ``strategy="proportional"`` (build the plan: priorities, CDF;
  draw N indices with replacement; yield ``(index, weight)`` pairs chunk by chunk);
* ``randperm``: ``torch.utils.data.RandomSampler`` (``torch.randperm(N).tolist()``), the floor for a uniform
  shuffle, which needs no weights at all;
* ``multinomial``: ``torch.utils.data.WeightedRandomSampler`` (``torch.multinomial``), ``null`` where it fails
  (it accepts at most 2^24 categories).

The methods take turns: each of ``--repeats`` rounds (3; 1 at N >= 10^8) runs every method once, and a method's
time is its median over the rounds. One torch thread (``--threads``). Peak extra memory is the process's peak
resident set during the draw less its resident set before it (the score table included there), divided by N; on
Linux the peak is reset to the current size just before the draw (``/proc/self/clear_refs``), so nothing that
happened earlier (imports, filling the table) hides in it. The load average before and after is recorded (other
processes on the same cores inflate every time).

    python -m benchmarks.sampler_scale --n 10000000 --out bench_out/sampler_scale.json
    python -m benchmarks.sampler_scale --n 1000000 10000000 33554432 100000000 --out bench_out/sampler_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from benchmarks.common import parser as make_parser
from benchmarks.common import protocol, save_figure, save_json, torch_threads

if TYPE_CHECKING:
    from lightning_per.score_table import ScoreTable

METHODS = ("lightning_per", "randperm", "multinomial")


def fill_scores(n: int, seed: int = 0) -> ScoreTable:
    """N log-normal scores, generated in chunks so that no temporary raises the peak memory."""
    from lightning_per.score_table import ScoreTable

    table = ScoreTable(n)
    generator = torch.Generator().manual_seed(seed)
    chunk = 1 << 22
    for start in range(0, n, chunk):
        part = table.scores[start : start + chunk]
        part.normal_(generator=generator).exp_()
    return table


def _status_bytes(field: str) -> int | None:
    """``VmRSS`` (resident set) or ``VmHWM`` (its peak) from ``/proc/self/status``, in bytes; ``None`` off Linux."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith(f"{field}:")), None)


def start_peak() -> int:
    """Reset the peak resident set to the current one where Linux allows it; returns the baseline in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
    except OSError:
        return peak_rss_bytes()  # no reset: the growth of the lifetime peak (may hide an earlier high point)
    return _status_bytes("VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The peak resident set size (since the last reset) in bytes."""
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(method: str, n: int) -> dict[str, Any]:
    """Time one method in this process; returns seconds (None on failure), extra bytes per sample, error."""
    from torch.utils.data import RandomSampler, WeightedRandomSampler

    from lightning_per import SamplingStrategy
    from lightning_per.sampler import PrioritizedSampler

    table = fill_scores(n)
    before = start_peak()
    count = 0
    start = time.perf_counter()
    try:
        if method == "lightning_per":
            sampler: Any = PrioritizedSampler(range(n), scores=table, strategy=SamplingStrategy("proportional"))
        elif method == "randperm":
            sampler = RandomSampler(range(n), generator=torch.Generator().manual_seed(0))
        else:
            sampler = WeightedRandomSampler(table.scores, n, generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
        for _ in sampler:
            count += 1
    except RuntimeError as err:
        return {"seconds": None, "bytes_per_sample": None, "error": str(err).splitlines()[0]}
    seconds = time.perf_counter() - start
    if count != n:
        raise AssertionError(f"{method} yielded {count} indices, expected {n}")
    extra = max(0, peak_rss_bytes() - before)
    return {"seconds": seconds, "bytes_per_sample": extra / n, "error": None}


def run(n: int, repeats: int, in_process: bool = False, threads: int = 1) -> dict[str, Any]:
    """All methods at size ``n``, each in fresh processes; the median of ``repeats`` rounds.

    A round runs every method once, in turn, so a slow spell of the machine falls on all of them alike.
    ``in_process`` runs them in this process instead (the tests' smoke run: memory the process freed earlier may be
    reused, so its memory figures are only a lower bound).
    """
    seconds: dict[str, float | None] = {}
    memory: dict[str, float | None] = {}
    errors: dict[str, str] = {}
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
    for _ in range(repeats):
        for method in METHODS:
            if runs[method] and runs[method][-1]["seconds"] is None:
                continue  # it failed: no point in trying again
            if in_process:
                runs[method].append(worker(method, n))
                continue
            command = ["-m", "benchmarks.sampler_scale", "--worker", method, "--n", str(n), "--threads", str(threads)]
            out = subprocess.run(
                [sys.executable, *command],
                check=True,
                capture_output=True,
                text=True,
            )
            runs[method].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for method in METHODS:
        times = [r["seconds"] for r in runs[method] if r["seconds"] is not None]
        seconds[method] = sorted(times)[len(times) // 2] if times else None
        memory[method] = min(r["bytes_per_sample"] for r in runs[method]) if times else None
        if not times:
            errors[method] = runs[method][-1]["error"]
        shown = f"{seconds[method]:.3f} s, {memory[method]:.1f} B/sample" if times else f"failed: {errors[method]}"
        print(f"  n={n:>11,d}  {method:<14s} {shown}", flush=True)
    floor = seconds["randperm"]
    ours = seconds["lightning_per"]
    return {
        "n": n,
        "seconds": seconds,
        "bytes_per_sample": memory["lightning_per"],
        "bytes_per_sample_by_method": memory,
        "ratio_to_randperm": ours / floor if ours is not None and floor else None,
        "errors": errors,
    }


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Seconds per epoch draw against N, one line per method (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        points = [(r["n"], r["seconds"][method]) for r in results if r["seconds"][method] is not None]
        if points:
            ax.loglog(*zip(*points, strict=True), marker="o", label=method)
    ax.set_xlabel("N (indices per epoch)")
    ax.set_ylabel("seconds (build + draw + iterate)")
    ax.set_title("One epoch's weighted draw")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process runs per method (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=Path("bench_out/sampler_scale.json"))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help="no fresh processes (a smoke run: no memory figures)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    with torch_threads(args.threads):
        if args.worker:
            print(json.dumps(worker(args.worker, args.n[0])))
            return
        load_before = os.getloadavg()[0]
        results = [run(n, args.repeats if n < 10**8 else 1, args.in_process, args.threads) for n in args.n]
        payload: dict[str, Any] = results[-1] if len(results) == 1 else {**results[-1], "by_n": results}
        payload["load_average_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        payload["protocol"] = protocol(__doc__)
        save_json(args.out, payload)  # its environment records the thread count
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
