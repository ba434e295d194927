"""What ``training_step`` returns, read and checked for a score: one row per sample, class labels, the right shapes.

Per-token losses ``(n, T, ...)`` of sequences become one loss per sequence here (``per_sample_losses``), over the real
tokens (``real_tokens``). Every message names the callback (``score.owner``), the score and the keys, and says how to
return what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from torch import Tensor

from lightning_per.functional.sequences import sequence_losses

__all__ = [
    "TWO_LINE_FIX",
    "check_bound_shapes",
    "check_class_shapes",
    "class_labels",
    "concatenable",
    "labels_of",
    "missing_keys",
    "per_sample_losses",
    "real_tokens",
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
    found = _found(outputs)
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
        sequence = logits.ndim == 3 and targets.shape == logits.shape[:2] and not targets.is_floating_point()
        if not (sequence or (logits.ndim == 2 and (indices or targets.shape == logits.shape))):
            raise ValueError(
                f"{score.owner or 'Score'}(score='grad_norm') with `bound='cross_entropy'` needs logits of shape "
                f"(n, C) and class indices (n,) or probabilities (n, C), or for sequences logits (n, T, C) and class "
                f"indices (n, T); got {score.logits_key!r} "
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


def rows(outputs: Any, key: str, n: int, owner: str, scalar: bool = False) -> Tensor:
    """``outputs[key]``, checked: a tensor with one row per sample (``scalar``: one value per sample).

    Raises:
        ValueError: ``outputs`` has no ``key``, or its value is not one row per sample (the message names the fix).
    """
    one = "value" if scalar else "row"
    prefix = f"{owner}: " if owner else ""
    if not isinstance(outputs, Mapping) or key not in outputs:
        raise ValueError(
            f"{prefix}`training_step` returned {_found(outputs)}, without {key!r}: return one {one} per sample under "
            f"{key!r}, in batch order.\n{TWO_LINE_FIX}"
        )
    value = outputs[key]
    if not isinstance(value, Tensor) or value.ndim == 0 or value.shape[0] != n or (scalar and value.numel() != n):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"{prefix}`training_step` returned {key!r} with shape {got}, but the batch has {n} samples: return one "
            f"{one} per sample (e.g. `reduction='none'`), in batch order.\n{TWO_LINE_FIX}"
        )
    return value


def per_sample_losses(score: Any, outputs: Mapping[str, Any], n: int) -> Tensor:
    """The losses under ``score.loss_key``, detached, one per sample.

    Per-token losses ``(n, T, ...)`` become one loss per sequence, the mean (``score.token_reduction="mean"``,
    length-normalised) or the sum over its real tokens (``real_tokens``).

    Raises:
        ValueError: not one row per sample, or a mask of another shape.
    """
    losses = rows(outputs, score.loss_key, n, score.owner).detach()
    if losses.numel() == n:
        return losses
    return sequence_losses(losses, real_tokens(score, outputs, losses), score.token_reduction)


def real_tokens(score: Any, outputs: Mapping[str, Any], like: Tensor) -> Tensor | None:
    """Which tokens of per-token values ``like`` are real (bool), or ``None``: all of them.

    ``outputs[score.mask_key]`` (an attention mask, bool or 0/1) when ``training_step`` returns it; else
    ``outputs[score.target_key] != score.ignore_index`` when those are integer targets of the shape of ``like``.

    Raises:
        ValueError: a mask of another shape.
    """
    if score.mask_key in outputs:
        mask = outputs[score.mask_key]
        if not isinstance(mask, Tensor) or mask.shape != like.shape:
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(
                f"{score.owner or 'Score'}: `training_step` returned the mask {score.mask_key!r} with shape {got}, but "
                f"the per-token values have shape {tuple(like.shape)}: return one entry per token (True: real)."
            )
        return mask.detach().bool()
    targets = outputs.get(score.target_key)
    if isinstance(targets, Tensor) and targets.shape == like.shape and not targets.is_floating_point():
        return targets.detach() != score.ignore_index
    return None


def _found(outputs: Any) -> str:
    """What ``training_step`` returned, for a message: its keys, or its type."""
    return f"the keys {sorted(outputs)}" if isinstance(outputs, Mapping) else f"a {type(outputs).__name__}"


def labels_of(targets: Tensor) -> Tensor:
    """Class labels: ``argmax`` of probability (or one-hot) rows, else the targets as a flat vector."""
    return targets.argmax(-1) if targets.ndim == 2 and targets.shape[1] > 1 else targets.reshape(-1)


def concatenable(*groups: list[Tensor]) -> bool:
    """Whether each group's tensors can be concatenated along dim 0 (same trailing shape, dtype and device)."""
    return all(
        all(t.shape[1:] == g[0].shape[1:] and t.dtype == g[0].dtype and t.device == g[0].device for t in g)
        for g in groups
    )
