"""One scoring vocabulary: where a per-sample score comes from, shared by ``LossTracker`` and the selection callbacks.

A score is a ``Score`` (a name and what it reads from ``training_step``'s output) or any function
``fn(outputs, batch) -> Tensor`` returning one value per sample. Every name means one thing everywhere:

- ``loss``: the per-sample loss under ``loss_key``; per-token losses ``(n, T)`` of sequences give one loss per sequence,
  the mean over its real tokens (length-normalised; ``token_reduction="sum"``: the sum).
- ``reducible``: that loss minus the sample's irreducible loss (``IrreducibleLoss``), RHO-LOSS.
- ``grad_norm``: the gradient-norm bound ``||dL / dz||`` of the loss with respect to the outputs ``z`` under
  ``logits_key`` (Katharopoulos & Fleuret), in closed form for ``bound`` ``cross_entropy`` (per sequence for logits
  ``(n, T, C)``), ``bce`` and ``mse``, or by ``torch.autograd.grad`` through ``loss_fn`` for ``bound="autograd"``.
- ``deviation``: ``1 - p_y``; ``margin``: ``1 - (p_y - max_{k != y} p_k)``, from ``logits_key`` and ``target_key``.
- ``novelty``: the distance of the embedding under ``embedding_key`` from a running mean of earlier embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from lightning_per import functional as PF
from lightning_per._checks import check_choice, check_int, check_number
from lightning_per.functional.sequences import TOKEN_REDUCTIONS, TokenReduction, sequence_ce_grad_norm
from lightning_per.outputs import (
    check_bound_shapes,
    check_class_shapes,
    class_labels,
    concatenable,
    labels_of,
    missing_keys,
    per_sample_losses,
    real_tokens,
    rows,
)

__all__ = ["BOUNDS", "SCORE_NAMES", "Bound", "Score", "ScoreArg", "ScoreName", "as_score"]

ScoreName = Literal["loss", "reducible", "grad_norm", "deviation", "margin", "novelty"]
SCORE_NAMES: tuple[str, ...] = get_args(ScoreName)
Bound = Literal["cross_entropy", "bce", "mse", "autograd"]
BOUNDS: tuple[str, ...] = get_args(Bound)

# what a step keeps of its outputs for its scores: the scores themselves, or the (logits, targets) of a closed-form
# bound, computed later for several steps at once (a small op right after an optimizer step costs tens of µs)
Captured = Tensor | tuple[Tensor, Tensor]


@dataclass
class Score:
    """A named per-sample score and what it reads from the output of ``training_step``.

    Pass it as ``score=`` to ``LossTracker`` or a selection callback (a plain name gives the defaults below).

    Args:
        name: ``loss``, ``reducible``, ``grad_norm``, ``deviation``, ``margin`` or ``novelty`` (see
            ``lightning_per.score``).
        loss_key: key of the per-sample losses (``loss``, ``reducible``).
        logits_key: key of the model outputs (``grad_norm``, ``deviation``, ``margin``).
        target_key: key of the targets (``grad_norm``, ``deviation``, ``margin``; ``LossTracker(class_balance=...)``).
        embedding_key: key of the embeddings (``novelty``).
        bound: the loss whose gradient norm ``grad_norm`` bounds: ``cross_entropy`` (softmax; class indices or
            probabilities), ``bce`` (with logits), ``mse`` (a per-sample mean of squares) or ``autograd`` (any
            ``loss_fn``).
        label_smoothing: of the cross-entropy (``bound="cross_entropy"``), in [0, 1].
        class_weights: per-class weights of the cross-entropy, as in ``cross_entropy(weight=...)``.
        ignore_index: a class index the cross-entropy ignores (its samples, or tokens, score 0).
        token_reduction: per-token values ``(n, T)`` to one per sequence: ``mean`` over its real tokens or ``sum``.
        mask_key: key of the ``(n, T)`` mask of real tokens (without it: ``target != ignore_index``, else all).
        loss_fn: ``loss_fn(outputs, targets)`` for ``bound="autograd"`` (per-sample losses, or their sum or mean);
            an import path in YAML, e.g. ``torch.nn.functional.cross_entropy``.
        novelty_momentum: momentum of the running mean embedding (``novelty``), in [0, 1).
        owner: the callback named in error messages; the callbacks set it, leave it empty.

    Raises:
        ValueError: an argument out of range, or ``bound="autograd"`` without ``loss_fn``.

    Example:
        >>> from lightning_per import PrioritizedBatch
        >>> score = Score("grad_norm")
        >>> batch = PrioritizedBatch(None, torch.tensor([4, 7]), torch.ones(2))
        >>> score({"logits": torch.zeros(2, 2), "target": torch.tensor([0, 1])}, batch)
        tensor([0.7071, 0.7071])
    """

    name: ScoreName = "loss"
    loss_key: str = "per_sample_loss"
    logits_key: str = "logits"
    target_key: str = "target"
    embedding_key: str = "embedding"
    bound: Bound = "cross_entropy"
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None
    ignore_index: int = -100
    token_reduction: TokenReduction = "mean"
    mask_key: str = "mask"
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    novelty_momentum: float = 0.9
    owner: str = field(default="", repr=False, compare=False)  # the callback, named in error messages
    _table: Tensor | None = field(default=None, init=False, repr=False, compare=False)  # irreducible losses
    _novelty_mean: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("name", self.name, SCORE_NAMES)
        check_choice("bound", self.bound, BOUNDS)
        check_choice("token_reduction", self.token_reduction, TOKEN_REDUCTIONS)
        for key in ("loss_key", "logits_key", "target_key", "embedding_key", "mask_key"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(
                    f"`{key}` must be a str (a key of the `training_step` output), got {getattr(self, key)!r}."
                )
        check_number("label_smoothing", self.label_smoothing, 0.0, 1.0)
        check_int("ignore_index", self.ignore_index)
        if self.class_weights is not None and (len(self.class_weights) == 0 or min(self.class_weights) < 0):
            raise ValueError(
                f"`class_weights` must be a non-empty list of non-negative numbers, got {self.class_weights}."
            )
        check_number("novelty_momentum", self.novelty_momentum, 0.0, 1.0, high_open=True)
        if self.name == "grad_norm" and self.bound == "autograd" and self.loss_fn is None:
            raise ValueError(
                "`bound='autograd'` needs `loss_fn`, a function `loss_fn(outputs, targets)` returning the loss (e.g. "
                "`loss_fn: torch.nn.functional.cross_entropy` in YAML); got loss_fn=None."
            )

    # ------------------------------------------------------------------------------------------------ reading
    @property
    def keys(self) -> tuple[str, ...]:
        """The keys of the ``training_step`` output this score reads."""
        if self.name in ("loss", "reducible"):
            return (self.loss_key,)
        if self.name == "novelty":
            return (self.embedding_key,)
        return (self.logits_key, self.target_key)

    @property
    def label(self) -> str:
        """How error messages write this score: ``'loss'``, ``'margin'``, ..."""
        return repr(self.name)

    @property
    def is_bounded_below_by_zero(self) -> bool:
        """Whether the score is never negative by construction (``reducible`` and ``loss`` can be)."""
        return self.name not in ("loss", "reducible")

    def __call__(self, outputs: Any, batch: Any) -> Tensor:
        """The scores of ``batch`` (float32, one per sample) from what ``training_step`` returned for it."""
        return self.resolve(self.capture(outputs, batch))

    def capture(self, outputs: Any, batch: Any) -> Captured:
        """Check what ``training_step`` returned for ``batch`` and keep what the scores need, detached.

        Raises:
            ValueError: a key is missing (every missing key is named) or a value has the wrong shape.
        """
        n = int(batch.index.shape[0])
        if not isinstance(outputs, Mapping) or not all(key in outputs for key in self.keys):
            missing_keys(self, outputs, self.keys)
        name = self.name
        if name in ("loss", "reducible"):
            losses = per_sample_losses(self, outputs, n)
            if name == "reducible":
                return losses.reshape(-1).float() - self._irreducible(batch, losses.device)
            return losses
        if name == "novelty":
            return self._novelty(rows(outputs, self.embedding_key, n, self.owner))
        logits = rows(outputs, self.logits_key, n, self.owner).detach()
        targets = rows(outputs, self.target_key, n, self.owner).detach()
        if name == "grad_norm":
            check_bound_shapes(self, logits, targets)
            if self.bound == "autograd":
                assert self.loss_fn is not None
                return PF.autograd_grad_norm(self.loss_fn, logits, targets)
            mask = real_tokens(self, outputs, targets) if logits.ndim == 3 and self.mask_key in outputs else None
            if mask is not None:  # a padded token has no loss, so no gradient: the bound reads ignore_index
                targets = targets.masked_fill(~mask, self.ignore_index)
        else:
            check_class_shapes(self, logits, targets)
        return logits, targets

    def resolve(self, captured: Captured) -> Tensor:
        """One float32 score per sample from what ``capture`` kept."""
        if isinstance(captured, Tensor):
            return captured.float().reshape(-1)
        logits, targets = captured
        if self.name == "deviation" or self.name == "margin":
            labels = class_labels(self, logits, targets)
            fn = PF.prediction_deviation if self.name == "deviation" else PF.margin_score
            return fn(logits, labels)
        if self.bound == "bce":
            return PF.sigmoid_bce_grad_norm(logits, targets)
        if self.bound == "mse":
            return PF.mse_grad_norm(logits, targets)
        weights = None
        if self.class_weights is not None:
            weights = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        if logits.ndim == 3:  # sequences: the bound of the length-normalised (or summed) loss
            return sequence_ce_grad_norm(
                logits, targets, self.token_reduction, self.label_smoothing, weights, self.ignore_index
            )
        return PF.softmax_ce_grad_norm(logits, targets, self.label_smoothing, weights, self.ignore_index)

    def resolve_many(self, captured: Sequence[Captured]) -> Tensor:
        """The scores of several captures, concatenated; a closed-form bound runs once over all of them if it can."""
        if len(captured) == 1:
            return self.resolve(captured[0])
        pairs = [c for c in captured if isinstance(c, tuple)]
        if len(pairs) == len(captured) and concatenable([p[0] for p in pairs], [p[1] for p in pairs]):
            return self.resolve((torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])))
        return torch.cat([self.resolve(c) for c in captured])

    def labels(self, outputs: Any, n: int) -> Tensor:
        """Class labels from ``target_key`` (``argmax`` of probability rows), for a class-frequency factor."""
        if not isinstance(outputs, Mapping) or self.target_key not in outputs:
            missing_keys(self, outputs, (self.target_key,))
        return labels_of(rows(outputs, self.target_key, n, self.owner).detach())

    # ------------------------------------------------------------------------------------------------ state
    def attach_irreducible(self, source: Tensor | Callable[[Any], Tensor]) -> None:
        """Give ``reducible`` its irreducible losses: a table by dataset index, or ``fn(batch)`` for a stream."""
        self._table = source  # type: ignore[assignment]

    def state_dict(self) -> dict[str, Any]:
        """The running state (the novelty mean): tensors and plain values only."""
        return {"novelty_mean": None if self._novelty_mean is None else self._novelty_mean.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s values."""
        self._novelty_mean = state.get("novelty_mean")

    # ------------------------------------------------------------------------------------------------ helpers
    def _irreducible(self, batch: Any, device: torch.device) -> Tensor:
        if callable(table := self._table):  # a function of the batch (a stream: on the fly, or by its ids)
            return table(batch).to(device)
        if table is None:
            raise ValueError(
                f"{self.owner or 'Score'}(score='reducible') has no irreducible losses: add "
                "`lightning_per.IrreducibleLoss(model=...)` to the Trainer's callbacks."
            )
        if table.device != device:
            self._table = table = table.to(device)
        return table[batch.index.to(device)]

    def _novelty(self, embeddings: Tensor) -> Tensor:
        flat = embeddings.detach().float().reshape(embeddings.shape[0], -1)
        # a non-finite embedding scores NaN but never enters the running mean; masked rather than filtered, so no
        # host sync per step
        finite = torch.isfinite(flat).all(dim=1, keepdim=True)
        count = finite.sum()
        batch_mean = torch.where(finite, flat, 0.0).sum(0) / count.clamp(min=1)
        if self._novelty_mean is None or self._novelty_mean.shape != batch_mean.shape:
            if int(count) == 0:  # nothing to start the mean from yet (one host sync, on the first batch only)
                return flat.norm(dim=-1) * math.nan
            self._novelty_mean = batch_mean
        mean = self._novelty_mean.to(flat.device)
        scores = (flat - mean).norm(dim=-1)
        keep = torch.where(count > 0, self.novelty_momentum, 1.0)  # a batch without a finite row changes nothing
        self._novelty_mean = keep * mean + (1.0 - keep) * batch_mean
        return scores


