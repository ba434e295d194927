"""What every benchmark shares: the environment record, JSON output, and quiet Lightning runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import torch

__all__ = ["bench_trainer", "environment", "median", "parser", "quiet", "save_figure", "save_json", "spread"]


def environment() -> dict[str, Any]:
    """The machine and library versions a figure was measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def save_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with the environment added) to ``path``, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**payload, "env": environment()}, indent=1) + "\n")
    print(f"wrote {path}")


def protocol(doc: str | None) -> str:
    """A script's protocol for its JSON: the whole docstring after the title, less the command lines."""
    paragraphs = (doc or "").split("\n\n")[1:]
    kept = [p for p in paragraphs if not p.lstrip().startswith("python -m")]
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in kept).strip()


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence."""
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a non-empty sequence."""
    return {
        "mean": float(statistics.fmean(values)),
        "std": float(statistics.stdev(values)) if len(values) > 1 else 0.0,
        "min": float(min(values)),
        "max": float(max(values)),
    }


def quiet() -> None:
    """Silence Lightning's banners and the warnings small CPU runs trigger (few workers, few batches)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*number of training batches.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring (its protocol)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, save as PNG and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def bench_trainer(accelerator: str, callbacks: list[Any], **limits: Any) -> Any:
    """A single-device Trainer with no validation, logger, checkpoints, progress bar or summary."""
    from lightning.pytorch import Trainer

    return Trainer(
        accelerator=accelerator,
        devices=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **limits,
    )


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch CPU threads, then give a caller in the same process (the tests) its own back."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def results_payload(args: argparse.Namespace, doc: str | None, wall: float, **results: Any) -> dict[str, Any]:
    """A benchmark's JSON: its results, then its settings (``args``), the wall time and the protocol (``doc``)."""
    settings = {**vars(args), "out": str(args.out)}
    return {**results, "settings": settings, "wall_seconds": wall, "protocol": protocol(doc)}
