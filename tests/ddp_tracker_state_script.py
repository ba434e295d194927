"""Two gloo processes: LossTracker state saved mid-epoch and restored, as Lightning does under DDP.

python tests/ddp_tracker_state_script.py OUT_DIR   # MASTER_PORT set by the caller; writes OUT_DIR/result.json

Before the checkpoint, rank 0 trained sample 0 (loss 1.0) and rank 1 nothing (every step of its share skipped),
so the save's gather must not wait for records rank 1 lacks. Every rank loads the same (rank 0's) state; after
the resume rank 0 trains sample 0 again (loss 3.0) and the epoch-end merge gives the table its mean, 2.0, as in
an uninterrupted run.
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
    if rank == 0:
        saved = state["unmerged_index"].tolist()
        (out / "result.json").write_text(json.dumps({"saved": saved, "score0": float(table.scores[0])}))
    lp.release_process_group()


if __name__ == "__main__":
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(work, args=(Path(sys.argv[1]),), nprocs=2)
