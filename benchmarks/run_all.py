"""Run every benchmark at sizes that finish in about 20 minutes on 2 CPU cores, and refresh the README's table.

    python -m benchmarks.run_all                 # what `make bench` runs; figures go to bench_out/
    python -m benchmarks.run_all --readme-only   # re-render the README table from the JSON already there

The README table sits between ``<!-- bench:start -->`` and ``<!-- bench:end -->``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

START, END = "<!-- bench:start -->", "<!-- bench:end -->"

JOBS: dict[str, list[str]] = {
    "overhead": ["-m", "benchmarks.overhead"],
    "sampler_scale": ["-m", "benchmarks.sampler_scale", "--n", "1000000", "10000000", "100000000"],
    "time_to_quality": ["-m", "benchmarks.time_to_quality", "--budget-s", "25", "--seeds", "3"],
    "gradient_variance": ["-m", "benchmarks.gradient_variance"],
    "label_noise": ["-m", "benchmarks.label_noise", "--seeds", "3"],
}


def _split(data: dict[str, Any], setup: str) -> str:
    """``body / between`` median milliseconds of a set-up's steps (empty for a JSON from before the split)."""
    if "step_body_ms" not in data:
        return ""
    return f"{data['step_body_ms'][setup]:.2f} / {data['between_steps_ms'][setup]:.2f}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pm(stats: dict[str, float] | None, digits: int = 3, scale: float = 1.0) -> str:
    if stats is None:
        return "not reached"
    return f"{stats['mean'] * scale:.{digits}f} ± {stats['std'] * scale:.{digits}f}"