class _FunctionScore:
    """A user's ``fn(outputs, batch) -> Tensor`` with ``Score``'s interface."""

    name = "custom"
    keys: tuple[str, ...] = ()
    is_bounded_below_by_zero = False
    target_key = "target"

    def __init__(self, fn: Callable[[Any, Any], Tensor], owner: str) -> None:
        self.fn = fn
        self.owner = owner
        self.label = getattr(fn, "__qualname__", None) or repr(fn)  # how error messages write it

    def __call__(self, outputs: Any, batch: Any) -> Tensor:
        return self.resolve(self.capture(outputs, batch))

    def capture(self, outputs: Any, batch: Any) -> Captured:
        n = int(batch.index.shape[0])
        values = self.fn(outputs, batch)
        if not isinstance(values, Tensor) or values.numel() != n or (values.ndim and values.shape[0] != n):
            got: object = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            name = getattr(self.fn, "__qualname__", repr(self.fn))
            raise ValueError(
                f"The score function {name} returned {got} for a batch of {n} samples: it must return a tensor with "
                "one score per sample, in batch order."
            )
        return values.detach()

    def resolve(self, captured: Captured) -> Tensor:
        assert isinstance(captured, Tensor)
        return captured.float().reshape(-1)

    def resolve_many(self, captured: Sequence[Captured]) -> Tensor:
        return torch.cat([self.resolve(c) for c in captured])

    def labels(self, outputs: Any, n: int) -> Tensor:
        if not isinstance(outputs, Mapping) or self.target_key not in outputs:
            raise ValueError(
                f"{self.owner} needs class labels under {self.target_key!r} in what `training_step` returns."
            )
        return labels_of(rows(outputs, self.target_key, n, self.owner).detach())

    def attach_irreducible(self, source: Tensor | Callable[[Any], Tensor]) -> None:
        """A function reads what it needs itself."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


Scorer = Score | _FunctionScore
ScoreArg = ScoreName | Score | Callable[[Any, Any], Tensor]
"""What a ``score=`` argument accepts: a name, a ``Score`` or ``fn(outputs, batch)`` returning one score per sample."""


def as_score(score: str | Score | Callable[[Any, Any], Tensor], owner: str) -> Scorer:
    """The callback's own scorer from what its ``score`` argument accepts: a name, a ``Score`` or a function.

    A ``Score`` is copied, so two callbacks given the same one keep separate running state.

    Raises:
        ValueError: an unknown name.
        TypeError: anything else.

    Example:
        >>> as_score("margin", "LossTracker").keys
        ('logits', 'target')
    """
    if isinstance(score, str):
        if score not in SCORE_NAMES:
            raise ValueError(
                f"`score` must be one of {', '.join(map(repr, SCORE_NAMES))}, a `lightning_per.Score` or a function "
                f"`fn(outputs, batch)` returning one score per sample; got {score!r}."
            )
        return Score(score, owner=owner)  # type: ignore[arg-type]  # checked above
    if isinstance(score, Score):
        return dataclasses.replace(score, owner=owner)
    if callable(score):
        return _FunctionScore(score, owner)
    raise TypeError(
        f"`score` must be a score name, a `lightning_per.Score` or a function `fn(outputs, batch)`; got "
        f"{type(score).__name__}."
    )
