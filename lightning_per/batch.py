"""The batch type that carries dataset indices and importance weights next to the user's own batch.

A training batch from ``PrioritizedDataModule`` is a ``PrioritizedBatch``. It unpacks and
indexes like the batch the user's collate function made (``x, y = batch`` for tuple and list samples,
``batch["image"]`` and ``batch.keys()`` for dict samples), and adds ``batch.index`` (int64 dataset indices) and
``batch.weight`` (float32 importance weights).

It deliberately defines no ``__iter__``: Lightning then reads it as a dataclass when it infers the batch size for
``self.log(..., on_epoch=True)``, which is right for every kind of batch (a dict batch iterated would give its
keys). Unpacking still works through ``__getitem__``; ``batch.data`` is the user's batch itself. For the same reason
``batch.tokens`` (what ``TokenSelection`` attaches for ``weighted_mean``) is a property, not a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_per.functional.sequences import excess_loss_keep, sequence_weighted_mean

__all__ = ["PrioritizedBatch", "TokenChoice", "weighted_mean"]


@dataclass
class TokenChoice:
    """What ``TokenSelection`` attaches to a batch (``batch.tokens``) so that ``weighted_mean`` selects tokens.

    Args:
        reference: ``(n, T)`` per-token losses of the reference model on this batch.
        fraction: the share of the batch's real tokens kept in the loss, by excess loss (Rho-1), in (0, 1].
        kept: set by ``weighted_mean``: the share of real tokens it kept (a 0-dim tensor), ``None`` until then.

    Example:
        >>> batch = PrioritizedBatch(None, torch.tensor([0]), torch.ones(1))
        >>> batch.tokens = TokenChoice(reference=torch.tensor([[3.0, 1.0, 2.0, 0.0]]), fraction=0.5)
        >>> weighted_mean(torch.tensor([[3.0, 3.0, 3.0, 3.0]]), batch), batch.tokens.kept  # the 2 largest excesses
        (tensor(3.), tensor(0.5000))
    """

    reference: Tensor
    fraction: float
    kept: Tensor | None = None


@dataclass
class PrioritizedBatch:
    """A collated batch with the dataset index and the importance weight of every sample.

    It unpacks and indexes like ``data`` (``x, y = batch`` for tuple and list samples, ``batch["image"]`` and
    ``batch.keys()`` for dict samples); ``batch.batch_size`` is the number of samples.

    Args:
        data: the batch the user's collate function made from the samples (tuple, list, dict, tensor, ...).
        index: int64 dataset indices, one per sample.
        weight: float32 importance weights, one per sample (1 for uniform sampling).

    Raises:
        TypeError: ``x, y = batch`` (or an integer key) on a dict batch: read it by key.

    Example:
        >>> batch = PrioritizedBatch((torch.zeros(2, 3), torch.tensor([0, 1])), torch.tensor([4, 7]), torch.ones(2))
        >>> x, y = batch
        >>> x.shape, batch.index.tolist()
        (torch.Size([2, 3]), [4, 7])
    """

    data: Any
    index: Tensor
    weight: Tensor

    def __getitem__(self, key: Any) -> Any:
        data = self.data
        if isinstance(key, int) and isinstance(data, Mapping) and key not in data:
            # `x, y = batch` indexes 0, 1, ...: say how a dict batch is read instead of a bare `KeyError: 0`
            first = next(iter(map(repr, data)), "'x'")
            raise TypeError(
                f"This batch is a dict with the keys {sorted(map(str, data))}: read it by key, e.g. `batch[{first}]`; "
                "`x, y = batch` unpacks tuple and list samples only."
            )
        return data[key]

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: Any) -> bool:
        return key in self.data

    def keys(self) -> Any:
        """The keys of a dict batch."""
        return self.data.keys()

    def values(self) -> Any:
        """The values of a dict batch."""
        return self.data.values()

    def items(self) -> Any:
        """The items of a dict batch."""
        return self.data.items()

    def pin_memory(self) -> PrioritizedBatch:
        """A copy in pinned memory (``DataLoader(pin_memory=True)`` calls this)."""
        from torch.utils.data._utils.pin_memory import pin_memory

        return PrioritizedBatch(
            data=pin_memory(self.data), index=self.index.pin_memory(), weight=self.weight.pin_memory()
        )

    def to(self, device: torch.device | str | int, non_blocking: bool = False) -> PrioritizedBatch:
        """A copy on ``device`` (Lightning calls this to move the batch; the data is moved recursively)."""
        from lightning.fabric.utilities.apply_func import move_data_to_device

        return PrioritizedBatch(
            data=move_data_to_device(self.data, device),
            index=self.index.to(device, non_blocking=non_blocking),
            weight=self.weight.to(device, non_blocking=non_blocking),
        )

    @property
    def batch_size(self) -> int:
        """Number of samples in the batch."""
        return int(self.index.shape[0])

    @property
    def tokens(self) -> TokenChoice | None:
        """The token selection ``weighted_mean`` applies to per-token losses (``TokenSelection`` sets it), or None."""
        return self.__dict__.get("_tokens")

    @tokens.setter
    def tokens(self, value: TokenChoice | None) -> None:
        self.__dict__["_tokens"] = value


def weighted_mean(
    losses: Tensor, batch: Any, mask: Tensor | None = None, per: Literal["sequence", "token"] = "sequence"
) -> Tensor:
    """The mean of per-sample ``losses`` weighted by ``batch.weight``; a plain mean for a batch without weights.

    This is the one call that keeps the gradient unbiased under prioritized or importance sampling. ``losses`` has
    one row per sample: ``(n,)`` or ``(n, 1)``, or ``(n, T, ...)`` per-token (per-element) losses of a sequence. For
    those, ``mask`` marks the real tokens (an attention mask, or ``targets != ignore_index``; without it every
    token is real) and ``per`` says what is averaged (``functional.sequence_weighted_mean``):

    - ``sequence`` (default): each sequence's mean over its real tokens, then the weighted mean over sequences,
      ``(1/n) sum_i w_i mean_t l_it``; unbiased for the mean per-sequence loss under importance weights, whatever
      the lengths. Without a mask and padding this is the mean of all elements, as for a single loss per sample.
    - ``token``: every real token once, ``sum_i w_i sum_t l_it / sum_i w_i m_i``: the usual language-model loss
      with weights 1; a ratio estimate, biased by O(1/n) when token counts or weights differ.

    When ``TokenSelection`` has attached ``batch.tokens``, the per-token losses are also token-selected (Rho-1):
    only the top share of the batch's real tokens by excess loss (the loss minus the reference model's) counts,
    scaled by ``1 / share`` (``functional.excess_loss_keep``).

    Raises:
        TypeError: ``losses`` is not a tensor.
        ValueError: ``losses`` does not have one row per sample of the batch, or a token selection without
            per-token losses.

    Example:
        >>> batch = PrioritizedBatch(None, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
        >>> weighted_mean(torch.tensor([2.0, 2.0]), batch)
        tensor(4.)
        >>> tokens = torch.tensor([[1.0, 3.0], [2.0, 0.0]])  # the second sequence has one real token
        >>> weighted_mean(tokens, batch, mask=torch.tensor([[1, 1], [1, 0]]))  # (1 * 2 + 3 * 2) / 2
        tensor(4.)
    """
    if not isinstance(losses, Tensor):
        raise TypeError(
            f"`losses` must be a tensor of per-sample losses (e.g. `F.cross_entropy(logits, y, reduction='none')`), "
            f"got {type(losses).__name__}."
        )
    weight = getattr(batch, "weight", None)
    tokens: TokenChoice | None = getattr(batch, "tokens", None)
    if weight is not None and (losses.ndim == 0 or losses.shape[0] != weight.shape[0]):
        raise ValueError(
            f"`losses` has shape {tuple(losses.shape)} but the batch has {weight.shape[0]} weights: compute the "
            "loss per sample (e.g. `F.cross_entropy(logits, y, reduction='none')`) on the batch as it arrived, "
            "one row per sample."
        )
    if mask is None and tokens is None and per == "sequence":
        if weight is None:
            return losses.mean()
        if losses.ndim == 1 and losses.dtype == weight.dtype:  # the common case in one op (a step is hot code)
            return torch.dot(losses, weight / weight.shape[0])
        # a sample's weight applies to its whole row: (n,), (n, 1) and per-element (n, T, ...) losses alike
        return (losses * weight.to(losses.dtype).reshape(-1, *[1] * (losses.ndim - 1))).mean()
    keep = None
    if tokens is not None:
        if losses.ndim < 2 or tokens.reference.shape != losses.shape:
            raise ValueError(
                f"TokenSelection attached the reference model's per-token losses {tuple(tokens.reference.shape)} to "
                f"this batch, but `weighted_mean` got losses {tuple(losses.shape)}: pass the per-token losses "
                "(e.g. `F.cross_entropy(logits.transpose(1, 2), y, reduction='none')`, shape (n, T))."
            )
        keep = excess_loss_keep(losses, tokens.reference, tokens.fraction, mask)
        real = keep.numel() if mask is None else mask.bool().sum().clamp(min=1)
        tokens.kept = (keep.sum() / real).detach()
    return sequence_weighted_mean(losses, weight, mask, per, keep)
