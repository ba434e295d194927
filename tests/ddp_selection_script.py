"""Run by tests/test_ddp.py: 2-process fits with each selection rule; each rank dumps what it trained on.

python tests/ddp_selection_script.py OUT_DIR     # Trainer(devices=2, strategy="ddp"), Lightning spawns rank 1

Each fit: 64 blobs, a quarter held out for the irreducible-loss model, batches of 8, one epoch per rule. Rank ``r``
writes ``OUT_DIR/rank{r}.json`` with the irreducible table, and per rule the steps, the selection steps, every
step's incoming and trained indices, and a checksum of the model's weights.
"""

import json
import sys
from pathlib import Path

from lightning.pytorch import Callback, seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_per as lp
from lightning_per.selection.engine import OnlineSelection
from tests.helpers import TinyClassifier, blobs, small_trainer


class Record(Callback):
    def __init__(self) -> None:
        self.incoming: list[list[int]] = []
        self.trained: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.incoming.append(batch.index.tolist())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.trained.append(batch.index.tolist())


def fit(out: Path, rule: OnlineSelection, irreducible: lp.IrreducibleLoss) -> dict:
    seed_everything(0, verbose=False)
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, strategy="uniform", seed=0, holdout_fraction=0.25)
    first, last = Record(), Record()
    trainer = small_trainer(out, callbacks=[irreducible, first, rule, last], max_epochs=2, strategy="ddp", devices=2)
    model = TinyClassifier()
    trainer.fit(model, datamodule=dm)
    return {
        "rank": trainer.global_rank,
        "steps": rule._run_steps,
        "selected": rule.state_dict()["run_selected"],
        "incoming": first.incoming,
        "trained": last.trained,
        "checksum": float(sum(p.detach().double().sum() for p in model.parameters())),
    }


def main() -> None:
    out = Path(sys.argv[1])
    rules = {
        "topk": lp.TopKSelection(presample=3),
        "selective_backprop": lp.SelectiveBackprop(selectivity=1.0, presample=2, history=64),
        "importance": lp.ImportanceSamplingCallback(tau_th=1e-9, tau_every_n_steps=1),
    }
    results: dict = {}
    for name, rule in rules.items():
        irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=2)
        results[name] = fit(out / name, rule, irreducible)
        results["table"] = irreducible.table.tolist()
    (out / f"rank{results['topk']['rank']}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
    lp.release_process_group()  # exiting with the group alive can abort the process (exit code -6)
