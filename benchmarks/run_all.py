"""Run the quick benchmarks (about 20 minutes on 2 CPU cores) and write the results page, benchmarks/README.md.

    python -m benchmarks.run_all                 # what `make bench` runs: the quick benchmarks, then the page
    python -m benchmarks.run_all --render-only   # re-render the page and the README's table from bench_out/

The page is generated as a whole from the JSON files in ``--out``: one section per benchmark whose JSON exists, each
with the command that reproduces it. The studies (hours each on 2 cores) are not run here: ``benchmarks.run_studies``
runs them. The README's "which method when" table, between its markers, is rewritten from the same JSON (``--readme``;
``tests/test_benchmarks.py`` checks it is current). The documentation site includes the page as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results_page import render, write_page
from benchmarks.results_studies import replace_block, which_method_block

JOBS: dict[str, list[str]] = {
    "overhead": ["-m", "benchmarks.overhead"],
    "sampler_scale": ["-m", "benchmarks.sampler_scale", "--n", "1000000", "10000000", "33554432", "100000000"],
    "time_to_quality": ["-m", "benchmarks.time_to_quality", "--budget-s", "25", "--seeds", "3"],
    "gradient_variance": ["-m", "benchmarks.gradient_variance"],
    "label_noise": ["-m", "benchmarks.label_noise", "--seeds", "3"],
}


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"), help="folder of the benchmark JSON files")
    parser.add_argument("--only", nargs="+", choices=list(JOBS), default=list(JOBS), help="quick benchmarks to run")
    parser.add_argument("--page", type=Path, default=Path("benchmarks/README.md"), help="the results page written")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="the README whose table is rewritten")
    parser.add_argument("--render-only", action="store_true", help="run nothing; render the page from the JSON")
    args = parser.parse_args(argv)
    if not args.render_only:
        for name in args.only:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            cmd = [sys.executable, *JOBS[name], "--out", str(args.out / f"{name}.json")]
            subprocess.run(cmd, check=True)
            print(f"== {name} took {time.perf_counter() - start:.0f} s", flush=True)
    write_page(args.page, render(args.out))
    if args.readme.exists():
        args.readme.write_text(replace_block(args.readme.read_text(), which_method_block(args.out)))
        print(f"wrote the which-method table of {args.readme}")


if __name__ == "__main__":
    main()
