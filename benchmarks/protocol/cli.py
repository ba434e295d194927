"""The command line every study shares: output, methods, the learning-rate grid, seeds, threads, the device."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from benchmarks.common import parser as make_parser
from benchmarks.common import quiet, torch_threads
from benchmarks.protocol.lr_search import MAX_POINTS
from benchmarks.protocol.runner import run_study
from benchmarks.protocol.seeds import SELECTION_SEEDS
from benchmarks.protocol.study import Study


def build_parser(study: Study) -> argparse.ArgumentParser:
    """The shared options, then the study's own."""
    p = make_parser(study.doc)
    p.add_argument("--out", type=Path, default=Path(f"bench_out/{study.name}.json"), help="the JSON written")
    p.add_argument("--methods", nargs="+", default=list(study.default_methods), choices=study.all_methods)
    p.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=list(study.default_lrs),
        help="the initial learning-rate grid (factor 2 apart); extended at an edge choice; one value: a fixed rate",
    )
    p.add_argument("--lr-max-points", type=int, default=MAX_POINTS, help="the cap on the grid's size")
    p.add_argument("--selection-seeds", type=int, nargs="+", default=list(SELECTION_SEEDS))
    p.add_argument("--seeds", type=int, default=3, help="report seeds 0..n-1")
    p.add_argument("--extra-seeds", type=int, default=2, help="more report seeds where a method is close to uniform")
    p.add_argument("--evals", type=int, default=20, help="evaluation points per run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--accelerator", default="cpu", help="cpu, gpu, ... (one device)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--summarize-only", action="store_true", help="train nothing: write the JSON of the settings already complete"
    )
    study.add_arguments(p)
    return p


def main(study: Study, argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, check, then run the study under the protocol; returns its JSON payload."""
    import sys

    p = build_parser(study)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if min(args.seeds, args.evals, args.threads, args.lr_max_points) < 1 or args.extra_seeds < 0:
        p.error("--seeds, --evals, --threads and --lr-max-points must be >= 1, --extra-seeds >= 0")
    if len(args.lrs) > args.lr_max_points or min(args.lrs) <= 0:
        p.error(f"--lrs must be positive and at most --lr-max-points values, got {args.lrs}")
    if set(args.selection_seeds) & set(range(args.seeds + args.extra_seeds)):
        last = args.seeds + args.extra_seeds - 1
        p.error(f"--selection-seeds {args.selection_seeds} overlap the report seeds 0..{last}")
    message = study.check(args)
    if message:
        p.error(message)
    quiet()
    warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")  # the irreducible-loss model's own fit
    with torch_threads(args.threads):
        return run_study(study, args)
