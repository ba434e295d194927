"""GPU check: every callback on CUDA in mixed precision, the cost model's ratio, and the overhead at a GPU's width.

Protocol. One command (``make gpu-check``) that writes everything under one folder (``--out``,
bench_out/gpu_check by default):

1. ``tests.txt``: the tests marked ``gpu`` (``tests/test_devices.py``: a DataModule with
   ``LossTracker`` under each strategy, each selection rule and reducible-loss selection, on ``cuda`` with
   ``precision="bf16-mixed"`` and ``"16-mixed"``, asserting the batch, its weights and the model on the device,
   finite positive weights, and no host sync in the tracker's per-step path, by CUDA's sync debug mode).
2. ``cost_ratio.json``: the price of a no-grad forward over a presample of ``B = presample * b`` points against a
   training step (forward, backward, Adam) over ``b`` points, for the MNIST-1D CNN at ``--width``, medians over
   ``--repeats`` timed calls after a warm-up (with ``torch.cuda.synchronize``). The forward-sample cost model of the
   benchmarks says ``B / (3b)``; a device that ``b`` points do not saturate makes the forward cheaper, which is where
   importance sampling's wall-clock claim (Katharopoulos & Fleuret, measured on GPUs) can hold.
3. ``overhead.json`` / ``.png``: ``benchmarks.overhead`` on the device with the CNN at ``--width`` (step-time ratios of
   the tracker and the importance callback to plain Lightning).
4. ``long_training.json`` / ``.png``: ``benchmarks.long_training`` on the device at a reduced budget (60 uniform
   epochs of compute, one seed, peak learning rate 0.1 or 0.2 chosen on validation): importance sampling against
   uniform at equal compute and at equal wall-clock, the regime where the paper's claim can hold.
5. ``summary.json``: the device, the versions, each part's status and seconds.

Without CUDA (or with ``--smoke``) the same command runs a CPU smoke version in seconds (the gpu tests in
``bf16-mixed`` on the CPU, tiny timings), so the script cannot rot; CI runs it.

    python -m benchmarks.gpu_check --out bench_out/gpu_check
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import environment, median, protocol, quiet, save_json
from benchmarks.common import parser as make_parser
from lightning_per.examples.models import ConvNet1D

SMOKE_OVERHEAD = ["--steps", "50", "--warmup", "10", "--train-size", "200", "--batch-size", "20"]
LONG = ["--epochs", "60", "--seeds", "1", "--lrs", "0.1", "0.2"]  # a reduced budget: minutes on one GPU
SMOKE_LONG = ["--epochs", "1", "--seeds", "1", "--lrs", "0.1", "--evals", "2", "--width", "8"]


def cost_ratio(device: str, width: int, batch_size: int, presample: int, repeats: int) -> dict[str, Any]:
    """Median seconds of a no-grad forward over ``B`` points and of a training step over ``b``, and their ratio."""
    torch.manual_seed(0)
    model = ConvNet1D(40, width, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    big = torch.randn(presample * batch_size, 40, device=device)
    x, y = big[:batch_size], torch.randint(10, (batch_size,), device=device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model(big)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    timings: dict[str, float] = {}
    for name, fn in (("presample_forward", forward), ("training_step", step)):
        for _ in range(max(3, repeats // 10)):  # warm-up (kernels, allocator)
            fn()
        sync()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            seconds.append(time.perf_counter() - start)
        timings[name] = median(seconds)
    b, big_b = batch_size, presample * batch_size
    return {
        "device": device,
        "width": width,
        "b": b,
        "B": big_b,
        "timings": timings,
        "ratio_measured": timings["presample_forward"] / timings["training_step"],
        "ratio_cost_model": big_b / (3 * b),
        "importance_step_cost_in_uniform_steps": 1 + timings["presample_forward"] / timings["training_step"],
    }


def run_tests(out: Path, extra: list[str]) -> dict[str, Any]:
    """The ``gpu``-marked tests in a fresh process; their report in ``tests.txt``."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    done = _run([*cmd, *extra, "tests/test_devices.py"], out / "tests.txt")
    lines = [line for line in done["output"].splitlines() if line.strip()]
    return {"returncode": done["returncode"], "summary": lines[-1] if lines else "", "command": done["command"]}


def run_benchmark(out: Path, name: str, flags: list[str], in_process: bool = False) -> dict[str, Any]:
    """``benchmarks.<name>`` with ``flags`` in a fresh process, writing ``<name>.json`` and ``.png`` to ``out``.

    ``in_process`` (the smoke version) calls its ``main`` here instead: seconds faster, a failure still recorded.
    """
    argv = [*flags, "--out", str(out / f"{name}.json")]
    if in_process:
        try:
            importlib.import_module(f"benchmarks.{name}").main(argv)
            done = {"returncode": 0, "command": f"benchmarks.{name}.main({argv})"}
        except Exception as error:  # recorded like a failed process
            done = {"returncode": 1, "command": f"benchmarks.{name}.main({argv})", "output": repr(error)}
            print(f"{name} failed: {error!r}", flush=True)
    else:
        done = _run([sys.executable, "-m", f"benchmarks.{name}", *argv])
    result = {"returncode": done["returncode"], "command": done["command"]}
    if done["returncode"] == 0:
        data = json.loads((out / f"{name}.json").read_text())
        result["ratio"] = data.get("ratio") or {m: r["train_loss_ratio_to_uniform"] for m, r in data["methods"].items()}
    return result


def _run(cmd: list[str], log: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` from the repository's root; its output goes to ``log`` (else to ``logs.txt`` beside it)."""
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    output = done.stdout + done.stderr
    if log is not None:
        log.write_text(output)
    else:
        print(output[-4000:], flush=True)
    return {"returncode": done.returncode, "command": " ".join(cmd), "output": output}


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_out/gpu_check"))
    parser.add_argument("--smoke", action="store_true", help="the CPU smoke version (also without CUDA)")
    parser.add_argument("--width", type=int, default=256, help="CNN channels for the cost ratio and the overhead")
    parser.add_argument("--tests-matching", default=None, help="run only the gpu tests matching this `-k` expression")
    args = parser.parse_args(argv)
    quiet()
    smoke = args.smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    width = 8 if smoke else args.width
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"device": device, "smoke": smoke, "parts": {}}
    parts = {
        "tests": lambda: run_tests(out, ["-k", args.tests_matching] if args.tests_matching else []),
        "cost_ratio": lambda: cost_ratio(device, width, 100, 3, 20 if smoke else 200),
        "overhead": lambda: run_benchmark(
            out,
            "overhead",
            ["--accelerator", device, "--width", str(width), *(SMOKE_OVERHEAD if smoke else [])],
            in_process=smoke,
        ),
        "long_training": lambda: run_benchmark(
            out, "long_training", ["--accelerator", device, *(SMOKE_LONG if smoke else LONG)], in_process=smoke
        ),
    }
    for name, part in parts.items():
        start = time.perf_counter()
        result = part()
        result["seconds"] = time.perf_counter() - start
        summary["parts"][name] = result
        print(f"{name}: {json.dumps(result)[:300]}", flush=True)
    save_json(out / "cost_ratio.json", {**summary["parts"]["cost_ratio"], "protocol": protocol(__doc__)})
    failed = [name for name, part in summary["parts"].items() if part.get("returncode", 0) != 0]
    summary["failed"] = failed
    save_json(out / "summary.json", {**summary, "env": environment(), "protocol": protocol(__doc__)})
    if failed:
        raise SystemExit(f"gpu check: {', '.join(failed)} failed; see {out}/")


if __name__ == "__main__":
    main()
