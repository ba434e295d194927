"""The main job behind ``make demo``: MNIST-1D with the plugin, next to the uniform baseline, then a summary.

Run: ``python -m lightning_per.examples.demo [--epochs N] [--configs NAME_OR_PATH ...] [--out JSON] [--config-dir]``,
from any directory. A config is a path to a YAML file or the name of one shipped with the package (``mnist1d``,
``mnist1d_uniform``, ``mnist1d_rank``, ``continual_er``, ...: the files in ``CONFIG_DIR``, which
``--config-dir`` prints, e.g. for ``lightning-per fit --config "$(python -m lightning_per.examples.demo
--config-dir)/mnist1d.yaml"``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_per.cli import main as cli_main
from lightning_per.cli import quiet_lightning_notices

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The YAML configs shipped with the package (package data: present in an installed package too)."""
DEFAULT_CONFIGS = ["mnist1d_uniform", "mnist1d"]


def resolve_config(name_or_path: str) -> Path:
    """The YAML file ``name_or_path`` names: an existing path, or a config shipped in ``CONFIG_DIR``.

    Raises:
        FileNotFoundError: neither exists; the message lists the shipped configs.

    Example:
        >>> resolve_config("mnist1d").name
        'mnist1d.yaml'
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path.stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FileNotFoundError(f"No config {name_or_path!r}: give a YAML path or one of the shipped configs: {names}.")


def run(config: str, extra: list[str]) -> dict[str, float]:
    """Fit one config through the CLI; return final validation accuracy, training loss, and the fit's seconds.

    ``cpu_seconds`` is the process's CPU time during the fit (all its threads): unlike ``seconds`` (wall-clock), it
    stays comparable between configs when other programs share the machine.
    """
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]  # the demo prints its own table
    cli = cli_main(["--config", config, *quiet, *extra], run=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    return {
        "val_acc": metrics.get("val/acc", float("nan")),
        "train_loss": _full_train_loss(cli.model, cli.datamodule),
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
    }


@torch.no_grad()
def _full_train_loss(model: Any, datamodule: Any) -> float:
    """Mean cross-entropy over the whole training set in eval mode.

    The logged training loss is over the drawn samples, which a prioritized sampler biases toward hard ones, so it
    cannot be compared across configs. NaN for a data module without one ``train_dataset`` (a continual sequence).
    """
    dataset = getattr(datamodule, "train_dataset", None)
    if dataset is None:
        return float("nan")
    model.eval()
    loader = DataLoader(dataset, batch_size=1000)
    total, count = 0.0, 0
    for x, y, *_ in loader:  # (x, y) or (x, y, task)
        total += float(F.cross_entropy(model(x.to(model.device)), y.to(model.device), reduction="sum"))
        count += len(y)
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train every config, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="config names or YAML paths")
    parser.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--config-dir", action="store_true", help="print the folder of the shipped configs and exit")
    args = parser.parse_args(argv)
    quiet_lightning_notices()
    if args.config_dir:
        print(CONFIG_DIR)
        return
    try:
        configs = [resolve_config(c) for c in args.configs]
    except FileNotFoundError as error:
        parser.error(str(error))
    extra = [f"--trainer.max_epochs={args.epochs}"] if args.epochs else []
    rows = {c.stem: run(str(c), extra) for c in configs}
    print("\nMNIST-1D, 4000 training samples, validation accuracy on 1000 held-out samples")
    print("(published baselines on 4000 training samples: CNN ~94%, MLP ~68%)\n")
    print(format_table(rows))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"argv": sys.argv[1:] if argv is None else argv, "rows": rows}, indent=2) + "\n")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """The demo's summary table: one line per config, from what ``run`` returned (or ``--out`` saved)."""
    lines = [f"{'config':<24}{'val acc':>10}{'train loss (all 4000)':>24}{'CPU s':>10}"]
    for name, r in rows.items():
        lines.append(f"{name:<24}{r['val_acc']:>10.2%}{r['train_loss']:>24.4f}{r['cpu_seconds']:>10.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
