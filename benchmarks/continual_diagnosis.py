"""Why prioritized ER ends below ER in Class-IL split digits: which items it replays, or how much they weigh?

Protocol: the continual benchmark's Class-IL split digits run (``benchmarks/continual.py``: the same module, sequence,
200 memories and 10 replays per incoming batch of 10, one pass, seeds ``0..n-1``), with six replay variants:

* ``er``: uniform ER (weights 1);
* ``per``: prioritized ER, ``alpha=0.6, beta=0.4``: draws ``p ∝ priority^alpha`` with replacement, weights
  ``(n p)^-beta`` divided by the largest possible weight, so every weight is at most 1;
* ``per_beta0``: the same draws, weights 1;
* ``per_alpha0``: uniform draws with replacement (weights 1): what drawing with replacement alone costs;
* ``er_scaled``: uniform ER with its replays' weights multiplied by ``per``'s mean replay weight in the same seed;
* ``per_mean1``: prioritized ER with its replays' weights divided by their mean in each batch (mean 1, same shape).

Recorded per variant: ACC, BWT, the mean diagonal, the final row of the accuracy matrix, the replays' mean weight (as
trained) and the share of replays drawn from the task being trained. Mean ± sample std over seeds. One torch thread.

    python -m benchmarks.continual_diagnosis --out bench_out/continual_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, seed_everything

from benchmarks.common import bench_trainer, environment, protocol, quiet
from benchmarks.continual import SETTINGS, ReplayStats, build, make_sequence
from lightning_per.continual import TaskAccuracyMatrix
from lightning_per.replay import ExperienceReplay, PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from lightning_per.replay.experience import REPLAYED

VARIANTS = ("er", "per", "per_beta0", "per_alpha0", "er_scaled", "per_mean1")
KEY = "split_digits/class_il"


class Reweight(ReplayStats):
    """Multiplies the replays' weights by ``scale``, or divides them by their mean (``mean_one``), then records them."""

    def __init__(self, scale: float = 1.0, mean_one: bool = False) -> None:
        super().__init__()
        self.scale, self.mean_one = scale, mean_one

    def on_train_batch_start(self, trainer: Any, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        replayed = batch.index == REPLAYED
        if bool(replayed.any()):
            w = batch.weight[replayed]
            batch.weight[replayed] = w / w.mean() if self.mean_one else w * self.scale
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


def run(variant: str, seed: int, scale: float = 1.0) -> dict[str, Any]:
    """One fit of ``variant`` over the sequence of ``seed``; ``scale`` is ``er_scaled``'s weight factor."""
    quiet()
    torch.set_num_threads(1)
    seed_everything(seed, verbose=False)
    dm, shape = make_sequence("split_digits", seed, quick=False)
    module, _ = build("finetune", shape, "class", seed)
    prioritized = variant.startswith("per")
    options = {**SETTINGS["per" if prioritized else "er"]}
    options.update({"per_beta0": {"beta": 0.0}, "per_alpha0": {"alpha": 0.0}}.get(variant, {}))
    memories, batch = SETTINGS["memories"], options.pop("replay_batch_size")
    if prioritized:
        buffer: ReplayBuffer = PrioritizedReplayBuffer(memories, options["alpha"], options["beta"], seed=seed)
    else:
        buffer = ReservoirBuffer(memories, seed=seed)
    replay = ExperienceReplay(buffer, replay_batch_size=batch)
    stats = Reweight(scale if variant == "er_scaled" else 1.0, mean_one=variant == "per_mean1")
    matrix = TaskAccuracyMatrix(inputs=[0, 2])
    bench_trainer("cpu", [replay, stats, matrix], max_epochs=1).fit(module, datamodule=dm)
    out = {"seed": seed, "acc": matrix.acc, "bwt": matrix.bwt, "diag": statistics.fmean(matrix.diagonal.tolist())}
    return {**out, **stats.summary(), "final_row": [round(v, 3) for v in matrix.matrix[-1].tolist()]}


def main(argv: list[str] | None = None) -> None:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="JSON path")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for seed in range(args.seeds):
        for variant in VARIANTS:  # `per` runs before `er_scaled`, which takes its mean replay weight
            runs[variant].append(run(variant, seed, runs["per"][-1]["replay_weight"] if runs["per"] else 1.0))
    results: dict[str, Any] = {}
    for variant, rs in runs.items():
        results[variant] = {"runs": rs}
        for key in ("acc", "bwt", "diag", "replay_weight", "replay_current_share"):
            values = [r[key] for r in rs]
            results[variant][key] = round(statistics.fmean(values), 4)
            results[variant][key + "_std"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0.0
        r = results[variant]
        print(f"{variant:11s} ACC {r['acc']:.3f} ± {r['acc_std']:.3f}  BWT {r['bwt']:+.3f}  diag {r['diag']:.3f}  "
              f"replay weight {r['replay_weight']:.3f}  current-task replays {r['replay_current_share']:.3f}  "
              f"final row (seed 0) {rs[0]['final_row']}", flush=True)  # fmt: skip
    env = {**environment(), "seconds_total": round(time.perf_counter() - start, 1), "seeds": list(range(args.seeds))}
    payload = {"scenario": KEY, "variants": results, "settings": SETTINGS, "env": env, "protocol": protocol(__doc__)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
