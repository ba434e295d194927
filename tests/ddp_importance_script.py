"""Run by tests/test_ddp.py: a 2-process fit with ImportanceSamplingCallback; each rank dumps its tau trace.

python tests/ddp_importance_script.py OUT_DIR     # Trainer(devices=2, strategy="ddp"), Lightning spawns rank 1

Rank 0 scores its points with heavy-tailed values, rank 1 with a constant: on its own, rank 0 would switch
importance sampling on and rank 1 never would. The callback averages tau over the ranks, so both must agree.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_per as lp
from lightning_per import functional as PF
from tests.helpers import TinyClassifier, blobs, small_trainer

HEAVY = (3.0 * torch.randn(128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)).exp().float()
LOCAL_TAU: list[float] = []


def rank_dependent_score(outputs, batch):
    """Heavy-tailed scores on rank 0, constant scores on rank 1; records this rank's own tau of each call."""
    scores = HEAVY[batch.index.cpu()] if dist.get_rank() == 0 else torch.ones(batch.index.numel())
    LOCAL_TAU.append(float(PF.tau(scores.double())))
    return scores


class Trace(Callback):
    def __init__(self, cb: lp.ImportanceSamplingCallback) -> None:
        self.cb = cb
        self.steps: list[int] = []
        self.tau: list[float] = []
        self.importance: list[bool] = []
        self.trained: list[list[int]] = []
        self.pending: list[list[float | None]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0:  # a checkpoint between tau updates (one pending step): what it saves, on each rank
            self.pending.append(self.cb.state_dict()["switch"]["pending_taus"])
        self.steps.append(trainer.global_step)
        self.tau.append(self.cb.tau)
        self.importance.append(self.cb.last_step_was_importance)
        self.trained.append(batch.index.tolist())


def main() -> None:
    out = Path(sys.argv[1])
    seed_everything(0, verbose=False)
    dm = lp.PrioritizedDataModule(blobs(128), batch_size=16, strategy="uniform", seed=3)
    cb = lp.ImportanceSamplingCallback(
        presample=3, tau_th=1.5, tau_every_n_steps=3, score=rank_dependent_score
    )  # 4 steps per epoch: tau updates after steps 3, 4 (the epoch end), 7, 8, ...
    trace = Trace(cb)
    trainer = small_trainer(out, callbacks=[cb, trace], max_epochs=5, strategy="ddp", devices=2)
    trainer.fit(TinyClassifier(), datamodule=dm)
    state = {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "steps": trace.steps,
        "tau": trace.tau,
        "importance": trace.importance,
        "trained": trace.trained,
        "pending": trace.pending,
        "local_tau": LOCAL_TAU,
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    main()
    lp.release_process_group()  # exiting with the group alive can abort the process (exit code -6)
