"""The results page's quick benchmarks (``make bench``) and the variants run from their own commands.

These predate the protocol of issue 21: one learning rate for every method (time to quality, gradient variance) or
chosen on seed 0 of the reported seeds (label noise); the README quotes none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.results_common import env_line, figure, fmt, load, pm

OVERHEAD = {  # JSON stem: (title, command)
    "overhead": ("Overhead", "python -m benchmarks.overhead"),
    "overhead_train16000": ("Overhead, 16,000 training signals", "python -m benchmarks.overhead --train-size 16000"),
    "overhead_width128": ("Overhead, CNN width 128", "python -m benchmarks.overhead --width 128 --steps 1040"),
    "overhead_engine": ("The selection engine's own cost", "python -m benchmarks.overhead --engine"),
}
TIME_TO_QUALITY = {
    "time_to_quality": ("Time to quality", "python -m benchmarks.time_to_quality --budget-s 25 --seeds 3"),
    "time_to_quality_prune6": (
        "Time to quality, prune over 6 seeds",
        "python -m benchmarks.time_to_quality --budget-s 25 --seeds 6 --methods prune",
    ),
    "time_to_quality_free_scoring": (
        "Equal steps (diagnostic: an importance step charged like a uniform one)",
        "python -m benchmarks.time_to_quality --budget-s 25 --seeds 3 --methods importance --free-scoring",
    ),
    "time_to_quality_free_scoring_momentum0": (
        "Equal steps without momentum (diagnostic)",
        "python -m benchmarks.time_to_quality --budget-s 25 --seeds 3 --methods importance --free-scoring "
        "--momentum 0 --lr 0.5",
    ),
}
LABEL_NOISE = {
    "label_noise": ("Label noise", "python -m benchmarks.label_noise --seeds 3"),
    "label_noise_uniform30": ("Label noise, uniform over 30 epochs", "python -m benchmarks.label_noise --seeds 3 "
                              "--epochs 30 --methods uniform"),
}  # fmt: skip


def overhead(data: dict[str, Any], command: str) -> list[str]:
    """The step-time ratios of the tracker and the importance callback to plain Lightning."""
    r, ms, s = data["ratio"], data["step_ms"], data["settings"]
    blocks = data.get("ratio_epoch_blocks", {})

    def split(setup: str) -> str:
        if "step_body_ms" not in data:
            return ""
        return f"{data['step_body_ms'][setup]:.2f} / {data['between_steps_ms'][setup]:.2f}"

    def row(name: str, key: str, target: str) -> str:
        block = fmt(blocks[key], 3) if key in blocks else ""
        return f"| {name} | {fmt(r[key], 3)} | {block} | {target} | {split(key)} |"

    return [
        f"Reproduce: `{command}`. MNIST-1D CNN width {s['width']}, batch {s['batch_size']}, {s['train_size']} "
        f"training signals, {s['steps']} steps of each set-up run in lock step; plain Lightning step "
        f"{ms['plain']:.2f} ms. Ratios: the median of paired step-time ratios (the targets' measure) and, where "
        f"recorded, the median over {data['blocks']} one-epoch blocks of summed step times (epoch ends included).",
        "",
        "| set-up | step time / plain Lightning | epoch blocks / plain | target | step body / between steps (ms) |",
        "|---|---|---|---|---|",
        f"| plain Lightning | 1 | 1 | | {split('plain')} |",
        row("`PrioritizedDataModule` + `LossTracker`", "tracker", "<= 1.02"),
        row("`ImportanceSamplingCallback`, uniform phase", "importance_uniform_phase", "<= 1.03"),
        row("`ImportanceSamplingCallback`, importance phase", "importance_active",
            f"<= (B+3b)/(3b) = {r['importance_active_theory']:.2f}"),
        "",
    ]  # fmt: skip


def engine_cost(data: dict[str, Any], command: str) -> list[str]:
    """An importance step's cost with a negligible forward, per presample source, against a plain step."""
    r, ms, s = data["ratio"], data["step_ms"], data["settings"]
    rows = [f"| `{k}` | {fmt(r[k], 3)} | {ms[k]:.2f} | <= 1.25 |" for k in ("device", "large_batch", "indexed")]
    return [
        f"Reproduce: `{command}`. One linear layer (a negligible forward), batch b = {s['batch_size']}, presample "
        f"{s['presample']}, {s['steps']} steps of each set-up in lock step, timed in the step thread's CPU seconds; "
        f"a plain Lightning step took {ms['plain']:.2f} ms. What an importance step adds is the engine's own work: "
        "making the presample, one scoring call of `training_step`, the score, the draw and the replacement.",
        "",
        "| presample source | step time / plain step | ms | goal |",
        "|---|---|---|---|",
        *rows,
        "",
    ]


