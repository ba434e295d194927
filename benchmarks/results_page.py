"""The results page, benchmarks/README.md, rendered from the benchmark JSON files in bench_out/.

One section per benchmark whose JSON exists, each with the command that reproduces it; ``benchmarks.run_all``
writes the page after running the quick benchmarks, or alone with ``--render-only``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

# name, command, the JSON it writes (relative to --out), the wall time where its JSON does not record one
LONG_RUNS: list[tuple[str, str, str, str]] = [
    ("noisy labels", "python -m benchmarks.noisy_labels --workers 2 --out bench_out/noisy_labels.json",
     "noisy_labels.json", "about 90 min (2 workers)"),
    ("imbalance", "python -m benchmarks.imbalance --out bench_out/imbalance.json", "imbalance.json", "about 60 min"),
    ("redundancy", "python -m benchmarks.redundancy --out bench_out/redundancy.json", "redundancy.json",
     "about 60 min (about 2 min per run)"),
    ("continual learning", "python -m benchmarks.continual --out bench_out/continual.json", "continual.json",
     "about 20 min (one core)"),
    ("long training (CPU)", "python -m benchmarks.long_training --seeds 3 --out bench_out/long_training.json",
     "long_training.json", "about 10 min (2 threads)"),
    ("replay buffers", "python -m benchmarks.replay_buffers --out bench_out/replay_buffers.json",
     "replay_buffers.json", "minutes (not recorded)"),
    ("choice of defaults (one round)", "python -m benchmarks.select_defaults --candidates ... "
     "--out bench_out/select_defaults/roundN.json", "select_defaults", "minutes per candidate and seed"),
    ("GPU check (CUDA)", "make gpu-check", "gpu_check/summary.json", "under 8 min on one GPU"),
]  # fmt: skip

HEADER = """# Benchmark results

