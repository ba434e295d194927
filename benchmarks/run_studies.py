"""Run the four studies under the protocol, one after another, each from a frozen copy of the committed code.

    python -m benchmarks.run_studies --chain long      # long training, large: 25 and 10 epochs, then 50 and 100
    python -m benchmarks.run_studies --chain others    # noisy labels (large), redundancy, imbalance, noisy (small) x3
    python -m benchmarks.run_studies --chain text      # the text study (issue 24): a byte-level LM, clean and noisy
    python -m benchmarks.run_studies --chain stream    # RHO-LOSS on a stream (large batches) and indexed, small
    python -m benchmarks.run_studies --print           # the plan: every command and its estimated hours

Each command starts from a copy of ``HEAD`` (``git archive`` into ``--code-dir/<commit>``, whose ``bench_out`` links
to this checkout's), so editing the working tree while a chain runs changes nothing it runs, and every JSON names the
commit that wrote it (``code_commit``). One process per study, one torch thread; two chains side by side use the
machine's two cores. A study resumes from its run store (``bench_out/<name>.runs.jsonl``): running a chain again
after a kill loses at most the run that was in progress. The hours are estimates for this shared 2-core machine
under load (load average 7-9 while they started): a 25-epoch long-training run of the large setting took 5-6.5 min
of wall time, a noisy-labels run of the large setting 6-7 min, a redundancy or imbalance run about 35 s on a quieter
machine (the earlier protocol's JSON); times about 10.7 runs per method and setting (3 learning rates on 2
selection seeds, 3 report seeds, some extensions and extra seeds).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# chain: [(study, arguments, estimated hours)]
CHAINS: dict[str, list[tuple[str, list[str], float]]] = {
    "long": [
        ("long_training", ["--size", "large", "--epochs", "25", "10", "--schedules", "cosine", "step",
                           "--lrs", "0.1", "0.2", "0.4"], 9.0),
        ("long_training", ["--size", "large", "--epochs", "50", "100", "--schedules", "cosine",
                           "--methods", "importance", "--lrs", "0.1", "0.2", "0.4",
                           "--out", "bench_out/long_training_long.json"], 13.0),
    ],
    "others": [
        ("noisy_labels", ["--size", "large", "--noise", "0.3", "--methods", "uniform", "proportional", "rank", "prune",
                          "importance", "rank_reducible", "topk_reducible", "selective_backprop",
                          "topk_reducible_stream"], 10.5),
        ("redundancy", [], 3.0),
        ("imbalance", [], 2.5),
        ("noisy_labels", ["--size", "small", "--noise", "0.3", "--schedule", "constant", "--methods", "uniform",
                          "rank_reducible", "topk_reducible", "--out", "bench_out/noisy_labels_constant_small.json"],
         1.5),
        ("noisy_labels", ["--size", "small", "--noise", "0.3", "0.1", "0",
                          "--out", "bench_out/noisy_labels_small.json"], 6.0),
        ("noisy_labels", ["--size", "small", "--noise", "0.3", "--methods", "uniform", "rank_reducible",
                          "rank_reducible_b0", "rank_reducible_b1", "--out", "bench_out/noisy_labels_weights.json"],
         0.8),
    ],
    "text": [("text_lm", ["--evals", "10"], 5.5)],
    "stream": [
        ("noisy_labels", ["--size", "small", "--noise", "0.3", "--methods", "uniform", "topk_reducible",
                          "topk_reducible_stream", "--out", "bench_out/noisy_labels_stream_small.json"], 1.0),
    ],
}  # fmt: skip


def snapshot(code_dir: Path) -> tuple[Path, str]:
    """A copy of ``HEAD`` under ``code_dir/<commit>``, its ``bench_out`` linked to this checkout's."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True)
    sha = commit.stdout.strip()
    target = code_dir / sha
    if not target.exists():
        code_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{sha}.partial-", dir=code_dir))  # chains started together: one each
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive.stdout, check=True)
        subprocess.run(["rm", "-rf", str(partial / "bench_out")], check=True)
        (partial / "bench_out").symlink_to(ROOT / "bench_out")
        try:
            partial.rename(target)
        except OSError:  # a chain started beside this one finished its copy first
            subprocess.run(["rm", "-rf", str(partial)], check=True)
    return target, sha


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", choices=list(CHAINS), help="the chain of studies to run")
    parser.add_argument("--print", action="store_true", help="print the plan and run nothing")
    parser.add_argument("--code-dir", type=Path, default=Path("/work/bench_code"), help="where the copies go")
    args = parser.parse_args(argv)
    if args.print or not args.chain:
        for name, chain in CHAINS.items():
            print(f"chain {name}: {sum(h for _, _, h in chain):.1f} h")
            for study, flags, hours in chain:
                print(f"  {hours:4.1f} h  python -m benchmarks.{study} {' '.join(flags)}")
        return
    for study, flags, hours in CHAINS[args.chain]:
        code, sha = snapshot(args.code_dir)
        start = time.perf_counter()
        print(f"== {study} {' '.join(flags)} (commit {sha[:10]}, estimated {hours:.1f} h)", flush=True)
        env = {**os.environ, "PYTHONPATH": str(code), "BENCH_COMMIT": sha}
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{study}", *flags], cwd=code, env=env)
        print(f"== {study} ended with {done.returncode} after {(time.perf_counter() - start) / 3600:.2f} h", flush=True)


if __name__ == "__main__":
    main()
