"""The results page's other sections: continual learning, replay buffers and the GPU check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.long_training import STUDY
from benchmarks.results_common import command, env_line, figure, load, met
from benchmarks.results_quick import overhead as overhead_section

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
    replays = mer["replay_batch_size"]  # replays per inner batch: the paper's k - 1
    sweep = s.get("sweep_memories", [])
    lines = [
        "### Continual learning",
        "",
        "Reproduce: `python -m benchmarks.continual --out bench_out/continual.json`. One process, one thread; "
        f"{s['model']}; one pass, incoming batches of {s['batch_size']}, {s['memories']} "
        f"memories, {s['er']['replay_batch_size']} replays per batch; MER `variant={mer['variant']}`, "
        f"`replay_batch_size={replays}` (the paper's `k = {replays + 1}`), `s={mer['batches_per_example']}`, "
        f"`step_batch_size={mer['step_batch_size']}`, `reptile_beta={mer['reptile_beta']}`, "
        f"`reptile_gamma={mer['reptile_gamma']}`, {data['mer_steps_per_batch']} inner steps "
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
    verdicts = data.get("goals_met_at_1e6") or {}
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
        goal += f" ({met(verdicts[op])})" if op in verdicts else ""
        lines.append(f"| `{op.removesuffix('_us')}` | " + " | ".join(cells) + f" | {goal} |")
    lines.append("")
    return lines


def gpu_section(out: Path) -> list[str]:
    folder = out / "gpu_check"
    summary = load(folder / "summary.json")
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
        *env_line(summary.get("env")),
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
    overhead = load(folder / "overhead.json")
    if overhead is not None:
        lines += [
            "### Overhead on the GPU",
            "",
            *overhead_section(overhead, command(parts.get("overhead", {}).get("command", "make gpu-check"))),
            *figure(out, "gpu_check/overhead", "overhead on the GPU"),
        ]
    long = load(folder / "long_training.json")
    if long is not None and long.get("protocol_version") == 2:
        lines += STUDY.section(long, folder / "long_training.json")
    elif long is not None:
        lines += [
            "### Long training on the GPU",
            "",
            "Withdrawn: this run (`bench_out/gpu_check/long_training.json`) predates the protocol of issue 21; its "
            "learning rates were chosen on a reported seed and both sat at the top of their grid (0.2 of 0.1, 0.2). "
            "`make gpu-check` re-runs it under the protocol.",
            "",
        ]
    return lines


def other_sections(out: Path) -> list[str]:
    """Continual learning and the replay buffers (with their variant), each with its machine and figure."""
    lines: list[str] = []
    for stem, render, title in (
        ("continual", _continual, "continual learning"),
        ("replay_buffers", _replay_buffers, "replay buffers"),
        ("replay_buffers_device_cpu", _replay_buffers, "replay buffers, device variant"),
    ):
        data = load(out / f"{stem}.json")
        if data is not None:
            section = render(data)
            if stem.endswith("_device_cpu"):
                section[0] = "#### Replay buffers, measured on the GPU machine's host CPU"
                section[2] = section[2].replace("--out bench_out/replay_buffers.json", "--calls 1000")
            lines += [*section, *env_line(data.get("env")), *figure(out, stem, title)]
    return lines
