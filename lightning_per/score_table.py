"""ScoreTable: one float32 score per training sample (NaN until the sample is first scored)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ScoreTable"]


class ScoreTable:
    """Per-sample scores, updated from batches of ``(index, value)`` pairs; 4 bytes per sample.

    Several values for one index in one update are averaged first; the average then replaces the stored score,
    or is blended into it with an exponential moving average (``ema``). Non-finite values are ignored.

    Args:
        num_samples: the dataset size.

    Example:
        >>> table = ScoreTable(4)
        >>> table.update(torch.tensor([0, 2, 2]), torch.tensor([1.0, 2.0, 4.0]))  # returns the dropped count
        0
        >>> table.scores.tolist()[:3], table.seen
        ([1.0, nan, 3.0], 2)
    """

    def __init__(self, num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError(f"`num_samples` must be > 0, got {num_samples}.")
        self.scores = torch.full((num_samples,), float("nan"), dtype=torch.float32)
        self.version = 0

    def __len__(self) -> int:
        return self.scores.numel()

    @property
    def seen(self) -> int:
        """Number of samples that have a score."""
        return int((~torch.isnan(self.scores)).sum())

    def update(self, index: Tensor, values: Tensor, ema: float = 0.0) -> int:
        """Record ``values`` for the samples at ``index``; returns how many non-finite values were dropped.

        Args:
            index: int64 sample indices (may repeat).
            values: one value per index.
            ema: weight of the old score in ``s <- ema * s + (1 - ema) * new`` (0 overwrites).

        Raises:
            ValueError: an index is out of range or not an integer, or ``index`` and ``values`` differ in size.
        """
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise ValueError(
                f"`index` must hold integer sample indices, got dtype {index.dtype}: a float index is truncated "
                "(and loses exactness above 2**24), so pass `batch.index` (int64) as it came."
            )
        if index.numel() != values.numel():
            raise ValueError(
                f"`index` has {index.numel()} entries but `values` has {values.numel()}: give one value per index."
            )
        index = index.reshape(-1).to(device="cpu", dtype=torch.int64)
        values = values.reshape(-1).to(device="cpu", dtype=torch.float32)
        finite = torch.isfinite(values)
        dropped = int(values.numel() - finite.sum())
        if dropped:
            index, values = index[finite], values[finite]
        if index.numel() == 0:
            return dropped
        if int(index.min()) < 0 or int(index.max()) >= len(self):
            raise ValueError(
                f"Sample indices must be in [0, {len(self)}), got [{int(index.min())}, {int(index.max())}]."
            )
        unique, inverse = torch.unique(index, return_inverse=True)
        sums = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, values.double())
        mean = (sums / torch.bincount(inverse, minlength=unique.numel())).float()
        if ema > 0:
            old = self.scores[unique]
            mean = torch.where(torch.isnan(old), mean, ema * old + (1.0 - ema) * mean)
        self.scores[unique] = mean
        self.version += 1
        return dropped

    def quantiles(self, levels: tuple[float, ...], max_points: int = 1 << 20) -> dict[float, float]:
        """Quantiles of the scores seen (a fixed random subset of ``max_points`` beyond that); empty if none.

        Example:
            >>> table = ScoreTable(3)
            >>> _ = table.update(torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
            >>> table.quantiles((0.5,))
            {0.5: 2.0}
        """
        seen = self.scores[~torch.isnan(self.scores)]
        if seen.numel() == 0:
            return {}
        if seen.numel() > max_points:
            seen = seen[torch.randint(seen.numel(), (max_points,), generator=torch.Generator().manual_seed(0))]
        values = torch.quantile(seen.double(), torch.tensor(levels, dtype=torch.float64)).tolist()
        return dict(zip(levels, values, strict=True))

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only: loads with ``torch.load(weights_only=True)``."""
        return {"scores": self.scores.clone(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the scores.

        Raises:
            ValueError: the saved table was made for a dataset of another length, or holds infinite scores.
        """
        scores = state["scores"].to(torch.float32)  # a float64 score above float32's range becomes inf here
        if bool(torch.isinf(scores).any()):
            raise ValueError(
                f"The checkpoint's score table holds {int(torch.isinf(scores).sum())} infinite scores; a score table "
                "holds finite scores (NaN for unseen samples), so the checkpoint is damaged."
            )
        if scores.numel() != len(self):
            raise ValueError(
                f"The checkpoint's score table has {scores.numel()} samples but the training set has {len(self)}: "
                "resume with the same training set, or start a new run without `ckpt_path`."
            )
        self.scores = scores.clone()
        self.version = int(state.get("version", self.version)) + 1
