"""One scoring vocabulary: where a per-sample score comes from, shared by ``LossTracker`` and the selection callbacks.

A score is a ``Score`` (a name and what it reads from ``training_step``'s output) or any function
``fn(outputs, batch) -> Tensor`` returning one value per sample. Every name means one thing everywhere:

- ``loss``: the per-sample loss under ``loss_key``.
- ``reducible``: that loss minus the sample's irreducible loss (``IrreducibleLoss``), RHO-LOSS.
- ``grad_norm``: the gradient-norm bound ``||dL / dz||`` of the loss with respect to the outputs ``z`` under
  ``logits_key`` (Katharopoulos & Fleuret), in closed form for ``bound`` ``cross_entropy``, ``bce`` and ``mse``, or
  by ``torch.autograd.grad`` through ``loss_fn`` for ``bound="autograd"``.
- ``deviation``: ``1 - p_y``; ``margin``: ``1 - (p_y - max_{k != y} p_k)``, from ``logits_key`` and ``target_key``.
- ``novelty``: the distance of the embedding under ``embedding_key`` from a running mean of the embeddings scored
  before.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, get_args

import torch
from torch import Tensor

from lightning_per import functional as PF
from lightning_per._checks import check_choice, check_int, check_number

__all__ = ["BOUNDS", "SCORE_NAMES", "Bound", "Score", "ScoreName", "as_score"]

ScoreName = Literal["loss", "reducible", "grad_norm", "deviation", "margin", "novelty"]
SCORE_NAMES: tuple[str, ...] = get_args(ScoreName)
Bound = Literal["cross_entropy", "bce", "mse", "autograd"]
BOUNDS: tuple[str, ...] = get_args(Bound)

TWO_LINE_FIX = """Change two lines of `training_step`:
    losses = F.cross_entropy(logits, y, reduction="none")           # one loss per sample
    return {"loss": lightning_per.weighted_mean(losses, batch), "per_sample_loss": losses}"""

# what a step keeps of its outputs for its scores: the scores themselves, or the (logits, targets) of a closed-form
# bound, computed later for several steps at once (a small op right after an optimizer step costs tens of µs)
Captured = Tensor | tuple[Tensor, Tensor]


@dataclass
class Score:
    """A named per-sample score and what it reads from the output of ``training_step``.

    Pass it as ``score=`` to ``LossTracker`` or a selection callback (a plain name gives the defaults below).

    Args:
        name: ``loss``, ``reducible``, ``grad_norm``, ``deviation``, ``margin`` or ``novelty`` (see
            ``lightning_per.scoring``).
        loss_key: key of the per-sample losses (``loss``, ``reducible``).
        logits_key: key of the model outputs (``grad_norm``, ``deviation``, ``margin``).
        target_key: key of the targets (``grad_norm``, ``deviation``, ``margin``; ``LossTracker(class_balance=...)``).
        embedding_key: key of the embeddings (``novelty``).
        bound: the loss whose gradient norm ``grad_norm`` bounds: ``cross_entropy`` (softmax; class indices or
            probabilities), ``bce`` (with logits), ``mse`` (a per-sample mean of squares) or ``autograd`` (any
            ``loss_fn``).
        label_smoothing: of the cross-entropy (``bound="cross_entropy"``), in [0, 1].
        class_weights: per-class weights of the cross-entropy, as in ``cross_entropy(weight=...)``.
        ignore_index: a class index the cross-entropy ignores (its samples score 0).
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
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    novelty_momentum: float = 0.9
    owner: str = field(default="", repr=False, compare=False)  # the callback, named in error messages
    _table: Tensor | None = field(default=None, init=False, repr=False, compare=False)  # irreducible losses
    _novelty_mean: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_choice("name", self.name, SCORE_NAMES)
        check_choice("bound", self.bound, BOUNDS)
        for key in ("loss_key", "logits_key", "target_key", "embedding_key"):
            if not isinstance(getattr(self, key), str):
                raise TypeError(
                    f"`{key}` must be a str (a key of what `training_step` returns), got {getattr(self, key)!r}."
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
            self.missing(outputs, self.keys)
        name = self.name
        if name in ("loss", "reducible"):
            losses = _rows(outputs, self.loss_key, n, self.owner, scalar=True).detach()
            if name == "reducible":
                return losses.reshape(-1).float() - self._irreducible(batch.index, losses.device)
            return losses
        if name == "novelty":
            return self._novelty(_rows(outputs, self.embedding_key, n, self.owner))
        logits = _rows(outputs, self.logits_key, n, self.owner).detach()
        targets = _rows(outputs, self.target_key, n, self.owner).detach()
        if name == "grad_norm":
            self._check_bound_shapes(logits, targets)
            if self.bound == "autograd":
                return self._autograd(logits, targets, n)
        else:
            self._check_class_shapes(logits, targets)
        return logits, targets

    def resolve(self, captured: Captured) -> Tensor:
        """One float32 score per sample from what ``capture`` kept."""
        if isinstance(captured, Tensor):
            return captured.float().reshape(-1)
        logits, targets = captured
        if self.name == "deviation" or self.name == "margin":
            labels = self._class_labels(logits, targets)
            fn = PF.prediction_deviation if self.name == "deviation" else PF.margin_score
            return fn(logits, labels)
        if self.bound == "bce":
            return PF.sigmoid_bce_grad_norm(logits, targets)
        if self.bound == "mse":
            return PF.mse_grad_norm(logits, targets)
        weights = None
        if self.class_weights is not None:
            weights = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return PF.softmax_ce_grad_norm(logits, targets, self.label_smoothing, weights, self.ignore_index)

    def resolve_many(self, captured: Sequence[Captured]) -> Tensor:
        """The scores of several captures, concatenated; a closed-form bound runs once over all of them if it can."""
        if len(captured) == 1:
            return self.resolve(captured[0])
        pairs = [c for c in captured if isinstance(c, tuple)]
        if len(pairs) == len(captured) and _concatenable([p[0] for p in pairs], [p[1] for p in pairs]):
            return self.resolve((torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])))
        return torch.cat([self.resolve(c) for c in captured])

    def labels(self, outputs: Any, n: int) -> Tensor:
        """Class labels from ``target_key`` (``argmax`` of probability rows), for a class-frequency factor."""
        if not isinstance(outputs, Mapping) or self.target_key not in outputs:
            self.missing(outputs, (self.target_key,))
        return _labels(_rows(outputs, self.target_key, n, self.owner).detach())

    def missing(self, outputs: Any, keys: Sequence[str]) -> NoReturn:
        """Refuse an output that lacks keys, naming every missing one and how to return them.

        Raises:
            ValueError: always.
        """
        found = f"the keys {sorted(outputs)}" if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"
        missing = [k for k in keys if not (isinstance(outputs, Mapping) and k in outputs)]
        named = " and ".join(repr(k) for k in missing)
        values = ", ".join(f'"{k}": ...' for k in missing)
        hint = TWO_LINE_FIX if self.loss_key in missing else f'Return them: `return {{"loss": loss, {values}}}`'
        if self.loss_key not in missing:
            hint += (
                ", point the keys at yours (`Score(name, logits_key=..., target_key=...)`), or pass a function "
                "`score=fn` with `fn(outputs, batch)` returning one score per sample (an import path in YAML)."
            )
        raise ValueError(
            f"{self.owner or 'Score'}(score={self.name!r}) needs per-sample values under {named} in what "
            f"`training_step` returns; it returned {found}.\n{hint}"
        )

    # ------------------------------------------------------------------------------------------------ state
    def attach_irreducible(self, table: Tensor) -> None:
        """Give ``reducible`` the irreducible loss of every training sample, by dataset index."""
        self._table = table

    def state_dict(self) -> dict[str, Any]:
        """The running state (the novelty mean): tensors and plain values only."""
        return {"novelty_mean": None if self._novelty_mean is None else self._novelty_mean.cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict``'s values."""
        self._novelty_mean = state.get("novelty_mean")

    # ------------------------------------------------------------------------------------------------ helpers
    def _irreducible(self, index: Tensor, device: torch.device) -> Tensor:
        table = self._table
        if table is None:
            raise ValueError(
                f"{self.owner or 'Score'}(score='reducible') needs the irreducible loss of every training sample: add "
                "`lightning_per.IrreducibleLoss(model=...)` to the Trainer's callbacks (it trains a small model on a "
                "holdout set once and computes them)."
            )
        if table.device != device:
            self._table = table = table.to(device)
        return table[index.to(device)]

    def _check_bound_shapes(self, logits: Tensor, targets: Tensor) -> None:
        n = logits.shape[0]
        if self.bound == "cross_entropy":
            indices = targets.numel() == n and targets.shape != logits.shape  # (n,) or (n, 1) class indices
            if logits.ndim != 2 or not (indices or targets.shape == logits.shape):
                raise ValueError(
                    f"{self.owner or 'Score'}(score='grad_norm') with `bound='cross_entropy'` needs logits of shape "
                    f"(n, C) and class indices (n,) or probabilities (n, C); got {self.logits_key!r} "
                    f"{tuple(logits.shape)} and {self.target_key!r} {tuple(targets.shape)} ({targets.dtype}). For "
                    "other shapes use `bound='autograd'` with `loss_fn`."
                )
            if self.class_weights is not None and len(self.class_weights) != logits.shape[1]:
                raise ValueError(
                    f"`class_weights` has {len(self.class_weights)} entries but the logits have {logits.shape[1]} "
                    "classes."
                )
        elif self.bound in ("bce", "mse") and logits.reshape(n, -1).shape != targets.reshape(n, -1).shape:
            raise ValueError(
                f"{self.owner or 'Score'}(score='grad_norm') with `bound={self.bound!r}` needs outputs and targets of "
                f"the same shape; got {self.logits_key!r} {tuple(logits.shape)} and {self.target_key!r} "
                f"{tuple(targets.shape)}."
            )

    def _check_class_shapes(self, logits: Tensor, targets: Tensor) -> None:
        """``deviation`` and ``margin`` read class probabilities: logits ``(n, C)``, class labels or one-hot rows."""
        n = logits.shape[0]
        labels = targets.numel() == n and targets.ndim <= 2  # (n,) or (n, 1); their values are checked when resolved
        if logits.ndim != 2 or logits.shape[1] < 2 or not (labels or targets.shape == logits.shape):
            raise ValueError(
                f"{self.owner or 'Score'}(score={self.name!r}) needs class scores {self.logits_key!r} of shape (n, C) "
                f"with C >= 2 and targets {self.target_key!r} that are class labels (n,) or probability or one-hot "
                f"rows (n, C); got {tuple(logits.shape)} and {tuple(targets.shape)} ({targets.dtype}). For "
                "regression targets use `score='loss'` or `Score('grad_norm', bound='mse')`."
            )

    def _class_labels(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Class labels in ``[0, C)`` from targets (argmax of rows); refuses values that are not class labels.

        Raises:
            ValueError: a label that is not an integer in ``[0, C)`` (a regression target, say).
        """
        labels = _labels(targets)
        classes = logits.shape[-1]
        bad = (labels < 0) | (labels >= classes)
        if labels.is_floating_point():
            bad |= labels != labels.round()
        if bool(bad.any()):  # at a synchronisation point (or a selection step): the host reads it anyway
            value = float(labels[bad][0])
            raise ValueError(
                f"{self.owner or 'Score'}(score={self.name!r}) reads {self.target_key!r} as class labels in "
                f"[0, {classes}), but got {value:g}: these targets are not class labels. For regression targets use "
                "`score='loss'` or `Score('grad_norm', bound='mse')`."
            )
        return labels.long()

    def _autograd(self, logits: Tensor, targets: Tensor, n: int) -> Tensor:
        assert self.loss_fn is not None
        with torch.enable_grad():
            z = logits.clone().requires_grad_(True)
            losses = self.loss_fn(z, targets)
            if not isinstance(losses, Tensor) or not (losses.ndim == 0 or losses.shape[0] == n):
                got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
                raise ValueError(
                    f"`loss_fn` returned {got} for a batch of {n} samples: return one loss per sample (e.g. "
                    "`reduction='none'`) or their sum or mean."
                )
            (grad,) = torch.autograd.grad(losses.sum(), z)
        return grad.reshape(n, -1).float().norm(dim=-1)

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
        return _labels(_rows(outputs, self.target_key, n, self.owner).detach())

    def attach_irreducible(self, table: Tensor) -> None:
        """A function reads what it needs itself."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to restore."""


Scorer = Score | _FunctionScore


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


def _rows(outputs: Mapping[str, Any], key: str, n: int, owner: str, scalar: bool = False) -> Tensor:
    """``outputs[key]``, checked: a tensor with one row per sample (``scalar``: one value per sample)."""
    value = outputs[key]
    if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != n or (scalar and value.numel() != n):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{owner + ': ' if owner else ''}`training_step` returned {key!r} with shape {got}, but the batch has {n} "
            f"samples: return one {'value' if scalar else 'row'} per sample (e.g. `reduction='none'`), in batch "
            f"order.\n{TWO_LINE_FIX}"
        )
    return value


def _labels(targets: Tensor) -> Tensor:
    """Class labels: ``argmax`` of probability (or one-hot) rows, else the targets as a flat vector."""
    return targets.argmax(-1) if targets.ndim == 2 and targets.shape[1] > 1 else targets.reshape(-1)


def _concatenable(*groups: list[Tensor]) -> bool:
    """Whether each group's tensors can be concatenated along dim 0 (same trailing shape, dtype and device)."""
    return all(
        all(t.shape[1:] == g[0].shape[1:] and t.dtype == g[0].dtype and t.device == g[0].device for t in g)
        for g in groups
    )