This page is generated: `make bench` runs the quick benchmarks and then writes it, and
`python -m benchmarks.run_all --render-only` rewrites it from the JSON already in `bench_out/`. Edit
`benchmarks/run_all.py`, not this file. Every JSON holds its settings, the full protocol (the script's docstring),
the machine it ran on and every run; each script writes a PNG plot next to its JSON.

## Protocol in brief

- **Equal compute, in forward-sample units.** A forward and backward pass costs 3 per sample, a forward pass
  without gradients 1. A method that scores a presample pays for that forward pass, and an irreducible-loss model
  pays for its training and its pass over the training set before the method's first step. Every method of a
  comparison gets the same budget and stops after the step that spends it; a method whose epochs are shorter
  (`prune`) reports the compute it used. Wall-clock is reported next to it, never used as the budget: the machine's
  speed drifts by 10-25% within minutes.
- **Learning rate per method, on a validation split.** Each method's (peak) learning rate is chosen from a grid by
  its final accuracy on the validation split with seed 0; the other seeds run at that rate. The test split never
  chooses anything.
- **Seeds.** Figures are mean ± sample standard deviation over the seeds named in each section (seeds 0, 1, 2
  unless said otherwise), chosen before running.
- **Ratios and differences to uniform come from the same run.** Uniform sampling always runs alongside, and a
  method's ratio or difference to uniform is taken per seed (paired), then averaged.
- **Machine.** Unless a section says GPU, a shared 2-core CPU machine (the environment is named under each
  section). These are small models on small data; read them as what they are, not as a ranking for your task.
"""


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


def _signed(stats: dict[str, float], digits: int = 1) -> str:
    return f"{stats['mean']:+.{digits}f} ± {stats['std']:.{digits}f}"


def _met(flag: bool | None) -> str:
    return "" if flag is None else ("met" if flag else "missed")


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _env_line(env: dict[str, Any] | None, extra: str = "") -> list[str]:
    if not env or "cpu" not in env:
        return []
    device = f"{env['cuda']}, host CPU {env['cpu']}" if env.get("cuda") else env["cpu"]
    return [
        f"Measured on {device} ({env['cpu_count']} cores, {_count(env['torch_threads'], 'torch thread')}), torch "
        f"{env['torch']}, lightning {env['lightning']}, Python {env['python']}.{extra}",
        "",
    ]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _command(recorded: str) -> str:
    """A recorded command line as a user would type it: ``python -m ...`` without the ``--out`` it wrote to."""
    words = recorded.split()
    if "-m" in words:
        words = ["python", *words[words.index("-m") :]]
    if "--out" in words:
        at = words.index("--out")
        del words[at : at + 2]
    return " ".join(words)


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


# ---------------------------------------------------------------------------------------------- quick benchmarks
def _overhead(data: dict[str, Any], command: str) -> list[str]:
    r, ms, s = data["ratio"], data["step_ms"], data["settings"]
    blocks = data.get("ratio_epoch_blocks", {})

    def setup_line(name: str, key: str, target: str) -> str:
        block = _fmt(blocks[key], 3) if key in blocks else ""
        return f"| {name} | {_fmt(r[key], 3)} | {block} | {target} | {_split(data, key)} |"

    return [
        f"Reproduce: `{command}`. MNIST-1D CNN, batch {s['batch_size']}, {s['steps']} steps of each set-up run in "
        f"lock step; plain Lightning step {ms['plain']:.2f} ms. Ratios: the median of paired step-time ratios (the "
        f"targets' measure) and the median over {data['blocks']} one-epoch blocks of summed step times, which "
        "includes epoch ends.",
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


def _quick_sections(out: Path) -> list[str]:
    lines: list[str] = []
    env: dict[str, Any] | None = None
    data = _load(out / "overhead.json")
    if data is not None:
        env = data["env"]
        lines += ["### Overhead", "", *_overhead(data, "python -m benchmarks.overhead")]
    data = _load(out / "sampler_scale.json")
    if data is not None:
        env = env or data.get("env")
        lines += [
            "### Sampler scale",
            "",
            "Reproduce: `python -m benchmarks.sampler_scale --n 1000000 10000000 33554432 100000000`. One epoch's "
            "weighted draw of N indices: build + draw + iterate, each method in a fresh process, one torch thread. "
            f"Load average before and after: {data.get('load_average_before_after', 'not recorded')} (other processes "
            "on the same cores inflate every time).",
            "",
            "| N | lightning_per | `RandomSampler` (randperm) | `WeightedRandomSampler` (multinomial) "
            "| ratio to randperm | lightning_per extra bytes/sample |",
            "|---|---|---|---|---|---|",
        ]
        for row in data.get("by_n", [data]):
            sec = row["seconds"]
            multi = f"{sec['multinomial']:.2f} s" if sec["multinomial"] is not None else "fails (> 2^24 categories)"
            n = f"2^{row['n'].bit_length() - 1}" if row["n"] & (row["n"] - 1) == 0 else f"{row['n']:.0e}"
            lines.append(
                f"| {n} | {_fmt(sec['lightning_per'])} s | {_fmt(sec['randperm'])} s | {multi} "
                f"| {_fmt(row['ratio_to_randperm'])} | {_fmt(row['bytes_per_sample'], 1)} |"
            )
        lines += ["", "Targets: <= 2x randperm at N = 10^7; N = 10^8 works with <= 16 bytes per sample.", ""]
    data = _load(out / "time_to_quality.json")
    if data is not None:
        env = env or data["env"]
        s = data["settings"]
        lines += [
            "### Time to quality",
            "",
            f"Reproduce: `python -m benchmarks.time_to_quality --budget-s {s['budget_s']:g} --seeds {s['seeds']}`. "
            f"MNIST-1D, 4000 training signals with augmentation, SGD + momentum, equal compute budgets (the cost of "
            f"{s.get('max_epochs', '?')} uniform epochs, the uniform epochs of {s['budget_s']:g} s here), mean ± std "
            f"over {s['seeds']} seeds.",
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
    data = _load(out / "time_to_quality_free_scoring.json")
    if data is not None:
        s = data["settings"]
        lines += [
            "### Equal steps (diagnostic)",
            "",
            f"Reproduce: `python -m benchmarks.time_to_quality --budget-s {s['budget_s']:g} --seeds {s['seeds']} "
            f"--methods importance --free-scoring --out {s['out']}`. As time to quality, but an importance step is "
            f"charged like a uniform one, so both make the same steps; {s.get('max_epochs', '?')} uniform epochs.",
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
    data = _load(out / "gradient_variance.json")
    if data is not None:
        s = data["settings"]
        lines += [
            "### Gradient variance",
            "",
            f"Reproduce: `python -m benchmarks.gradient_variance`. The uniform time-to-quality set-up with the compute "
            f"of {s['epochs']} uniform epochs, paused at {s['probes']} points of the run; exact per-sample gradients "
            f"of {s['presamples']} presamples of B = {s['presample'] * s['batch_size']} points per point; mean ± std "
            f"over {s['seeds']} seeds. Reduction = total variance of a uniform step of b = {s['batch_size']} / that "
            "of an importance step drawing by the score; an importance step costs 2 uniform steps.",
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
    data = _load(out / "label_noise.json")
    if data is not None:
        s = data["settings"]
        lines += [
            "### Label noise",
            "",
            f"Reproduce: `python -m benchmarks.label_noise --seeds {s['seeds']}`. MNIST-1D, {s['train_size']} "
            f"training signals, {s['noise']:.0%} of training and validation labels flipped, clean test labels, "
            f"{s['epochs']} epochs of SGD + momentum, learning rate per method on the noisy validation split; mean ± "
            f"std over {s['seeds']} seeds; early-stopped: at the epoch of the best noisy validation accuracy.",
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
            "### Choice of defaults",
            "",
            "Reproduce: `python -m benchmarks.select_defaults --candidates ...` (the candidates of each round are in "
            "its JSON). The time-to-quality set-up on the validation split with seeds the benchmark does not use; "
            "the test split is never evaluated; uniform runs alongside in every round.",
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
    if not lines:
        return []
    return [
        "## Quick benchmarks (`make bench`)",
        "",
        "`make bench` re-runs overhead, sampler scale, time to quality, gradient variance and label noise (about 20 "
        "minutes on 2 CPU cores); the equal-steps diagnostic and the choice-of-defaults rounds come from their own "
        "commands.",
        "",
        *_env_line(env),
        *lines,
    ]


# ----------------------------------------------------------------------------------------------------- long runs
def _long_runs(out: Path) -> list[str]:
    lines = [
        "## Long runs",
        "",
        "Not run by `make bench`: most take an hour or more on 2 CPU cores, and some need a GPU. Run the command, "
        "then `python -m benchmarks.run_all --render-only`. The wall time is the one recorded in the JSON here where "
        "there is one, else an estimate.",
        "",
        "| benchmark | command | wall time |",
        "|---|---|---|",
    ]
    for name, command, json_name, estimate in LONG_RUNS:
        data = _load(out / json_name) if json_name.endswith(".json") else None
        seconds = None
        if data is not None:
            seconds = data.get("wall_seconds") or (data.get("env") or {}).get("seconds_total")
            if seconds is None and "parts" in data:
                seconds = sum(p.get("seconds", 0.0) for p in data["parts"].values())
        wall = f"{_wall(seconds)} (recorded)" if seconds else estimate
        lines.append(f"| {name} | `{command}` | {wall} |")
    return [*lines, ""]


def _noisy_labels(data: dict[str, Any], title: str = "Noisy labels", note: str = "") -> list[str]:
    s = data["settings"]
    target = s.get("target", 0.85)
    lines = [
        f"### {title}",
        "",
        *([note, ""] if note else []),
        f"Reproduce: `{_noisy_labels_command(s)}`. MNIST-1D, "
        f"{s['signals']} signals (75% training part, a quarter of it held out for every method, so all train on the "
        f"same {round(s['signals'] * 0.75 * (1 - s['holdout_fraction']))}), a share of the training labels flipped, "
        f"clean validation and test labels; 1D CNN, SGD + momentum {s['momentum']:g}, batch {s['batch_size']}, "
        f"{s['schedule']} learning rate; every run gets {s['budget'] / 1e6:g}M forward-sample units (the "
        "irreducible-loss model's training and pass are charged to the methods that use it); peak learning rate per "
        f"method and noise level from {s['lrs']} on the clean validation split; mean ± std over {s['seeds']} "
        "seeds. Early-stopped: the test accuracy at the evaluation point of best clean validation accuracy. Δ: "
        "paired difference to uniform of the same seed, in points.",
        "",
    ]
    for noise, table in data["noise"].items():
        lines += [
            f"**{float(noise):.0%} of training labels flipped**",
            "",
            f"| method | lr | final test (%) | Δ final vs uniform | early-stopped (%) | compute to {target:.0%} (M) "
            "| share of trained points mislabelled |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, r in table["methods"].items():
            reach = r.get("cost_to_target")
            if reach is None:
                runs = len(r.get("cost_to_target_per_seed") or [])
                to_target = f"not reached ({r.get('reached_target', 0)}/{runs} seeds)" if runs else "not reached"
            else:
                to_target = _pm(reach, 2, 1e-6)
            lines.append(
                f"| {method} | {r['lr']:g} | {_pm(r['final_test_acc'], 1, 100)} "
                f"| {_signed(r['final_test_acc_diff_points'])} | {_pm(r['early_stopped_test_acc'], 1, 100)} "
                f"| {to_target} | {_pm(r['noisy_trained_share'], 3)} |"
            )
        lines.append("")
        goals = []
        for goal, value in table["goals"].items():
            if goal == "diagnostics":
                continue
            if goal == "recommended_not_below_uniform":
                for method, v in value.items():
                    goals.append(
                        f"- `{method}` not below uniform's final accuracy: **{_met(v['met'])}** "
                        f"({v['points']['mean']:+.1f} points)"
                    )
            elif "points_vs_uniform_early_stopped" in value:
                early, oracle = value["points_vs_uniform_early_stopped"], value["points_vs_uniform_oracle_best"]
                goals.append(
                    f"- `topk_reducible` within 1 point of uniform's early-stopped accuracy: **{_met(value['met'])}** "
                    f"({early['mean']:+.1f} points; against uniform's oracle best: "
                    f"{_met(value['met_vs_oracle_best'])}, {oracle['mean']:+.1f})"
                )
            else:
                goals.append(
                    f"- `topk_reducible` at least 5 points above uniform's final accuracy: **{_met(value['met'])}** "
                    f"({value['points']['mean']:+.1f} points)"
                )
        if goals:
            lines += ["Goals (means of the paired differences):", "", *goals, ""]
    return lines


NOISY_LABELS_DEFAULTS = {"noise": [0.0, 0.1, 0.3], "lrs": [0.02, 0.05, 0.1], "schedule": "cosine", "budget": 1e6}


def _noisy_labels_command(s: dict[str, Any]) -> str:
    """The command that reproduces a noisy-labels JSON: its settings where they differ from the defaults."""
    parts = ["python -m benchmarks.noisy_labels"]
    for key, default in NOISY_LABELS_DEFAULTS.items():
        if s.get(key, default) != default:
            value = s[key]
            shown = (
                " ".join(f"{v:g}" for v in value)
                if isinstance(value, list)
                else f"{value:g}"
                if isinstance(value, float)
                else str(value)
            )
            parts.append(f"--{key} {shown}")
    if s.get("methods") and len(s["methods"]) < 9:
        parts.append("--methods " + " ".join(s["methods"]))
    if s.get("seeds", 3) != 3:
        parts.append(f"--seeds {s['seeds']}")
    parts.append(f"--workers {s.get('workers', 1)} --out {s.get('out', 'bench_out/noisy_labels.json')}")
    return " ".join(parts)


CONSTANT_RATE_NOTE = (
    "A diagnostic of the regime where uniform sampling fits the noise: a constant learning rate (the issue's "
    "probe's 0.05, the same for every method, not chosen per method) and 2M units. Every other setting as above."
)
CONSTANT_RATE_002_NOTE = (
    "Why `rank_reducible` collapsed at the constant rate 0.05: the same run at 0.02 (seed 0 only). Its importance "
    "weights reach `1 / uniform_mix` = 10 as `beta` anneals to 1, so at a constant rate its largest steps are up "
    "to 10 times uniform's."
)


def _imbalance(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    lines = [
        "### Imbalance",
        "",
        "Reproduce: `python -m benchmarks.imbalance --out bench_out/imbalance.json`. Long-tailed MNIST-1D training "
        f"sets (class sizes falling geometrically from {s['largest']}; class 0 the head, class 9 the tail), balanced "
        f"validation ({s['val_per_class']} per class) and test ({s['test_per_class']} per class) splits; 1D CNN, SGD "
        f"+ momentum {s['momentum']:g}, batch {s['batch_size']}, cosine learning rate; every run gets "
        f"{s['budget'] / 1e6:g}M forward-sample units; peak learning rate per method and ratio from {s['lrs']} on "
        f"the validation balanced accuracy; mean ± std over {s['seeds']} seeds. Balanced: the mean of the per-class "
        "test accuracies; worst: the lowest. Δ: paired difference to uniform, in points. Goal: beat uniform by at "
        "least 2 points of balanced and 10 points of worst-class accuracy.",
        "",
    ]
    for ratio, table in data["ratio"].items():
        goal = table["goals"]
        verdicts = goal.get("methods", {})
        lines += [
            f"**Imbalance ratio {float(ratio):g}** (class sizes {', '.join(map(str, table['class_sizes']))})",
            "",
            "| method | lr | balanced (%) | Δ balanced | worst class (%) | Δ worst | goal |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, r in table["methods"].items():
            met = verdicts.get(method, {}).get("met") if method != "uniform" else None
            lines.append(
                f"| {method} | {r['lr']:g} | {_pm(r['final_test_balanced_acc'], 1, 100)} "
                f"| {_signed(r['balanced_acc_diff_points'])} | {_pm(r['final_test_worst_acc'], 1, 100)} "
                f"| {_signed(r['worst_acc_diff_points'])} | {_met(met)} |"
            )
        lines += [
            "",
            f"Goal (+2 balanced, +10 worst-class): **{_met(goal['met'])}**; best by balanced accuracy: "
            f"`{goal['best_by_balanced_acc']}`.",
            "",
        ]
    return lines


def _redundancy(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    lines = [
        "### Redundancy",
        "",
        "Reproduce: `python -m benchmarks.redundancy --out bench_out/redundancy.json`. MNIST-1D with "
        f"{s['train_size']:,} training signals (many near-duplicates of easy patterns), {s['val_size']:,} validation, "
        f"{s['test_size']:,} test; 1D CNN, SGD + momentum {s['momentum']:g}, batch {s['batch_size']}, cosine learning "
        "rate; a run stops when it has spent the budget or trained its epochs, so a method with shorter epochs "
        f"(prune) saves compute; peak learning rate per method and budget from {s['lrs']} on validation accuracy; "
        f"mean ± std over {s['seeds']} seeds. Compute used and the compute to reach uniform's final test accuracy "
        "are over uniform's, per seed. Goal: at most 0.6 of uniform's compute and at most 0.2 points below its "
        "final test accuracy.",
        "",
    ]
    for epochs, table in data["budgets"].items():
        met = table["goals"]["met"]
        lines += [
            f"**Budget: {epochs} uniform epochs of compute**",
            "",
            "| method | lr | final test (%) | Δ vs uniform (points) | compute used / uniform's "
            "| compute to uniform's final acc / uniform's | goal |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, r in table["methods"].items():
            lines.append(
                f"| {method} | {r['lr']:g} | {_pm(r['final_test_acc'], 2, 100)} "
                f"| {_signed(r['final_test_acc_diff_points'], 2)} | {_pm(r['compute_used_ratio'], 2)} "
                f"| {_pm(r['cost_to_uniform_acc_ratio'], 2)} | {_met(met.get(method))} |"
            )
        lines.append("")
    return lines


CONTINUAL_ROWS = {
    "finetune": "fine-tune",
    "er": "ER",
    "per": "prioritized ER",
    "per_beta0": "prioritized ER, beta=0",
    "mer": "MER",
    "finetune_equal_steps": "fine-tune, equal steps",
    "er_equal_steps": "ER, equal steps",
}


def _continual(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    mer = s["mer"]
    # replays per inner batch: `replay_batch_size` since the Reptile rates were renamed, `k - 1` before
    replays = mer["replay_batch_size"] if "reptile_beta" in mer else mer["replay_batch_size"] - 1
    sweep = s.get("sweep_memories", [])
    lines = [
        "### Continual learning",
        "",
        "Reproduce: `python -m benchmarks.continual --out bench_out/continual.json`. One process, one thread; "
        f"{s['model']}; one pass, incoming batches of {s['batch_size']}, {s['memories']} "
        f"memories, {s['er']['replay_batch_size']} replays per batch; MER `variant={mer['variant']}`, "
        f"`replay_batch_size={replays}` (the paper's `k = {replays + 1}`), `s={mer['batches_per_example']}`, "
        f"`step_batch_size={mer['step_batch_size']}`, `reptile_beta={mer.get('reptile_beta', mer.get('beta'))}`, "
        f"`reptile_gamma={mer.get('reptile_gamma', mer.get('gamma'))}`, {data['mer_steps_per_batch']} inner steps "
        f"per incoming batch; the equal-steps rows train each incoming batch {data['mer_steps_per_batch']} times. "
        f"Mean ± std over {len(data['env'].get('seeds', [])) or 'the'} seeds. ACC: mean accuracy over all tasks "
        "after the last; BWT: mean change of a task's accuracy from right after its training to the end (negative: "
        "forgetting); diagonal: mean over tasks of the accuracy on a task right after training it.",
        "",
        "| scenario | method | steps / batch | ACC | BWT | diagonal |",
        "|---|---|---|---|---|---|",
    ]

    def pm(r: dict[str, Any], key: str, signed: bool = False) -> str:
        return f"{r[key]:+.3f} ± {r[key + '_std']:.3f}" if signed else f"{r[key]:.3f} ± {r[key + '_std']:.3f}"

    for key, res in data["scenarios"].items():
        for row, label in CONTINUAL_ROWS.items():
            r = res["rows"].get(row)
            if r is not None:
                cells = [key, label, f"{r['steps_per_batch']:g}", pm(r, "acc"), pm(r, "bwt", True), pm(r, "diag")]
                lines.append("| " + " | ".join(cells) + " |")
    if sweep:
        rows = [f"er_m{m}" if m != s["memories"] else "er" for m in sweep]
        lines += ["", "Memory sweep (ACC of ER):", ""]
        lines += ["| scenario | " + " | ".join(f"{m} memories" for m in sweep) + " |", "|---" * (len(sweep) + 1) + "|"]
        for key, res in data["scenarios"].items():
            cells = [pm(res["rows"][row], "acc") if row in res["rows"] else "" for row in rows]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def _replay_buffers(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    caps = sorted(data["capacity"], key=int)
    ops = [op for op in data["capacity"][caps[0]] if op != "randint_us"]
    goals = data.get("goals_us_at_1e6", {})
    met = data.get("goals_met_at_1e6") or {}
    lines = [
        "### Replay buffers",
        "",
        "Reproduce: `python -m benchmarks.replay_buffers --out bench_out/replay_buffers.json`. Median µs per call "
        f"over {s['calls']} calls on {s['torch_threads']} torch thread, batches of {s['batch_size']} samples "
        f"{s['sample']}, buffers filled to capacity; `randint` is `torch.randint(capacity, (batch,))` in the same "
        f"run, the reference for other machines. Load average before and after: {s['load_average_before_after']} "
        "(other processes on the same cores inflate every figure).",
        "",
        "| operation | " + " | ".join(f"{int(c):.0e} items" for c in caps) + " | goal at 1e+06 |",
        "|---" * (len(caps) + 2) + "|",
    ]
    for op in [*ops, "randint_us"]:
        cells = [f"{data['capacity'][c][op]:.1f}" for c in caps]
        goal = f"<= {goals[op]:g}" if op in goals else ""
        goal += f" ({_met(met[op])})" if op in met else ""
        lines.append(f"| `{op.removesuffix('_us')}` | " + " | ".join(cells) + f" | {goal} |")
    lines.append("")
    return lines


def _long_sections(out: Path) -> list[str]:
    lines: list[str] = []
    renderers: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
        ("noisy_labels.json", _noisy_labels),
        ("imbalance.json", _imbalance),
        ("redundancy.json", _redundancy),
        ("continual.json", _continual),
        ("replay_buffers.json", _replay_buffers),
    ]
    for name, renderer in renderers:
        data = _load(out / name)
        if data is not None:
            lines += [*renderer(data), *_env_line(data.get("env"))]
        if name == "replay_buffers.json":
            cpu_long = _load(out / "long_training.json")
            if cpu_long is not None:
                lines += [*_long_training(cpu_long, "Long training (CPU)", "cpu"), *_env_line(cpu_long.get("env"))]
        if name == "noisy_labels.json":
            for extra, title, note in (
                ("noisy_labels_constant.json", "Noisy labels at a constant learning rate", CONSTANT_RATE_NOTE),
                ("noisy_labels_constant_lr002.json", "Noisy labels at a constant rate of 0.02", CONSTANT_RATE_002_NOTE),
            ):
                data = _load(out / extra)
                if data is not None:
                    lines += [*_noisy_labels(data, title, note), *_env_line(data.get("env"))]
    return lines


# ----------------------------------------------------------------------------------------------------------- GPU
def _gpu(out: Path) -> list[str]:
    folder = out / "gpu_check"
    summary = _load(folder / "summary.json")
    if summary is None or summary.get("smoke"):
        return []
    parts = summary["parts"]
    lines = [
        "## GPU check",
        "",
        f"These figures come from a GPU ({summary['env'].get('cuda') or summary['device']}), one seed, reduced "
        "budgets: `make gpu-check` (`python -m benchmarks.gpu_check --out bench_out/gpu_check`). Everything else on "
        "this page ran on a CPU.",
        "",
        *_env_line(summary.get("env")),
        "| part | result | seconds |",
        "|---|---|---|",
    ]
    failed = set(summary.get("failed", []))
    for name, part in parts.items():
        if name == "tests":
            result = part.get("summary", "")
        elif name == "cost_ratio":
            result = f"presample forward / training step = {part['ratio_measured']:.2f} (cost model: 1.00)"
        elif "ratio" in part and name == "overhead":
            result = "step time / plain: " + ", ".join(
                f"{k} {v:.3f}" for k, v in part["ratio"].items() if not k.endswith("_theory")
            )
        elif "ratio" in part:
            result = "train loss / uniform's: " + ", ".join(f"{k} {v['mean']:.2f}" for k, v in part["ratio"].items())
        else:
            result = ""
        status = "failed: " if name in failed else ""
        lines.append(f"| {name} | {status}{result} | {part.get('seconds', 0.0):.0f} |")
    lines.append("")
    cost = parts.get("cost_ratio")
    if cost:
        lines += [
            f"Cost ratio (CNN width {cost['width']}, b = {cost['b']}, B = {cost['B']}): a no-grad forward over B "
            f"points takes {cost['timings']['presample_forward'] * 1e3:.2f} ms, a training step over b points "
            f"{cost['timings']['training_step'] * 1e3:.2f} ms: {cost['ratio_measured']:.2f} of a step, where the "
            f"forward-sample cost model says {cost['ratio_cost_model']:.2f}.",
            "",
        ]
    overhead = _load(folder / "overhead.json")
    if overhead is not None:
        lines += [
            "### Overhead on the GPU",
            "",
            *_overhead(overhead, _command(parts.get("overhead", {}).get("command", "make gpu-check"))),
        ]
    long = _load(folder / "long_training.json")
    if long is not None:
        lines += _long_training(long, "Long training on the GPU", "cuda")
    return lines


def _long_training(long: dict[str, Any], title: str, accelerator: str) -> list[str]:
    """The long-training table and its goal, from ``benchmarks.long_training``'s JSON."""
    lines: list[str] = []
    s = long["settings"]
    lines += [
        f"### {title}",
        "",
        f"Reproduce: `python -m benchmarks.long_training --accelerator {accelerator} --epochs {s['epochs']} --seeds "
        f"{s['seeds']} --lrs {' '.join(f'{lr:g}' for lr in s['lrs'])}`. MNIST-1D, 4000 training signals, no "
        f"augmentation, 1D CNN width {s['width']}, SGD + momentum, batch {s['batch_size']}, cosine learning rate; "
        f"`ImportanceSamplingCallback` at presample {s['presample']}. `importance` gets the compute of "
        f"{s['epochs']} uniform epochs (an importance step charged B + 3b), `importance_clock` uniform's "
        f"training wall-clock. {_count(s['seeds'], 'seed')}; the runs after the learning-rate selection took "
        f"{_wall(long.get('wall_seconds'))}.",
        "",
        "| method | lr | final train loss | loss / uniform | test error (%) | error / uniform "
        "| importance steps (%) | tau at the end | steps | training seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, m in long["methods"].items():
        lines.append(
            f"| {method} | {m['lr']:g} | {m['final_train_loss']['mean']:.2e} "
            f"| {m['train_loss_ratio_to_uniform']['mean']:.2f} | {100 * m['final_test_error']['mean']:.1f} "
            f"| {m['test_error_ratio_to_uniform']['mean']:.2f} | {100 * m['importance_fraction']['mean']:.0f} "
            f"| {m['tau_final']['mean']:.2f} | {m['steps']['mean']:.0f} | {m['train_seconds']['mean']:.1f} |"
        )
    clock = long["methods"].get("importance_clock")
    verdict = ""
    if clock is not None:
        met = clock["train_loss_ratio_to_uniform"]["mean"] <= 0.5 and clock["test_error_ratio_to_uniform"]["mean"] <= 1
        verdict = f": **{_met(met)}**"
    lines += [
        "",
        "Goal (Katharopoulos & Fleuret): at most half of uniform's training loss at equal wall-clock "
        f"(`importance_clock`), with a test error no worse{verdict}.",
        "",
    ]
    return lines


def render(out: Path) -> str:
    """The whole results page (Markdown) from the JSON files in ``out``: sections for the JSON that exist."""
    lines = [HEADER]
    lines += _quick_sections(out)
    lines += _long_runs(out)
    lines += _long_sections(out)
    lines += _gpu(out)
    return "\n".join(lines).rstrip() + "\n"


def write_page(page: Path, text: str) -> None:
    """Write the results page (the whole file)."""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text)
    print(f"wrote {page}")
