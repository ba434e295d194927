"""What ``training_step`` returns, read and checked for a score: one row per sample, class labels, the right shapes.

Every message names the callback (``score.owner``), the score and the keys, and says how to return what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from torch import Tensor

__all__ = [
    "TWO_LINE_FIX",
    "check_bound_shapes",
    "check_class_shapes",
    "class_labels",
    "concatenable",
    "labels_of",
    "missing_keys",
    "rows",
]

TWO_LINE_FIX = """Change two lines of `training_step`:
    losses = F.cross_entropy(logits, y, reduction="none")           # one loss per sample
    return {"loss": lightning_per.weighted_mean(losses, batch), "per_sample_loss": losses}"""


def missing_keys(score: Any, outputs: Any, keys: Sequence[str]) -> NoReturn:
    """Refuse an output that lacks keys, naming every missing one and how to return them.

    Raises:
        ValueError: always.
    """
    found = f"the keys {sorted(outputs)}" if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"
    missing = [k for k in keys if not (isinstance(outputs, Mapping) and k in outputs)]
    named = " and ".join(repr(k) for k in missing)
    values = ", ".join(f'"{k}": ...' for k in missing)
    hint = TWO_LINE_FIX if score.loss_key in missing else f'Return them: `return {{"loss": loss, {values}}}`'
    if score.loss_key not in missing:
        hint += (
            ", point the keys at yours (`Score(name, logits_key=..., target_key=...)`), or pass a function "
            "`score=fn` with `fn(outputs, batch)` returning one score per sample (an import path in YAML)."
        )
    raise ValueError(
        f"{score.owner or 'Score'}(score={score.name!r}) needs per-sample values under {named} in what "
        f"`training_step` returns; it returned {found}.\n{hint}"
    )


def check_bound_shapes(score: Any, logits: Tensor, targets: Tensor) -> None:
    """Refuse outputs and targets the gradient-norm bound of ``score.bound`` is not defined for.

    Raises:
        ValueError: the shapes do not fit the bound (the message names the keys, the shapes and the fix).
    """
    n = logits.shape[0]
    if score.bound == "cross_entropy":
        indices = targets.numel() == n and targets.shape != logits.shape  # (n,) or (n, 1) class indices
        if logits.ndim != 2 or not (indices or targets.shape == logits.shape):
            raise ValueError(
                f"{score.owner or 'Score'}(score='grad_norm') with `bound='cross_entropy'` needs logits of shape "
                f"(n, C) and class indices (n,) or probabilities (n, C); got {score.logits_key!r} "
                f"{tuple(logits.shape)} and {score.target_key!r} {tuple(targets.shape)} ({targets.dtype}). For "
                "other shapes use `bound='autograd'` with `loss_fn`."
            )
        if score.class_weights is not None and len(score.class_weights) != logits.shape[1]:
            raise ValueError(
                f"`class_weights` has {len(score.class_weights)} entries but the logits have {logits.shape[1]} classes."
            )
    elif score.bound in ("bce", "mse") and logits.reshape(n, -1).shape != targets.reshape(n, -1).shape:
        raise ValueError(
            f"{score.owner or 'Score'}(score='grad_norm') with `bound={score.bound!r}` needs outputs and targets of "
            f"the same shape; got {score.logits_key!r} {tuple(logits.shape)} and {score.target_key!r} "
            f"{tuple(targets.shape)}."
        )


def check_class_shapes(score: Any, logits: Tensor, targets: Tensor) -> None:
    """``deviation`` and ``margin`` read class probabilities: logits ``(n, C)``, class labels or one-hot rows."""
    n = logits.shape[0]
    labels = targets.numel() == n and targets.ndim <= 2  # (n,) or (n, 1); their values are checked when resolved
    if logits.ndim != 2 or logits.shape[1] < 2 or not (labels or targets.shape == logits.shape):
        raise ValueError(
            f"{score.owner or 'Score'}(score={score.name!r}) needs class scores {score.logits_key!r} of shape (n, C) "
            f"with C >= 2 and targets {score.target_key!r} that are class labels (n,) or probability or one-hot "
            f"rows (n, C); got {tuple(logits.shape)} and {tuple(targets.shape)} ({targets.dtype}). For "
            "regression targets use `score='loss'` or `Score('grad_norm', bound='mse')`."
        )


def class_labels(score: Any, logits: Tensor, targets: Tensor) -> Tensor:
    """Class labels in ``[0, C)`` from targets (argmax of rows); refuses values that are not class labels.

    Raises:
        ValueError: a label that is not an integer in ``[0, C)`` (a regression target, say).
    """
    labels = labels_of(targets)
    classes = logits.shape[-1]
    bad = (labels < 0) | (labels >= classes)
    if labels.is_floating_point():
        bad |= labels != labels.round()
    if bool(bad.any()):  # at a synchronisation point (or a selection step): the host reads it anyway
        value = float(labels[bad][0])
        raise ValueError(
            f"{score.owner or 'Score'}(score={score.name!r}) reads {score.target_key!r} as class labels in "
            f"[0, {classes}), but got {value:g}: these targets are not class labels. For regression targets use "
            "`score='loss'` or `Score('grad_norm', bound='mse')`."
        )
    return labels.long()


def rows(outputs: Mapping[str, Any], key: str, n: int, owner: str, scalar: bool = False) -> Tensor:
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


def labels_of(targets: Tensor) -> Tensor:
    """Class labels: ``argmax`` of probability (or one-hot) rows, else the targets as a flat vector."""
    return targets.argmax(-1) if targets.ndim == 2 and targets.shape[1] > 1 else targets.reshape(-1)


def concatenable(*groups: list[Tensor]) -> bool:
    """Whether each group's tensors can be concatenated along dim 0 (same trailing shape, dtype and device)."""
    return all(
        all(t.shape[1:] == g[0].shape[1:] and t.dtype == g[0].dtype and t.device == g[0].device for t in g)
        for g in groups
    )
