"""Two gloo processes: callback state saved and restored as Lightning does under DDP, and collective errors.

python tests/ddp_state_script.py OUT_DIR   # MASTER_PORT set by the caller; writes OUT_DIR/result.json

LossTracker: before the checkpoint, rank 0 trained sample 0 (loss 1.0) and rank 1 nothing (every step of its
share skipped), so the save's gather must not wait for records rank 1 lacks. Every rank loads the same (rank 0's)
state; after the resume rank 0 trains sample 0 again (loss 3.0) and the epoch-end merge gives the table its mean,
2.0, as in an uninterrupted run.

ImportanceSamplingCallback: a step's tau_step saved between updates is the average over the ranks; restored, the
next update gives it back exactly. A negative score on rank 1 only stops both ranks with an error (none is left
waiting in the all-reduce).
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


def work(rank: int, out: Path) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2)
    trainer = types.SimpleNamespace(world_size=2, global_rank=rank)
    module = types.SimpleNamespace(device=torch.device("cpu"))
    before = lp.LossTracker()
    before._trainer, before._module = trainer, module
    if rank == 0:
        before._flushed.append((torch.tensor([0]), torch.tensor([1.0]), None))
    state = before.state_dict()  # a collective: rank 1 joins it without records
    shared = [None]
    dist.broadcast_object_list(shared if rank else [state], src=0)  # every rank loads rank 0's saved state
    after = lp.LossTracker()
    after._trainer, after._module = trainer, module
    after.load_state_dict(shared[0] if rank else state)
    if rank == 0:
        after._flushed.append((torch.tensor([0]), torch.tensor([3.0]), None))
    index, values, _ = after._merge(trainer, module)
    table = lp.ScoreTable(2)
    table.update(index, values)
    result = {"saved": state["unmerged_index"].tolist(), "score0": float(table.scores[0])}

    def reduce(tensor, reduce_op="sum"):
        dist.all_reduce(tensor)
        return tensor

    trainer.strategy, trainer.global_step = types.SimpleNamespace(reduce=reduce), 0
    cb = lp.ImportanceSamplingCallback(score="custom", score_fn=lambda outputs, batch: outputs, a_tau=0.5)
    cb._trainer, cb._module = trainer, module
    cb._pending = [torch.tensor([1.0, 1.0, 2.0, 4.0]) if rank == 0 else torch.tensor([1.0, 3.0])]
    saved = cb.state_dict()["pending_taus"]
    resumed = lp.ImportanceSamplingCallback(score="custom", score_fn=lambda outputs, batch: outputs, a_tau=0.5)
    resumed._trainer, resumed._module = trainer, module
    resumed.load_state_dict({"pending_taus": saved})  # every rank loads rank 0's state
    resumed._update_tau(trainer, module)
    cb._update_tau(trainer, module)  # the run that took the checkpoint goes on unchanged
    result.update(saved_tau=saved, resumed_tau=resumed.tau, continued_tau=cb.tau)
    cb._pending = [torch.tensor([1.0, 2.0]) if rank == 0 else torch.tensor([-1.0, 2.0])]
    try:
        cb._update_tau(trainer, module)
        result["negative"] = "no error"
    except ValueError as error:
        result["negative"] = str(error)
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    lp.release_process_group()


if __name__ == "__main__":
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(work, args=(Path(sys.argv[1]),), nprocs=2)