def render(out: Path) -> str:
    """The README's benchmark section body from the JSON files in ``out``."""
    lines: list[str] = []
    env: dict[str, Any] | None = None
    path = out / "overhead.json"
    if path.exists():
        data = json.loads(path.read_text())
        env = data["env"]
        r, ms, s = data["ratio"], data["step_ms"], data["settings"]
        blocks = data.get("ratio_epoch_blocks", {})

        def setup_line(name: str, key: str, target: str) -> str:
            return (
                f"| {name} | {_fmt(r[key], 3)} | {_fmt(blocks[key], 3) if key in blocks else ''} | {target} "
                f"| {_split(data, key)} |"
            )

        lines += [
            f"**Overhead** (`python -m benchmarks.overhead`; MNIST-1D CNN, batch {s['batch_size']}, "
            f"{s['steps']} steps of each set-up run in lock step; plain Lightning step {ms['plain']:.2f} ms; "
            f"ratios: the median of paired step-time ratios (the targets' measure) and the median over "
            f"{data['blocks']} one-epoch blocks of summed step times, which includes epoch ends):",
            "",
            "| set-up | step time / plain Lightning | epoch blocks / plain | target | step body / between steps (ms) |",
            "|---|---|---|---|---|",
            f"| plain Lightning | 1 | 1 | | {_split(data, 'plain')} |",
            setup_line("`PrioritizedDataModule` + `LossTracker`", "tracker", "<= 1.02"),
            setup_line("`ImportanceSamplingCallback`, uniform phase", "importance_uniform_phase", "<= 1.03"),
            setup_line(
                "`ImportanceSamplingCallback`, importance phase",
                "importance_active",
                f"<= (B+3b)/(3b) = {r['importance_active_theory']:.2f}",
            ),
            "",
        ]
    path = out / "sampler_scale.json"
    if path.exists():
        data = json.loads(path.read_text())
        env = env or data["env"]
        rows = data.get("by_n", [data])
        lines += [
            "**Sampler scale** (`python -m benchmarks.sampler_scale`; one epoch's weighted draw of N indices: build "
            "+ draw + iterate, each method in a fresh process):",
            "",
            "| N | lightning_per | `RandomSampler` (randperm) | `WeightedRandomSampler` (multinomial) "
            "| ratio to randperm | lightning_per extra bytes/sample |",
            "|---|---|---|---|---|---|",
        ]
        for row in rows:
            sec = row["seconds"]
            multi = f"{sec['multinomial']:.2f} s" if sec["multinomial"] is not None else "fails (> 2^24 categories)"
            lines.append(
                f"| {row['n']:.0e} | {_fmt(sec['lightning_per'])} s | {_fmt(sec['randperm'])} s | {multi} "
                f"| {_fmt(row['ratio_to_randperm'])} | {_fmt(row['bytes_per_sample'], 1)} |"
            )
        lines += ["", "Targets: <= 2x randperm at N = 10^7; N = 10^8 works with <= 16 bytes per sample.", ""]
    path = out / "time_to_quality.json"
    if path.exists():
        data = json.loads(path.read_text())
        env = env or data["env"]
        s = data["settings"]
        lines += [
            f"**Time to quality** (`python -m benchmarks.time_to_quality --budget-s {s['budget_s']:g} --seeds "
            f"{s['seeds']}`; MNIST-1D 4000 training signals with augmentation, SGD + momentum, equal compute "
            f"budgets (the cost of {s.get('max_epochs', '?')} uniform epochs, the uniform epochs of "
            f"{s['budget_s']:g} s here), mean ± std over {s['seeds']} seeds):",
            "",
            "| method | final train loss | loss / uniform | final test acc (%) | cost to uniform's final acc / "
            "uniform's | seconds to it | training seconds | importance steps (%) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, m in data["methods"].items():
            share = m.get("importance_fraction") if method.startswith("importance") else None
            lines.append(
                f"| {method} | {_pm(m['final_train_loss'])} | {_pm(m['train_loss_ratio_to_uniform'], 2)} "
                f"| {_pm(m['final_test_acc'], 1, 100)} | {_pm(m['cost_to_uniform_acc_ratio'], 2)} "
                f"| {_pm(m['seconds_to_uniform_acc'], 1)} | {_pm(m['train_seconds'], 1)} "
                f"| {_pm(share, 0, 100) if share else '-'} |"
            )
        lines.append("")
    path = out / "time_to_quality_free_scoring.json"
    if path.exists():
        data = json.loads(path.read_text())
        s = data["settings"]
        lines += [
            f"**Equal steps** (diagnostic: `python -m benchmarks.time_to_quality --budget-s {s['budget_s']:g} --seeds "
            f"{s['seeds']} --methods importance --free-scoring --out {s['out']}`; as above, but an importance step is "
            f"charged like a uniform one, so both make the same steps; {s.get('max_epochs', '?')} uniform epochs):",
            "",
            "| method | final train loss | loss / uniform | final test acc (%) | training seconds |",
            "|---|---|---|---|---|",
        ]
        for method, m in data["methods"].items():
            lines.append(
                f"| {method} | {_pm(m['final_train_loss'])} | {_pm(m['train_loss_ratio_to_uniform'], 2)} "
                f"| {_pm(m['final_test_acc'], 1, 100)} | {_pm(m['train_seconds'], 1)} |"
            )
        lines.append("")
    path = out / "gradient_variance.json"
    if path.exists():
        data = json.loads(path.read_text())
        s = data["settings"]
        lines += [
            f"**Gradient variance** (`python -m benchmarks.gradient_variance`; the uniform time-to-quality set-up "
            f"with the compute of {s['epochs']} uniform epochs, paused at {s['probes']} points of the run; exact "
            f"per-sample gradients of {s['presamples']} presamples of "
            f"B = {s['presample'] * s['batch_size']} points per point; mean ± std over {s['seeds']} seeds; reduction "
            f"= total variance of a uniform step of b = {s['batch_size']} / that of an importance step drawing by the "
            "score; an importance step costs 2 uniform steps):",
            "",
            "| progress | lr | noise share of a uniform step | reduction, bound (`ce`) | reduction, loss "
            "| reduction, true norms (optimal) | tau (bound) | Spearman, bound vs true norm |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for point in data["summary"]:
            lines.append(
                f"| {point['progress']:.2f} | {point['lr']:.3f} | {_pm(point['noise_share'], 2)} "
                f"| {_pm(point['reduction_ce'], 1)} | {_pm(point['reduction_loss'], 1)} "
                f"| {_pm(point['reduction_optimal'], 1)} | {_pm(point['tau_ce'], 2)} | {_pm(point['spearman_ce'], 2)} |"
            )
        lines.append("")
    path = out / "label_noise.json"
    if path.exists():
        data = json.loads(path.read_text())
        s = data["settings"]
        lines += [
            f"**Label noise** (`python -m benchmarks.label_noise --seeds {s['seeds']}`; MNIST-1D, {s['train_size']} "
            f"training signals, {s['noise']:.0%} of training and validation labels flipped, clean test labels, "
            f"{s['epochs']} epochs of SGD + momentum, learning rate per method on the noisy validation split; mean ± "
            f"std over {s['seeds']} seeds; early-stopped: at the epoch of the best noisy validation accuracy):",
            "",
            "| method | lr | final clean test acc (%) | early-stopped (%) | final − uniform's (points) "
            "| draws on mislabelled samples | memorised (%) | compute / uniform's |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, m in data["methods"].items():
            lines.append(
                f"| {method} | {m['lr']:g} | {_pm(m['final_test_acc'], 1, 100)} "
                f"| {_pm(m['early_stopped_test_acc'], 1, 100)} | {_pm(m['final_test_acc_diff_points'], 1)} "
                f"| {_pm(m['noisy_draw_share'], 2)} | {_pm(m['final_memorised'], 1, 100)} "
                f"| {_pm(m['compute_ratio'], 2)} |"
            )
        lines.append("")
    rounds = sorted((out / "select_defaults").glob("round*.json"), key=lambda p: int(p.stem[5:] or 0))
    if rounds:
        lines += [
            "**Choice of defaults** (`python -m benchmarks.select_defaults --candidates ...`; the same set-up on the "
            "validation split with seeds the benchmark does not use, test split never evaluated; uniform run "
            "alongside in every round):",
            "",
            "| round | candidate | val acc (%) | final train loss | loss / uniform's |",
            "|---|---|---|---|---|",
        ]
        for path in rounds:
            data = json.loads(path.read_text())
            uniform = data["candidates"]["uniform"]["train_loss"]["mean"]
            seeds = len(data["settings"]["seeds"])
            for name, c in data["candidates"].items():
                ratio = c["train_loss"]["mean"] / uniform
                lines.append(
                    f"| {path.stem[5:]} ({seeds} seeds) | `{name}` | {_pm(c['val_acc'], 1, 100)} "
                    f"| {_pm(c['train_loss'])} | {ratio:.2f} |"
                )
        lines.append("")
    if env is not None:
        lines.append(
            f"Measured on {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads), torch "
            f"{env['torch']}, lightning {env['lightning']}, Python {env['python']}. JSON and PNG plots in "
            f"`{out}/`. `make bench` re-runs overhead, sampler scale, time to quality, gradient variance and label "
            "noise; the rounds of the choice of defaults and the extra runs named below come from their own commands "
            "(in each JSON's settings)."
        )
    return "\n".join(lines)


def refresh_readme(readme: Path, body: str) -> None:
    """Replace the text between the benchmark markers of ``readme``."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} block to refresh.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    print(f"refreshed the benchmark table in {readme}")


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--only", nargs="+", choices=list(JOBS), default=list(JOBS))
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.readme_only:
        for name in args.only:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            cmd = [sys.executable, *JOBS[name], "--out", str(args.out / f"{name}.json")]
            subprocess.run(cmd, check=True)
            print(f"== {name} took {time.perf_counter() - start:.0f} s", flush=True)
    refresh_readme(args.readme, render(args.out))


if __name__ == "__main__":
    main()
