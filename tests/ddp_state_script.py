"""Two gloo processes: callback state saved on one process alone, restored as Lightning does, collective errors.

python tests/ddp_state_script.py OUT_DIR   # MASTER_PORT set by the caller; writes OUT_DIR/rank{r}.json

LossTracker: rank 0 trained sample 0 (loss 1.0), rank 1 nothing (every step of its share skipped), and the
processes synchronised; then rank 0 trained sample 1 (loss 5.0) and built its state alone (no collective: rank 1
never joins). Every rank loads that (rank 0's) state; after the resume rank 0 trains sample 0 again (loss 3.0) and
the epoch-end merge gives the table the mean 2.0 for sample 0 and 5.0 for sample 1, as in an uninterrupted run.

ImportanceSamplingCallback: a state built between tau updates on rank 0 alone holds rank 0's own tau_step of the
pending step. A negative score on rank 1 only stops both ranks with an error (none is left waiting).

Then a 2-process fit with both callbacks (uniform strategy), a ``ModelCheckpoint`` every 2 steps and a callback
that builds and writes a checkpoint on rank 0 alone at step 3: it must finish (the caller runs this with a timeout).
"""

import json
import os
import sys
import types
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_per as lp


def units(rank: int, out: Path) -> dict:
    dist.init_process_group("gloo", rank=rank, world_size=2)
    trainer = types.SimpleNamespace(world_size=2, global_rank=rank)
    module = types.SimpleNamespace(device=torch.device("cpu"))
    before = lp.LossTracker()
    before._trainer, before._module = trainer, module
    if rank == 0:
        before._pending.append((torch.tensor([0]), torch.tensor([1.0]), None, (0, 0)))
    before._sync(trainer, module)  # a synchronisation point: rank 1 joins it without records
    if rank == 0:
        before._pending.append((torch.tensor([1]), torch.tensor([5.0]), None, (0, 1)))
    state = before.state_dict() if rank == 0 else None  # built on rank 0 alone
    shared = [state]
    dist.broadcast_object_list(shared, src=0)  # every rank loads rank 0's saved state
    after = lp.LossTracker()
    after._trainer, after._module = trainer, module
    after.load_state_dict(shared[0])
    if rank == 0:
        after._pending.append((torch.tensor([0]), torch.tensor([3.0]), None, (0, 2)))
    after._sync(trainer, module)
    table = lp.score_table.ScoreTable(2)
    table.update(*after._records[0][:2])
    result = {"saved": shared[0]["unmerged_index"].tolist(), "scores": table.scores.tolist()}

    def reduce(tensor, reduce_op="sum"):
        dist.all_reduce(tensor)
        return tensor

    trainer.strategy, trainer.global_step = types.SimpleNamespace(reduce=reduce), 0
    cb = lp.ImportanceSamplingCallback(score=lambda outputs, batch: outputs, a_tau=0.5)
    cb._trainer, cb._module = trainer, module
    cb.tau_switch.estimate.pending = [torch.tensor([1.0, 1.0, 2.0, 4.0]) if rank == 0 else torch.tensor([1.0, 3.0])]
    result["saved_tau"] = cb.state_dict()["switch"]["pending_taus"] if rank == 0 else None  # on rank 0 alone
    dist.barrier()
    cb.tau_switch.estimate.pending = [torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([-1.0, 2.0])]
    try:
        cb._synchronise(trainer, module)
        result["negative"] = "no error"
    except ValueError as error:
        result["negative"] = str(error)
    lp.release_process_group()
    return result


def work(rank: int, out: Path) -> None:
    (out / f"units{rank}.json").write_text(json.dumps(units(rank, out)))


def fit(out: Path) -> None:
    from lightning.pytorch import seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.helpers import SaveOnEveryProcess, SaveOnRankZeroOnly, TinyClassifier, blobs, small_trainer

    seed_everything(0, verbose=False)
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, strategy="uniform", seed=0)
    tracker = lp.LossTracker()
    importance = lp.ImportanceSamplingCallback(tau_every_n_steps=16)
    every = ModelCheckpoint(dirpath=out, filename="every-{step}", every_n_train_steps=2, save_top_k=-1)
    alone = SaveOnRankZeroOnly(out / "rank0_only.ckpt", batches=3)
    recipe = SaveOnEveryProcess(out / "recipe.ckpt", batches=3)
    trainer = small_trainer(
        out,
        callbacks=[tracker, importance, every, alone, recipe],
        max_epochs=1,
        strategy="ddp",
        devices=2,
        enable_checkpointing=True,
    )
    trainer.fit(TinyClassifier(), datamodule=dm)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"rank": trainer.global_rank}))
    lp.release_process_group()


if __name__ == "__main__":
    target = Path(sys.argv[1])
    if len(sys.argv) > 2 and sys.argv[2] == "fit":
        fit(target)
    else:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        mp.spawn(work, args=(target,), nprocs=2)
        for rank in (0, 1):  # the caller reads rank{r}.json
            (target / f"rank{rank}.json").write_text((target / f"units{rank}.json").read_text())
