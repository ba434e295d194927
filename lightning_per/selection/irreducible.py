"""IrreducibleLoss: the loss of every training sample under a small model trained on a holdout set (RHO-LOSS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import Dataset
from typing_extensions import override

from lightning_per._checks import check_choice, check_int
from lightning_per.batch import PrioritizedBatch
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.functional.sequences import TOKEN_REDUCTIONS, TokenReduction
from lightning_per.outputs import per_sample_losses
from lightning_per.plumbing.inference import scoring_mode
from lightning_per.plumbing.requirements import require_datamodule
from lightning_per.score import Score
from lightning_per.selection.holdout import (
    fit_holdout_model,
    from_the_holdout_model,
    resolve_holdout,
    score_training_set,
)

__all__ = ["IrreducibleLoss", "IrreducibleMode", "find_irreducible", "register_reader"]

IrreducibleMode = Literal["auto", "table", "on_the_fly"]


class IrreducibleLoss(Callback):
    """Trains a small model on a holdout set once, then records the loss of every training sample under it.

    The irreducible loss of Mindermann et al. (ICML 2022, RHO-LOSS), which the ``reducible`` score subtracts from the
    current loss. At the start of ``fit`` the callback trains ``model`` on the holdout (a short Lightning fit of its
    own, on this process's device, with the main Trainer's accelerator and precision; under DDP every process trains
    its own copy from the same seed), then computes the loss of every training sample under it: one float32 per
    sample, by dataset index, the same on every process (``table``). The table is saved in checkpoints and not
    computed again on resume; its cost in forward-sample units (a forward 1, a forward and backward 3) is
    ``cost_units``.

    Args:
        model: the irreducible-loss model, a LightningModule whose ``training_step`` returns per-sample losses under
            ``loss_key``; trained here unless ``train=False``.
        holdout_dataset: the holdout set (``None``: the DataModule's ``holdout_dataset``, from
            ``PrioritizedDataModule(holdout_fraction=...)``, which removes it from training).
        max_epochs: epochs of the model's training on the holdout.
        batch_size: batch size of that training and of the pass over the training set (``None``: the DataModule's,
            or 32 without one; with a selection callback in ``large_batch`` mode, give the small batch ``b``).
        train: train ``model`` on the holdout (``False``: it is already trained).
        loss_key: key of the per-sample losses in ``model``'s ``training_step`` output.
        seed: seed of the model's training (the main run's random state is left as it was).
        mode: ``table`` (by dataset index, from a ``PrioritizedDataModule``), ``on_the_fly`` (the model's losses on
            each presample, for a stream) or ``auto`` (``table`` with a ``PrioritizedDataModule`` or a
            ``table_path``, else ``on_the_fly``).
        table_path: a file of precomputed irreducible losses, one per sample id (``torch.save`` of a 1-D float
            tensor, e.g. ``IrreducibleLoss.table`` of an earlier run): no model is trained, and each batch's losses
            are read by its sample ids: a ``PrioritizedDataModule``'s dataset indices or, on a stream, the ids
            ``StreamCollate(index_key=...)`` reads from a field of each sample.
        token_reduction: per-token losses ``(n, T)`` of sequences to one loss per sequence: ``mean`` over its real
            tokens (as ``Score``'s default) or ``sum``; use the same as the score that reads the table.

    Raises:
        TypeError: ``model`` is not a LightningModule; at setup, training data that does not come from a
            ``PrioritizedDataModule``.
        ValueError: a bad argument; at setup, no ``model`` or no holdout; at fit start, a saved table of another
            length, or a model whose ``training_step`` does not return one loss per sample under ``loss_key``; during
            training, a stream batch without sample ids (or with ids beyond ``table_path``'s table).

    Example:
        >>> from lightning_per.examples import Classifier
        >>> irreducible = IrreducibleLoss(model=Classifier(in_features=4), max_epochs=10)
        >>> irreducible.table is None  # computed at the start of fit
        True
    """

    def __init__(
        self,
        model: LightningModule | None = None,
        holdout_dataset: Dataset | None = None,
        max_epochs: int = 10,
        batch_size: int | None = None,
        train: bool = True,
        loss_key: str = "per_sample_loss",
        seed: int = 0,
        mode: IrreducibleMode = "auto",
        table_path: str | None = None,
        token_reduction: TokenReduction = "mean",
    ) -> None:
        if model is not None and not isinstance(model, LightningModule):
            raise TypeError(f"`model` must be a LightningModule, got {type(model).__name__}.")
        check_int("max_epochs", max_epochs, 1)
        check_int("batch_size", batch_size, 1, optional=True)
        check_int("seed", seed)
        check_choice("mode", mode, get_args(IrreducibleMode))
        if table_path is not None and (mode == "on_the_fly" or model is not None):
            raise ValueError(
                f"IrreducibleLoss(table_path={table_path!r}) reads precomputed losses by sample id: it takes no "
                f"`model` and no mode='on_the_fly' (got model={type(model).__name__ if model else None}, "
                f"mode={mode!r}). Pass either `table_path` or a holdout `model`."
            )
        self.table_path = table_path
        check_choice("token_reduction", token_reduction, TOKEN_REDUCTIONS)
        self.mode = mode
        self.model = model
        self.holdout_dataset = holdout_dataset
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.train = train
        self.loss_key = loss_key
        self.seed = seed
        self.token_reduction = token_reduction
        self.table: Tensor | None = None
        self.cost_units = 0.0
        self.seconds = 0.0
        self._sizes: tuple[int, int] | None = None  # (training set, holdout) the table was computed for
        self._readers = 0  # callbacks that read the table (`score='reducible'`), counted at their setup
        self._on_the_fly = False  # this fit computes the losses of each presample instead of a table
        self._trainer: Trainer | None = None

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        indexed = isinstance(getattr(trainer, "datamodule", None), PrioritizedDataModule)
        from_file = self.table_path is not None
        self._on_the_fly = self.mode == "on_the_fly" or (self.mode == "auto" and not indexed and not from_file)
        self._trainer = trainer
        datamodule = getattr(trainer, "datamodule", None)
        if from_file:
            return
        if not self._on_the_fly:
            datamodule = require_datamodule(trainer, "IrreducibleLoss", why=" (the table is indexed like its samples)")
        if self.model is None:
            raise ValueError("IrreducibleLoss needs `model`: the small model to train on the holdout set.")
        if resolve_holdout(self.holdout_dataset, datamodule) is None and self.train:
            raise ValueError(
                "IrreducibleLoss has no holdout set to train on: pass `holdout_dataset=...`, or hold out part of the "
                "training set with `PrioritizedDataModule(holdout_fraction=0.25)` (removed from training), or pass an "
                "already trained model with `train=False`."
            )

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._on_the_fly:
            self._start_on_the_fly(trainer, pl_module)
            return
        if self.table_path is not None:
            self._load_table(getattr(trainer, "datamodule", None))
            return
        datamodule: PrioritizedDataModule = trainer.datamodule  # type: ignore[attr-defined]
        holdout = resolve_holdout(self.holdout_dataset, datamodule)
        sizes = (len(datamodule.train_dataset), len(holdout or []))  # type: ignore[arg-type]
        if self.table is not None:  # restored from a checkpoint
            self._check_restored(sizes)
            return
        if not self._readers:
            rank_zero_warn(
                "IrreducibleLoss: no callback reads the irreducible losses (only `score='reducible'` does: "
                "`TopKSelection()`, `LossTracker(score='reducible')`, ...), so the holdout model is trained and the "
                "training set scored for nothing. Remove IrreducibleLoss (and `holdout_fraction`), or set "
                "`score='reducible'` on the callback that should use them."
            )
        start = time.perf_counter()
        assert self.model is not None
        if self.train:
            self._fit_model(trainer, pl_module, datamodule)
        with from_the_holdout_model(self.model, "scoring the training set with it"):
            self.table = self._compute_table(trainer, pl_module, datamodule)
        self.cost_units += sizes[0]
        self.seconds = time.perf_counter() - start
        self._sizes = sizes
        unknown = int(torch.isnan(self.table).sum())
        if unknown:
            rank_zero_warn(f"IrreducibleLoss: {unknown} training samples have a non-finite irreducible loss (NaN).")
        rank_zero_info(
            f"IrreducibleLoss: {'trained on ' + str(sizes[1]) + ' holdout samples and ' if self.train else ''}scored "
            f"{sizes[0]} training samples in {self.seconds:.2f} s ({self.cost_units:.3g} forward-sample units)."
        )

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._readers = 0  # the readers' setups count themselves in again at the next fit

    def source(self) -> Tensor | Callable[[PrioritizedBatch], Tensor]:
        """What a ``reducible`` score subtracts: the table by dataset index, or a function of the batch."""
        if self._on_the_fly:
            return self.losses
        if self.table_path is not None and not isinstance(self._trainer_datamodule(), PrioritizedDataModule):
            return self.lookup
        assert self.table is not None
        return self.table

    def lookup(self, batch: PrioritizedBatch) -> Tensor:
        """The table's losses at ``batch.index``, the sample ids of a stream (one host read to check them).

        Raises:
            ValueError: a sample without an id (index -1), or an id beyond the table.
        """
        assert self.table is not None
        index = batch.index
        low, high = (int(v) for v in torch.aminmax(index)) if index.numel() else (0, 0)
        if low < 0:
            raise ValueError(
                "IrreducibleLoss(table_path=...) reads each sample's irreducible loss by its id, but this batch's "
                "samples have none (index -1): give the loader `collate_fn=StreamCollate(index_key=...)` naming the "
                "field (a key, or a position in a tuple sample) that holds each sample's integer id."
            )
        if high >= self.table.numel():
            raise ValueError(
                f"A sample id ({high}) is beyond IrreducibleLoss's table of {self.table.numel()} losses from "
                f"{self.table_path!r}: the ids must index that table (0 to {self.table.numel() - 1})."
            )
        if self.table.device != index.device:
            self.table = self.table.to(index.device)
        return self.table[index]

    def losses(self, batch: PrioritizedBatch) -> Tensor:
        """The model's per-sample losses on ``batch`` (eval mode, no gradients), charged to ``cost_units``.

        What the ``reducible`` score subtracts when there is no table: the samples of a stream have no index.
        """
        assert self.model is not None and self._trainer is not None
        with scoring_mode(self.model, self._trainer), from_the_holdout_model(self.model, "scoring a presample"):
            outputs = self.model.training_step(batch, 0)
        self.cost_units += batch.batch_size
        return self._per_sample(outputs, batch)

    def _start_on_the_fly(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Train the model on the holdout (unless trained already) and keep it on the device for ``losses``."""
        assert self.model is not None
        start = time.perf_counter()
        holdout = resolve_holdout(self.holdout_dataset, getattr(trainer, "datamodule", None))
        if self.train and self.cost_units == 0:  # not restored from a checkpoint
            self._fit_model(trainer, pl_module, getattr(trainer, "datamodule", None))
        self.model.to(pl_module.device)
        self.seconds = time.perf_counter() - start
        rank_zero_info(
            f"IrreducibleLoss: {'trained on ' + str(len(holdout)) + ' holdout samples; ' if holdout else ''}the "  # type: ignore[arg-type]
            "irreducible losses are computed on the fly for each presample (the training data has no index)."
        )

    def _load_table(self, datamodule: Any) -> None:
        """Read ``table_path`` (unless restored from a checkpoint) and check it against the training set."""
        if self.table is None:
            path = Path(str(self.table_path))
            if not path.is_file():
                raise ValueError(f"IrreducibleLoss: `table_path` {str(path)!r} is not a file.")
            table = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(table, Tensor) or table.ndim != 1 or not table.is_floating_point():
                got = tuple(table.shape) if isinstance(table, Tensor) else type(table).__name__
                raise ValueError(
                    f"IrreducibleLoss: `table_path` {str(path)!r} must hold a 1-D float tensor (one loss per sample "
                    f"id, saved with `torch.save`); it holds {got}."
                )
            self.table = table.float()
        if isinstance(datamodule, PrioritizedDataModule) and self.table.numel() != len(datamodule.train_dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"IrreducibleLoss: `table_path` {self.table_path!r} holds {self.table.numel()} losses, but the "
                f"training set has {len(datamodule.train_dataset)} samples: the table must have one per sample."  # type: ignore[arg-type]
            )
        rank_zero_info(f"IrreducibleLoss: {self.table.numel()} irreducible losses read from {self.table_path!r}.")

    def _trainer_datamodule(self) -> Any:
        return getattr(self._trainer, "datamodule", None)

    def _per_sample(self, outputs: Any, batch: PrioritizedBatch) -> Tensor:
        """The model's losses, one per sample (per-token losses: one per sequence, over its real tokens)."""
        owner = "IrreducibleLoss (the holdout model)"
        reader = Score(loss_key=self.loss_key, token_reduction=self.token_reduction, owner=owner)
        return per_sample_losses(reader, outputs, batch.batch_size).reshape(-1).float()

    def _fit_model(self, trainer: Trainer, pl_module: LightningModule, datamodule: Any) -> None:
        """Train the model on the holdout set; its cost becomes ``cost_units``."""
        holdout = resolve_holdout(self.holdout_dataset, datamodule)
        assert self.model is not None and holdout is not None
        with from_the_holdout_model(self.model, "training it on the holdout set"):
            self.cost_units = fit_holdout_model(
                self.model, holdout, trainer, pl_module.device, datamodule, self.max_epochs, self.batch_size, self.seed
            )

    def _compute_table(self, trainer: Trainer, pl_module: LightningModule, datamodule: PrioritizedDataModule) -> Tensor:
        assert self.model is not None
        model = self.model.to(pl_module.device)
        return score_training_set(model, trainer, datamodule, self.batch_size, self._per_sample)

    def _check_restored(self, sizes: tuple[int, int]) -> None:
        assert self.table is not None
        if self.table.numel() != sizes[0] or (self._sizes is not None and self._sizes != sizes):
            saved = self._sizes or (self.table.numel(), -1)
            raise ValueError(
                f"The checkpoint's irreducible losses are for {saved[0]} training samples (holdout {saved[1]}), but "
                f"this run has {sizes[0]} (holdout {sizes[1]}): the table would be read at other samples' indices. "
                "Resume with the same data and `holdout_fraction`, or start a new run without `ckpt_path`."
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "sizes": list(self._sizes) if self._sizes is not None else None,
            "cost_units": self.cost_units,
            "seconds": self.seconds,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.table = state_dict.get("table")
        sizes = state_dict.get("sizes")
        self._sizes = (int(sizes[0]), int(sizes[1])) if sizes is not None else None
        self.cost_units = float(state_dict.get("cost_units", 0.0))
        self.seconds = float(state_dict.get("seconds", 0.0))


def find_irreducible(trainer: Trainer, owner: str) -> IrreducibleLoss:
    """The Trainer's ``IrreducibleLoss`` callback, for a ``reducible`` score.

    Raises:
        ValueError: there is none.
    """
    found = [c for c in trainer.callbacks if isinstance(c, IrreducibleLoss)]  # type: ignore[attr-defined]
    if not found:
        raise ValueError(
            f"{owner}(score='reducible') needs the irreducible loss of every training sample: add "
            "`lightning_per.IrreducibleLoss(model=...)` to the Trainer's callbacks (it trains a small model on a "
            "holdout set once and computes them)."
        )
    return found[0]


def register_reader(trainer: Trainer, owner: str, score: object) -> IrreducibleLoss:
    """``find_irreducible``, counting ``owner`` (reading with ``score``) as a reader (once per fit, at setup).

    Raises:
        ValueError: ``score`` reduces per-token losses otherwise than the ``IrreducibleLoss``.
    """
    irreducible = find_irreducible(trainer, owner)
    if irreducible.token_reduction != (token_reduction := getattr(score, "token_reduction", "mean")):
        raise ValueError(
            f"{owner}'s score takes the {token_reduction} of each sequence's token losses and IrreducibleLoss the "
            f"{irreducible.token_reduction}: their difference is no reducible loss. Give both one `token_reduction`."
        )
    irreducible._readers += 1
    return irreducible
