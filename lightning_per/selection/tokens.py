"""TokenSelection: Rho-1's token-level selection, the top share of a batch's tokens by excess loss over a reference."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_per._checks import check_int, check_number
from lightning_per.batch import PrioritizedBatch, TokenChoice
from lightning_per.outputs import rows
from lightning_per.plumbing.inference import scoring_mode
from lightning_per.plumbing.internals import logs_this_step
from lightning_per.plumbing.publish import publish, publish_due
from lightning_per.plumbing.requirements import require_batch, require_datamodule
from lightning_per.selection.engine import OnlineSelection
from lightning_per.selection.holdout import fit_holdout_model, resolve_holdout

__all__ = ["TokenSelection"]


class TokenSelection(Callback):
    """Trains each step on the top ``keep`` share of the batch's real tokens by excess loss over a reference model.

    Rho-1 (Lin et al. 2024, "Not All Tokens Are What You Need"). Before every training step the reference model
    scores the batch without gradients: its ``training_step`` in eval mode, logging muted, returning per-token
    losses ``(n, T)`` under ``loss_key``, as your module's does. The callback attaches them to the batch
    (``batch.tokens``), and ``weighted_mean(token_losses, batch)`` in your ``training_step`` keeps the share
    ``keep`` of the batch's real tokens whose excess loss ``loss - reference loss`` is highest and masks the rest
    out of the loss (scaled by ``1 / keep``, so the loss keeps its size); nothing else in your code changes.

    The reference is used as given (``train=False``: a model you trained, e.g. on cleaner data), or trained first on
    a holdout set (``train=True``: the ``PrioritizedDataModule(holdout_fraction=...)`` holdout or
    ``holdout_dataset``, exactly as ``IrreducibleLoss`` trains its model). Its cost is counted: ``cost_units``, the
    training before the first step (3 forward-sample units per holdout sequence and epoch, as ``IrreducibleLoss``'s),
    and the forward of every training batch, ``reference_tokens`` in forward-token units (1 per token; a forward and
    backward costs 3) and ``reference_units`` in sequences; both are logged (``per/reference_tokens``) and
    summarised at the end. Masking tokens out saves no compute in the step itself: every token still goes through
    the model's forward and backward.

    Args:
        reference: the reference model, a LightningModule taking the training batches and returning per-token
            losses under ``loss_key`` (a ``class_path`` in YAML).
        keep: the share of each batch's real tokens kept in the loss, in (0, 1] (Rho-1 keeps 60-70%).
        train: train ``reference`` on the holdout at the start of fit (``False``: use it as given).
        holdout_dataset: the holdout to train it on (``None``: the DataModule's ``holdout_dataset``).
        max_epochs: epochs of that training.
        batch_size: batch size of that training (``None``: the DataModule's).
        loss_key: key of the per-token losses in the reference's ``training_step`` output.
        seed: seed of that training (the main run's random state is left as it was).

    Raises:
        TypeError: ``reference`` is not a LightningModule; at setup, training data that does not come from a
            ``PrioritizedDataModule``.
        ValueError: a bad argument; at setup, no reference, ``train=True`` without a holdout, or an online-selection
            callback after this one; during training, a reference output that is not per-token losses.

    Example:
        >>> from lightning_per.examples import CausalLM
        >>> selection = TokenSelection(reference=CausalLM(width=16, layers=1), keep=0.6)
        >>> selection.keep, selection.reference_tokens
        (0.6, 0)
    """

    def __init__(
        self,
        reference: LightningModule | None = None,
        keep: float = 0.6,
        train: bool = False,
        holdout_dataset: Dataset | None = None,
        max_epochs: int = 10,
        batch_size: int | None = None,
        loss_key: str = "per_sample_loss",
        seed: int = 0,
    ) -> None:
        if reference is not None and not isinstance(reference, LightningModule):
            raise TypeError(f"`reference` must be a LightningModule, got {type(reference).__name__}.")
        check_number("keep", keep, 0.0, 1.0, low_open=True, hint="Rho-1 keeps 0.6 to 0.7 of the tokens.")
        check_int("max_epochs", max_epochs, 1)
        check_int("batch_size", batch_size, 1, optional=True)
        check_int("seed", seed)
        self.reference = reference
        self.keep = keep
        self.train = train
        self.holdout_dataset = holdout_dataset
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.loss_key = loss_key
        self.seed = seed
        self.cost_units = 0.0  # the reference's training before the first step, in forward-sample units
        self.seconds = 0.0  # its seconds
        self.reference_tokens = 0  # tokens the reference scored during training (1 forward-token unit each)
        self.reference_units = 0  # sequences it scored (1 forward-sample unit each)
        self.reference_seconds = 0.0
        self.trained_tokens = 0  # tokens of the training batches (3 forward-token units each)
        self.last_step_units = 0  # sequences the reference scored for the last step (the benchmarks charge them)
        self._trained = False  # the reference was trained here (and is saved in checkpoints)
        self._kept: list[Tensor] = []  # the share of real tokens kept, per step since the last logger write
        self._warned = False

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = require_datamodule(trainer, "TokenSelection", why=" (the reference losses ride on its batches)")
        if self.reference is None:
            raise ValueError("TokenSelection needs `reference`: the model whose per-token losses the excess is over.")
        if self.train and not self._trained and resolve_holdout(self.holdout_dataset, datamodule) is None:
            raise ValueError(
                "TokenSelection(train=True) has no holdout set to train the reference on: pass `holdout_dataset=...` "
                "or `PrioritizedDataModule(holdout_fraction=0.1)`, or pass a trained reference with `train=False`."
            )
        callbacks = list(trainer.callbacks)  # type: ignore[attr-defined]
        later = [type(c).__name__ for c in callbacks[callbacks.index(self) + 1 :] if isinstance(c, OnlineSelection)]
        if later:
            raise ValueError(
                f"TokenSelection comes before {later[0]} in the Trainer's callbacks, so it would score the batch "
                f"{later[0]} then replaces: put TokenSelection after it."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self.reference is not None
        if self.train and not self._trained:
            start = time.perf_counter()
            datamodule = trainer.datamodule  # type: ignore[attr-defined]
            holdout = resolve_holdout(self.holdout_dataset, datamodule)
            assert holdout is not None  # checked at setup
            device = pl_module.device
            self.cost_units = fit_holdout_model(
                self.reference, holdout, trainer, device, datamodule, self.max_epochs, self.batch_size, self.seed
            )
            self.seconds = time.perf_counter() - start
            self._trained = True
            held = len(holdout)  # type: ignore[arg-type]
            rank_zero_info(
                f"TokenSelection: trained the reference on {held} holdout sequences in {self.seconds:.2f} s "
                f"({self.cost_units:.3g} forward-sample units)."
            )
        self.reference.to(pl_module.device)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        batch = require_batch(batch, "TokenSelection")
        assert self.reference is not None
        start = time.perf_counter()
        with scoring_mode(self.reference, trainer):
            outputs = self.reference.training_step(batch, batch_idx)
        losses = rows(outputs, self.loss_key, batch.batch_size, "TokenSelection (the reference)")
        if losses.ndim < 2:
            raise ValueError(
                f"TokenSelection: the reference's `training_step` must return per-token losses (n, T) under "
                f"{self.loss_key!r} (e.g. `F.cross_entropy(logits.transpose(1, 2), y, reduction='none')`); got "
                f"{tuple(losses.shape)}."
            )
        batch.tokens = TokenChoice(losses.detach(), self.keep)
        self.reference_seconds += time.perf_counter() - start
        self.reference_tokens += losses.numel()
        self.reference_units += batch.batch_size
        self.trained_tokens += losses.numel()
        self.last_step_units = batch.batch_size

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        tokens = batch.tokens if isinstance(batch, PrioritizedBatch) else None
        if tokens is not None and tokens.kept is not None:
            self._kept.append(tokens.kept)
        elif tokens is not None and not self._warned:
            self._warned = True
            rank_zero_warn(
                "TokenSelection: `training_step` did not pass the per-token losses to `weighted_mean(losses, batch)`, "
                "so no token was selected this step: return `weighted_mean(token_losses, batch)` as the loss. Warned "
                "once."
            )
        writes = logs_this_step(trainer)
        if publish_due(trainer, batch_idx):
            metrics = {
                "per/reference_tokens": float(self.reference_tokens),
                "per/reference_seconds": self.reference_seconds,
            }
            if self._kept:
                metrics["per/kept_token_fraction"] = float(torch.stack(self._kept).float().mean())
            publish(trainer, metrics, to_loggers=writes, prog_bar=("per/kept_token_fraction",))
            if writes:
                self._kept = []

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.trained_tokens:
            return
        training = 3 * self.trained_tokens
        before = (
            f", after the reference's training ({self.cost_units:,.0f} forward-sample units)" if self._trained else ""
        )
        rank_zero_info(
            f"TokenSelection: kept {self.keep:.0%} of the real tokens of every step; the reference scored "
            f"{self.reference_tokens:,} tokens ({self.reference_tokens / training:.2g}x the {training:,} forward-token "
            f"units of training) in {self.reference_seconds:.2f} s{before}."
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.state_dict() if self._trained and self.reference is not None else None,
            "cost_units": self.cost_units,
            "seconds": self.seconds,
            "reference_tokens": self.reference_tokens,
            "reference_units": self.reference_units,
            "reference_seconds": self.reference_seconds,
            "trained_tokens": self.trained_tokens,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        weights = state_dict.get("reference")
        if weights is not None and self.reference is not None:
            self.reference.load_state_dict(weights)  # trained before: not trained again on resume
            self._trained = True
        self.cost_units = float(state_dict.get("cost_units", 0.0))
        self.seconds = float(state_dict.get("seconds", 0.0))
        self.reference_tokens = int(state_dict.get("reference_tokens", 0))
        self.reference_units = int(state_dict.get("reference_units", 0))
        self.reference_seconds = float(state_dict.get("reference_seconds", 0.0))
        self.trained_tokens = int(state_dict.get("trained_tokens", 0))
