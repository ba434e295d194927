"""Run by tests/test_selection_sources.py: 2 processes select from their shares of a stream; a stopped run resumes.

python tests/ddp_stream_script.py OUT_DIR

Each process reads every second sample of an ``IterableDataset`` through torchdata's ``StatefulDataLoader`` (whose
position Lightning saves in checkpoints) in large batches of 32, and ``SelectiveBackprop`` keeps its points. Three fits:
an uninterrupted one (2 epochs); one stopped after 4 steps with a checkpoint; one resumed from it. Rank ``r`` writes
the ids each step trained on in the three fits to ``OUT_DIR/rank{r}.json``.
"""

import json
import sys
from pathlib import Path

from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torchdata.stateful_dataloader import StatefulDataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning_per as lp
from tests.helpers import Stream, StreamClassifier, small_trainer


class Trained(Callback):
    def __init__(self) -> None:
        self.ids: list[list[int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.append(batch[2].tolist())


def fit(out: Path, name: str, ckpt_path: Path | None = None, **limits) -> tuple[list[list[int]], int]:
    seed_everything(0, verbose=False)
    trained = Trained()
    callbacks = [lp.SelectiveBackprop(presample=4, seed=1), trained]
    if name == "stopped":
        callbacks.append(ModelCheckpoint(dirpath=out / name, filename="stop", save_last=False, every_n_train_steps=4))
    trainer = small_trainer(
        out / name, callbacks=callbacks, strategy="ddp", devices=2, enable_checkpointing=name == "stopped", **limits
    )
    loader = StatefulDataLoader(Stream(256), batch_size=32)
    trainer.fit(StreamClassifier(), train_dataloaders=loader, ckpt_path=ckpt_path)
    return trained.ids, trainer.global_rank


def main() -> None:
    out = Path(sys.argv[1])
    uninterrupted, rank = fit(out, "uninterrupted", max_epochs=2)
    before, _ = fit(out, "stopped", max_epochs=2, max_steps=4)
    resumed, _ = fit(out, "resumed", ckpt_path=out / "stopped" / "stop.ckpt", max_epochs=2)
    result = {"uninterrupted": uninterrupted, "resumed_before": before, "resumed": resumed}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
    lp.release_process_group()  # exiting with the group alive can abort the process (exit code -6)