def _time_to_quality(data: dict[str, Any], title: str, command: str) -> list[str]:
    s = data["settings"]
    lines = [
        f"#### {title}",
        "",
        f"Reproduce: `{command}`. MNIST-1D, 4000 training signals with augmentation, SGD + momentum "
        f"{s.get('momentum', 0.9):g}, one learning rate ({s['lr']:g}) for every method, cosine schedule; equal compute "
        f"(the cost of {s.get('max_epochs', '?')} uniform epochs); mean ± std over {s['seeds']} seeds.",
        "",
        "| method | final train loss | loss / uniform | final test acc (%) | compute to uniform's final acc / "
        "uniform's | seconds to it | training seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, m in data["methods"].items():
        lines.append(
            f"| {method} | {pm(m['final_train_loss'])} | {pm(m['train_loss_ratio_to_uniform'], 2)} "
            f"| {pm(m['final_test_acc'], 1, 100)} | {pm(m.get('cost_to_uniform_acc_ratio'), 2)} "
            f"| {pm(m.get('seconds_to_uniform_acc'), 1)} | {pm(m['train_seconds'], 1)} |"
        )
    return [*lines, ""]


def _label_noise(data: dict[str, Any], title: str, command: str) -> list[str]:
    s = data["settings"]
    lines = [
        f"#### {title}",
        "",
        f"Reproduce: `{command}`. MNIST-1D, {s['train_size']} training signals, {s['noise']:.0%} of training and "
        f"validation labels flipped, clean test labels, {s['epochs']} epochs of SGD + momentum under a cosine "
        "learning-rate schedule (epoch-based), learning rate per method on the noisy validation split with seed 0 "
        f"(one of the reported seeds); mean ± std over {s['seeds']} seeds; early-stopped: at the epoch of the best "
        "noisy validation accuracy.",
        "",
        "| method | lr | final clean test acc (%) | early-stopped (%) | final − uniform's (points) "
        "| draws on mislabelled samples | memorised (%) | compute / uniform's |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, m in data["methods"].items():
        lines.append(
            f"| {method} | {m['lr']:g} | {pm(m['final_test_acc'], 1, 100)} "
            f"| {pm(m['early_stopped_test_acc'], 1, 100)} | {pm(m['final_test_acc_diff_points'], 1)} "
            f"| {pm(m['noisy_draw_share'], 2)} | {pm(m['final_memorised'], 1, 100)} | {pm(m['compute_ratio'], 2)} |"
        )
    return [*lines, ""]


def _gradient_variance(data: dict[str, Any]) -> list[str]:
    s = data["settings"]
    lines = [
        "### Gradient variance",
        "",
        f"Reproduce: `python -m benchmarks.gradient_variance`. The uniform time-to-quality set-up with the compute "
        f"of {s['epochs']} uniform epochs, paused at {s['probes']} points of the run; exact per-sample gradients of "
        f"{s['presamples']} presamples of B = {s['presample'] * s['batch_size']} points per point; mean ± std over "
        f"{s['seeds']} seeds. Reduction = total variance of a uniform step of b = {s['batch_size']} / that of an "
        "importance step drawing by the score; an importance step costs 2 uniform steps.",
        "",
        "| progress | lr | noise share of a uniform step | reduction, bound (`ce`) | reduction, loss "
        "| reduction, true norms (optimal) | tau (bound) | Spearman, bound vs true norm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in data["summary"]:
        lines.append(
            f"| {p['progress']:.2f} | {p['lr']:.3f} | {pm(p['noise_share'], 2)} | {pm(p['reduction_ce'], 1)} "
            f"| {pm(p['reduction_loss'], 1)} | {pm(p['reduction_optimal'], 1)} | {pm(p['tau_ce'], 2)} "
            f"| {pm(p['spearman_ce'], 2)} |"
        )
    return [*lines, ""]


def _sampler_scale(data: dict[str, Any]) -> list[str]:
    lines = [
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
            f"| {n} | {fmt(sec['lightning_per'])} s | {fmt(sec['randperm'])} s | {multi} "
            f"| {fmt(row['ratio_to_randperm'])} | {fmt(row['bytes_per_sample'], 1)} |"
        )
    return [*lines, "", "Targets: <= 2x randperm at N = 10^7; N = 10^8 works with <= 16 bytes per sample.", ""]


def _select_defaults(out: Path) -> list[str]:
    rounds = sorted((out / "select_defaults").glob("round*.json"), key=lambda p: int(p.stem[5:] or 0))
    if not rounds:
        return []
    lines = [
        "### Choice of defaults",
        "",
        "Reproduce: `python -m benchmarks.select_defaults --candidates ...` (the candidates of each round are in its "
        "JSON). The time-to-quality set-up on the validation split with seeds the benchmark does not use; the test "
        "split is never evaluated; uniform runs alongside in every round.",
        "",
        "| round | candidate | val acc (%) | final train loss | loss / uniform's |",
        "|---|---|---|---|---|",
    ]
    for path in rounds:
        data = json.loads(path.read_text())
        uniform = data["candidates"]["uniform"]["train_loss"]["mean"]
        seeds = len(data["settings"]["seeds"])
        for name, c in data["candidates"].items():
            lines.append(
                f"| {path.stem[5:]} ({seeds} seeds) | `{name}` | {pm(c['val_acc'], 1, 100)} "
                f"| {pm(c['train_loss'])} | {c['train_loss']['mean'] / uniform:.2f} |"
            )
    return [*lines, ""]


def quick_sections(out: Path) -> list[str]:
    """Every quick benchmark and variant whose JSON is in ``out``, each with its command and figure."""
    lines: list[str] = []
    env: dict[str, Any] | None = None
    for stem, (title, command) in OVERHEAD.items():
        data = load(out / f"{stem}.json")
        if data is not None:
            env = env or data["env"]
            shown = engine_cost(data, command) if data["settings"].get("engine") else overhead(data, command)
            lines += [f"### {title}", "", *shown, *figure(out, stem, title)]
    data = load(out / "sampler_scale.json")
    if data is not None:
        lines += [*_sampler_scale(data), *figure(out, "sampler_scale", "sampler scale")]
    for group, render, heading in ((TIME_TO_QUALITY, _time_to_quality, "### Time to quality"),
                                   (LABEL_NOISE, _label_noise, "### Label noise")):  # fmt: skip
        found = [(stem, t, c, load(out / f"{stem}.json")) for stem, (t, c) in group.items()]
        found = [f for f in found if f[3] is not None]
        if found:
            lines += [heading, ""]
        for stem, title, command, data in found:
            assert data is not None
            lines += [*render(data, title, command), *figure(out, stem, title)]
    data = load(out / "gradient_variance.json")
    if data is not None:
        lines += [*_gradient_variance(data), *figure(out, "gradient_variance", "gradient variance")]
    lines += _select_defaults(out)
    if not lines:
        return []
    return [
        "## Quick benchmarks (`make bench`)",
        "",
        "`make bench` re-runs overhead, sampler scale, time to quality, gradient variance and label noise (about 20 "
        "minutes on 2 CPU cores); the variants and the choice-of-defaults rounds come from their own commands. These "
        "predate the protocol above (one learning rate for every method, or one chosen on seed 0 of the reported "
        "seeds): the README quotes none of them.",
        "",
        *env_line(env),
        *lines,
    ]
