"""A small causal transformer over bytes, in plain PyTorch, written with the two-line ``training_step`` contract.

LitGPT's ``GPT`` (or any causal LM) works the same way: compute the per-token losses ``(n, T)`` with
``reduction="none"``, return ``weighted_mean(losses, batch, mask=...)`` as the loss and the per-token losses under
``per_sample_loss``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from lightning_per._checks import check_int, check_number
from lightning_per.batch import weighted_mean

__all__ = ["Block", "CausalLM", "CausalTransformer"]


class Block(nn.Module):
    """A pre-norm transformer block: causal self-attention, then a GELU MLP, each added to the residual stream.

    Args:
        width: model width.
        heads: attention heads (``width`` must be a multiple).
        dropout: attention dropout while training.
    """

    def __init__(self, width: int = 64, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor) -> Tensor:  # noqa: D102
        n, t, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        h = h + self.proj(attended.transpose(1, 2).reshape(n, t, d))
        return h + self.mlp(self.norm2(h))


class CausalTransformer(nn.Module):
    """A pre-norm causal transformer: token and learned position embeddings, ``layers`` blocks, a linear head.

    Args:
        vocab: vocabulary size (256 for bytes).
        context: the longest sequence.
        width: model width.
        layers: transformer blocks.
        heads: attention heads (``width`` must be a multiple).
        dropout: attention dropout while training.
    """

    def __init__(
        self,
        vocab: int = 256,
        context: int = 64,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout) for _ in range(layers)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(n, T, vocab)`` for tokens ``(n, T)``; position ``t`` sees tokens ``0..t`` only."""
        h = self.embed(x) + self.position[: x.shape[1]]
        return self.head(self.norm(self.blocks(h)))


class CausalLM(LightningModule):
    """A byte-level causal language model for ``(x, y)`` batches of next-byte targets (``-100``: padding).

    Its ``training_step`` shows the two lines lightning-per needs for sequences: per-token losses ``(n, T)``, and
    ``weighted_mean(losses, batch, mask=y != -100)``, which averages each sequence over its real tokens, weights the
    sequences and applies ``TokenSelection``'s choice of tokens. It also returns the logits and targets (the
    ``grad_norm`` score's bound reads them). Validation and test log bits per byte (``val/bpb``, ``test/bpb``): the
    mean next-byte cross-entropy over every real token, in bits.

    Args:
        context: the longest sequence.
        width: model width.
        layers: transformer blocks.
        heads: attention heads.
        dropout: dropout in the blocks.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's weight decay.
        schedule: ``cosine`` (per step, over the whole fit) or ``none``.

    Raises:
        ValueError: a bad argument.

    Example:
        >>> model = CausalLM(context=8, width=16, layers=1)
        >>> model(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 256])
    """

    def __init__(
        self,
        context: int = 64,
        width: int = 64,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
        lr: float = 0.003,
        weight_decay: float = 0.0,
        schedule: Literal["none", "cosine"] = "cosine",
    ) -> None:
        super().__init__()
        check_int("context", context, 1)
        check_int("width", width, 1)
        check_int("layers", layers, 1)
        check_int("heads", heads, 1)
        if width % heads:
            raise ValueError(f"`width` must be a multiple of `heads`, got width={width} and heads={heads}.")
        check_number("dropout", dropout, 0.0, 1.0, high_open=True)
        check_number("lr", lr, 0.0, low_open=True)
        check_number("weight_decay", weight_decay, 0.0)
        self.save_hyperparameters()
        self.net = CausalTransformer(256, context, width, layers, heads, dropout)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:  # noqa: D102
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")  # line 1: per-token losses (n, T)
        mask = y != -100
        self.log("train/loss", losses.sum() / mask.sum(), on_step=False, on_epoch=True, prog_bar=True)
        # line 2: each sequence's mean over its real tokens, weighted; per-token losses to the callbacks
        return {
            "loss": weighted_mean(losses, batch, mask=mask),
            "per_sample_loss": losses,
            "logits": logits,
            "target": y,
        }

    def _bits_per_byte(self, batch: Any, name: str) -> None:
        x, y = batch
        losses = F.cross_entropy(self(x).transpose(1, 2), y, reduction="sum")
        tokens = int((y != -100).sum())
        self.log(name, losses / max(1, tokens) / math.log(2), batch_size=tokens, sync_dist=True, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._bits_per_byte(batch, "val/bpb")

    def test_step(self, batch: Any, batch_idx: int) -> None:  # noqa: D102
        self._bits_per_byte(batch, "test/bpb")

    def configure_optimizers(self) -> Any:  # noqa: D102
        hp: Any = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.schedule == "none":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
