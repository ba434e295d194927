"""Run by tests/test_ddp.py: a 2-process fit that dumps, per rank, what it trained on and its final state.

python tests/ddp_core_script.py OUT_DIR ddp      # Trainer(devices=2, strategy="ddp"), Lightning spawns rank 1
python tests/ddp_core_script.py OUT_DIR nodes    # one process per simulated node (env set by the caller)
"""

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from lightning.pytorch import Callback, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_per as lp
from tests.helpers import TinyClassifier, blobs, small_trainer


class RecordPlans(Callback):
    """At each epoch start, the whole world's draw as one process would make it from this rank's table."""

    def __init__(self) -> None:
        self.plans: dict[int, list[int]] = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        world = trainer.world_size
        total = len(dm.sampler) * world
        # with replacement the world makes `total` i.i.d. draws (a pass without replacement repeats its start)
        strategy = replace(dm.strategy, num_samples=total) if dm.strategy.with_replacement else dm.strategy
        single = lp.sampler.PrioritizedSampler(
            dm.train_dataset, dm.scores, strategy, num_replicas=1, seed=dm.sampler.seed, max_epochs=trainer.max_epochs
        )
        single.set_epoch(trainer.current_epoch)
        draw = [i if isinstance(i, int) else i[0] for i in single]
        self.plans[trainer.current_epoch] = (draw * 2)[:total]


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    seed_everything(0, verbose=False)
    dm = lp.PrioritizedDataModule(blobs(61), batch_size=8, strategy="proportional", seed=3)
    model = TinyClassifier()
    plans = RecordPlans()
    kwargs = dict(devices=2) if mode == "ddp" else dict(devices=1, num_nodes=2)
    trainer = small_trainer(out, callbacks=[lp.LossTracker(ema=0.3), plans], max_epochs=3, strategy="ddp", **kwargs)
    trainer.fit(model, datamodule=dm)
    rank = trainer.global_rank
    state = {
        "rank": rank,
        "world": trainer.world_size,
        "trained": {str(k): v for k, v in model.epoch_index.items()},
        "plans": {str(k): v for k, v in plans.plans.items()},
        "scores": torch.nan_to_num(dm.scores.scores, nan=-1.0).tolist(),
        "sampler": dm.sampler.state_dict(),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    main()
    lp.release_process_group()  # exiting with the group alive can abort the process (exit code -6)
