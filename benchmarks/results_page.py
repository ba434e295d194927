"""The results page, benchmarks/README.md, rendered from the benchmark JSON files in bench_out/.

One section per benchmark whose JSON exists, each with the command that reproduces it and its figure;
``benchmarks.run_all`` writes the page (and the README's generated "which method when" block) after running the
quick benchmarks, or alone with ``--render-only``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.results_common import load, wall
from benchmarks.results_other import gpu_section, other_sections
from benchmarks.results_quick import quick_sections
from benchmarks.results_studies import planned, seconds_noise, study_sections

# name, command, the JSON it writes (relative to --out), the wall time where its JSON does not record one
OTHER_RUNS: list[tuple[str, str, str, str]] = [
    ("continual learning", "python -m benchmarks.continual --out bench_out/continual.json", "continual.json",
     "about 20 min (one core)"),
    ("replay buffers", "python -m benchmarks.replay_buffers --out bench_out/replay_buffers.json",
     "replay_buffers.json", "minutes (not recorded)"),
    ("choice of defaults (one round)", "python -m benchmarks.select_defaults --candidates ... "
     "--out bench_out/select_defaults/roundN.json", "select_defaults", "minutes per candidate and seed"),
    ("GPU check (CUDA)", "make gpu-check", "gpu_check/summary.json", "under 8 min on one GPU"),
]  # fmt: skip

HEADER = """# Benchmark results

This page is generated: `make bench` runs the quick benchmarks and then writes it, and
`python -m benchmarks.run_all --render-only` rewrites it (and the README's "which method when" table) from the JSON
already in `bench_out/`. Edit `benchmarks/results_*.py` or a study's `section`, not this file. Every JSON holds its
settings, the full protocol (the script's docstring), the command, the machine it ran on and every run; each script
writes a PNG plot next to its JSON, shown under its section with the JSON it was drawn from.

## Protocol in brief (the studies: `benchmarks/protocol/`)

- **Equal compute, in forward-sample units.** A forward and backward pass costs 3 per sample, a forward pass
  without gradients 1. A method that scores a presample pays for that forward pass, and an auxiliary model (the
  irreducible-loss model of RHO-LOSS) pays for its training and its pass over the training set before the method's
  first step. Every method of a comparison gets the same budget; where a run may also stop at an epoch count, a
  method with shorter epochs (`prune`) reports the compute it used.
- **Learning rate per method and setting, searched until it is interior.** A factor-2 grid, extended by one value
  in the direction of an edge choice until the choice is interior or the grid holds 7 values; chosen on the mean
  final validation metric of two *selection seeds* (1000, 1001) that are never reported. A choice still at an edge
  is marked ⚠ edge and never quoted in the README. The test split never chooses anything.
- **Report seeds.** Seeds 0, 1 and 2, and 3 and 4 for a method whose paired difference to uniform is within one
  standard deviation. Intervals are 95% t-intervals over the report seeds; a difference to uniform is paired (same
  seed, same data, same holdout), then summarised.
- **Time to target.** The compute and the training seconds (evaluations excluded) until a run first reaches
  uniform's final value of the same seed, or a fixed level, interpolated between evaluation points; the speed-up is
  uniform's time over the method's, per seed. The methods of a seed run one after another in one process, in an
  order that rotates with the seed, so their clocks are comparable.
- **The sceptic's baselines.** Uniform given the same reduced compute as any method that saved compute
  (`uniform_at_<method>`, its learning rate searched like the others), and early-stopped uniform (the test value at
  its best validation point).
- **Regimes.** The large settings draw 50,000 or more MNIST-1D signals (with fresh augmentation in long training),
  so the models do not memorise them.
- **Machine.** Unless a section says GPU, a shared 2-core CPU machine (named under each section), one torch thread
  per run. These are small models on a small problem; read them as what they are, not as a ranking for your task.
"""


def long_runs(out: Path) -> list[str]:
    """The long runs' commands and their recorded (or estimated) wall time."""
    lines = [
        "## Long runs",
        "",
        "Not run by `make bench`. The studies run one after another from `python -m benchmarks.run_studies --chain "
        "long` and `--chain others` (each resumable from its run store); then `python -m benchmarks.run_all "
        "--render-only`. The wall time is the machine time recorded in the JSON where there is one, else an estimate.",
        "",
        "| benchmark | command | wall time |",
        "|---|---|---|",
    ]
    for _study, stem, command, hours in planned():
        data = load(out / f"{stem}.json")
        seconds = data.get("wall_seconds") if data and data.get("protocol_version") == 2 else None
        lines.append(f"| {stem} | `{command}` | {f'{wall(seconds)} (recorded)' if seconds else f'about {hours:g} h'} |")
    for name, command, json_name, estimate in OTHER_RUNS:
        data = load(out / json_name) if json_name.endswith(".json") else None
        seconds = None
        if data is not None:
            seconds = data.get("wall_seconds") or (data.get("env") or {}).get("seconds_total")
            if seconds is None and "parts" in data:
                seconds = sum(p.get("seconds", 0.0) for p in data["parts"].values())
        lines.append(f"| {name} | `{command}` | {f'{wall(seconds)} (recorded)' if seconds else estimate} |")
    return [*lines, ""]


def render(out: Path) -> str:
    """The whole results page (Markdown) from the JSON files in ``out``."""
    lines = [HEADER.rstrip("\n"), *seconds_noise(out), *study_sections(out), *quick_sections(out), *long_runs(out)]
    lines += other_sections(out)
    lines += gpu_section(out)
    return "\n".join(lines).rstrip() + "\n"


def write_page(page: Path, text: str) -> None:
    """Write the results page (the whole file)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote {page}")
