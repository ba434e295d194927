"""Run by tests/test_ddp.py: 2-process continual fits (prioritized ER, then MER) that dump each rank's buffer.

python tests/ddp_replay_script.py OUT_DIR

Each fit is one pass over a 2-task stream of 80 samples whose first feature is a unique sample id, under
``Trainer(accelerator="cpu", devices=2, strategy="ddp")``, with the user's module (``ContinualClassifier``): ER as a
callback, MER as a wrapper. Rank ``r`` writes ``OUT_DIR/rank{r}.json`` with, per method, its buffer's capacity, size,
seen count and the ids it holds, a checksum of its weights, the rows of the accuracy matrix and the ER callback's
``state_key``; each fit saves ``OUT_DIR/<method>/last.ckpt`` (every rank's buffer inside) and builds a checkpoint on
rank 0 alone after 3 batches (``OUT_DIR/<method>/rank0_only.ckpt``): it must not hang.
"""

import json
import sys
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_per import release_process_group
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence
from lightning_per.examples import ContinualClassifier
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReplayBuffer
from tests.helpers import SaveOnRankZeroOnly

PER_TASK = 40
CAPACITY = 30


def tasks() -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(2):
        ids = torch.arange(t * PER_TASK, (t + 1) * PER_TASK, dtype=torch.float32)
        y = torch.arange(PER_TASK) % 2 + 2 * t
        x = torch.cat([ids.unsqueeze(1), torch.randn(PER_TASK, 3, generator=g) + y.unsqueeze(1)], dim=1)
        out.append(TensorDataset(x, y))
    return out


def fit(model: LightningModule, out: Path, name: str, extra: list[Callback], buffer_of: object) -> dict:
    dm = TaskSequence(tasks=tasks(), test_tasks=tasks(), batch_size=4)
    matrix = TaskAccuracyMatrix(inputs=[0, 2])
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=out / name,
        callbacks=[
            *extra,
            matrix,
            ModelCheckpoint(dirpath=out / name, filename="last"),
            SaveOnRankZeroOnly(out / name / "rank0_only.ckpt", batches=3),
        ],
    )
    trainer.fit(model, datamodule=dm)
    buffer: ReplayBuffer = buffer_of.buffer  # type: ignore[attr-defined]
    x, _, task = buffer.contents()
    return {
        "rank": trainer.global_rank,
        "world": trainer.world_size,
        "capacity": buffer.capacity,
        "size": len(buffer),
        "seen": buffer.seen,
        "ids": sorted(int(i) for i in x[:, 0].tolist()),
        "tasks": sorted(set(task.tolist())),
        "weights": float(sum(p.detach().double().sum() for p in model.parameters())),
        "rows": matrix.completed,
        "state_key": extra[0].state_key if extra else None,
    }


def module() -> ContinualClassifier:
    return ContinualClassifier(in_features=4, num_tasks=2, classes_per_task=2, optimizer="adam", lr=0.01)


def main() -> None:
    out = Path(sys.argv[1])
    seed_everything(0, verbose=False)
    replay = ExperienceReplay(PrioritizedReplayBuffer(CAPACITY), replay_batch_size=4)
    results = {"er": fit(module(), out, "er", [replay], replay)}
    mer = MER(
        module(),
        capacity=CAPACITY,
        replay_batch_size=3,
        batches_per_example=2,
        reptile_beta=0.5,
        variant="batch",
        lr=0.01,
    )
    results["mer"] = fit(mer, out, "mer", [], mer)
    (out / f"rank{results['er']['rank']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
    release_process_group()  # exiting with the group alive can abort the process (exit code -6)
