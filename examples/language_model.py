"""Per-sequence and per-token selection for your own causal language model, on noisy text.

What it shows: a byte-level causal LM (your LightningModule: its ``training_step`` makes the two-line change,
per-token losses ``(n, T)`` and ``weighted_mean(losses, batch, mask=...)``) trained on the offline text task (the
Python standard library's source, split by file), with half of the training sequences replaced by random bytes. Three
runs at the same number of steps:

- ``uniform``: every sequence equally often;
- ``prune``: ``LossTracker`` scores each sequence by its mean loss over its real tokens, and the sampler drops most of
  the well-learnt ones each epoch (InfoBatch), so an epoch is shorter;
- ``rho-1``: ``TokenSelection`` trains on the 60% of each batch's real tokens whose loss exceeds a reference model's
  the most; the reference (the same architecture) is first trained on a small clean set, Rho-1's premise.

The table gives the validation bits per byte (clean held-out files), the compute relative to uniform in forward-token
units (a forward and backward 3 per token, the reference's forward 1, its training included) and the share of the
tokens each run trained on that were noise (under Rho-1: of the tokens it kept in the loss).

Run from the repository root (needs the ``examples`` extra)::

    python examples/language_model.py          # 2,000 sequences, 300 steps per run: a few minutes on a laptop CPU
    python examples/language_model.py --fast   # a few seconds (what CI runs)
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything

from lightning_per import LossTracker, TokenSelection, weighted_mean
from lightning_per.examples import CausalTransformer, StdlibTextDataModule
from lightning_per.functional.sequences import excess_loss_keep


class MyLM(LightningModule):
    """Your causal LM: any network giving logits ``(n, T, vocab)``; here the examples' small transformer."""

    def __init__(self, context: int = 64, lr: float = 0.003) -> None:
        super().__init__()
        self.lr = lr
        self.net = CausalTransformer(vocab=256, context=context, width=64, layers=2, heads=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # --8<-- [start:training_step]
    def training_step(self, batch, batch_idx):
        x, y = batch  # y: the next byte at each position, -100 at padding
        losses = F.cross_entropy(self(x).transpose(1, 2), y, reduction="none")  # 1: per-token losses (n, T)
        mask = y != -100
        return {"loss": weighted_mean(losses, batch, mask=mask), "per_sample_loss": losses, "target": y}  # 2

    # --8<-- [end:training_step]
    def validation_step(self, batch, batch_idx):
        x, y = batch
        tokens = int((y != -100).sum())
        bits = F.cross_entropy(self(x).transpose(1, 2), y, reduction="sum") / max(1, tokens) / math.log(2)
        self.log("val/bpb", bits, batch_size=tokens)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class NoiseTrained(Callback):
    """Counts the real tokens each step trained on, and how many of them were noise (tokens kept, under Rho-1)."""

    def __init__(self, noisy: torch.Tensor) -> None:
        self.noisy = noisy
        self.tokens = self.noisy_tokens = 0
        self.forward_tokens = 0  # every real token of every batch goes through the forward and backward

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trained = batch[1] != -100  # the real tokens
        self.forward_tokens += int(trained.sum())
        if batch.tokens is not None:  # TokenSelection: the tokens weighted_mean kept in the loss
            losses, choice = outputs["per_sample_loss"], batch.tokens
            trained = excess_loss_keep(losses, choice.reference, choice.fraction, trained)
        self.tokens += int(trained.sum())
        self.noisy_tokens += int(trained[self.noisy[batch.index.cpu()].to(trained.device)].sum())


@torch.no_grad()
def bits_per_byte(model: LightningModule, loader) -> float:
    """Mean next-byte cross-entropy over the real tokens of ``loader``, in bits."""
    model.eval()
    total, tokens = 0.0, 0
    for x, y in loader:
        total += float(F.cross_entropy(model(x).transpose(1, 2), y, reduction="sum"))
        tokens += int((y != -100).sum())
    return total / max(1, tokens) / math.log(2)


# --8<-- [start:methods]
def method(name: str, sequences: int, sizes: dict) -> tuple[StdlibTextDataModule, list[Callback]]:
    """The data and callbacks of a run: ``uniform``, ``prune`` (per sequence) or ``rho-1`` (per token)."""
    if name == "prune":  # each sequence scored by its mean loss over its real tokens; well-learnt ones pruned
        return StdlibTextDataModule(train_sequences=sequences, noise=0.5, strategy="prune", **sizes), [LossTracker()]
    data = StdlibTextDataModule(train_sequences=sequences, noise=0.5, **sizes)
    if name == "uniform":
        return data, []
    clean = StdlibTextDataModule(train_sequences=max(8, sequences // 4), **sizes)  # a small curated set
    clean.setup("fit")
    selection = TokenSelection(MyLM(), keep=0.6, train=True, holdout_dataset=clean.train_dataset, max_epochs=2)
    return data, [selection]  # the reference (MyLM) is trained on the clean set first, then scores every batch


# --8<-- [end:methods]
def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Train uniform, prune and Rho-1 token selection for the same number of steps; print their table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=2000, help="training sequences (half of them noise)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each run")
    parser.add_argument("--fast", action="store_true", help="a tiny run, in seconds")
    args = parser.parse_args(argv)
    if args.fast:
        args.sequences, args.steps = 64, 4
    sizes = {"val_sequences": 64 if args.fast else 512, "test_sequences": 0}
    results: dict[str, dict[str, float]] = {}
    for name in ("uniform", "prune", "rho-1"):
        seed_everything(0, verbose=False)
        data, callbacks = method(name, args.sequences, sizes)
        data.setup("fit")
        counter = NoiseTrained(data.noisy)
        trainer = Trainer(
            max_steps=args.steps, callbacks=[*callbacks, counter], limit_val_batches=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        )  # fmt: skip
        model = MyLM()
        trainer.fit(model, datamodule=data)
        compute = 3.0 * counter.forward_tokens
        if name == "rho-1":
            compute += callbacks[0].reference_tokens + callbacks[0].cost_units * data.context  # its forwards, training
        noise = counter.noisy_tokens / counter.tokens
        results[name] = {"bpb": bits_per_byte(model, data.val_dataloader()), "compute": compute, "noise": noise}
    print(f"\n{'method':<10}{'val bits/byte':>15}{'compute (x uniform)':>21}{'noise in trained tokens':>25}")
    for name, r in results.items():
        print(f"{name:<10}{r['bpb']:>15.3f}{r['compute'] / results['uniform']['compute']:>21.2f}{r['noise']:>25.0%}")
    return results


if __name__ == "__main__":
    main()
