"""Selection of defaults on the validation split: candidate settings of one method, side by side.

Protocol. The time-to-quality set-up (``benchmarks/time_to_quality.py``: MNIST-1D, the examples' CNN, SGD with
momentum, augmentations, equal training budgets) with seeds that the benchmark does not use (100, 101, ...). Each
candidate is a method plus ``key=value`` options for ``SamplingStrategy`` (or ``ImportanceSamplingCallback`` for
the importance methods). Reported per candidate, mean and spread over the seeds: the final validation accuracy
and the final training loss (whole training set, no augmentation), with uniform training run alongside in every
seed. The test split is not evaluated at all: defaults are chosen on these figures, then the benchmark reports
test accuracy with them.

    python -m benchmarks.select_defaults --budget-s 25 --seeds 3 \\
        --candidates proportional proportional:normalize_weights=True "proportional:beta=0.4,beta_final=1.0"
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from benchmarks.common import parser as make_parser
from benchmarks.common import protocol, quiet, save_json, spread
from benchmarks.time_to_quality import METHODS, calibrate, run, splits


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    """``method:key=value,key=value`` (values as Python literals) -> ``(method, options)``."""
    method, _, rest = text.partition(":")
    if method not in METHODS:
        raise SystemExit(f"unknown method {method!r} in candidate {text!r}; choose from {', '.join(METHODS)}")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = ast.literal_eval(value.strip())
    return method, options


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--candidates", nargs="+", required=True, help="method[:key=value,...]")
    parser.add_argument("--out", type=Path, default=Path("bench_out/select_defaults.json"))
    parser.add_argument("--budget-s", type=float, default=25.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=100, help="the benchmark itself uses seeds 0, 1, ...")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--presample", type=int, default=3)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--evals", type=int, default=5)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)
    quiet()
    data = splits(args.data_dir)
    data = {k: v for k, v in data.items() if k != "test"}  # never evaluated here
    max_epochs = calibrate(args, data)
    candidates = ["uniform", *[c for c in args.candidates if c != "uniform"]]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    finals: dict[str, list[dict[str, float]]] = {c: [] for c in candidates}
    for seed in seeds:
        for candidate in candidates:
            method, options = parse_candidate(candidate)
            result = run(method, seed, args, data, max_epochs, options)
            end = dict(result.curve[-1])
            end["importance_fraction"] = result.selected_steps / max(1, result.steps)
            finals[candidate].append(end)
            print(
                f"seed {seed} {candidate:<48s} train loss {end['train_loss']:.4f}  val acc {end['val_acc']:.4f}  "
                f"importance steps {end['importance_fraction']:.2f}",
                flush=True,
            )
    summary = {
        c: {k: spread([f[k] for f in rows]) for k in ("val_acc", "train_loss", "importance_fraction", "cost")}
        for c, rows in finals.items()
    }
    print(f"{'candidate':<48s} {'val acc':>15s} {'train loss':>17s}")
    for c, r in summary.items():
        print(
            f"{c:<48s} {r['val_acc']['mean']:.4f} ± {r['val_acc']['std']:.4f} "
            f"{r['train_loss']['mean']:.4f} ± {r['train_loss']['std']:.4f}"
        )
    settings = {**vars(args), "out": str(args.out), "max_epochs": max_epochs, "seeds": seeds}
    save_json(args.out, {"candidates": summary, "settings": settings, "protocol": protocol(__doc__)})


if __name__ == "__main__":
    main()
