"""The presample engine that runs every online selection method: a rule and a switch plugged into one callback.

Each selecting step scores a presample of ``B = presample * b`` points with one call of ``training_step`` in eval
mode without gradients; the rule picks points and weights; the incoming batch is replaced in place by them, so only
they go through forward and backward. The switch decides which steps select. The presample comes from (the mode):

- ``indexed``: the loader's ``b`` points and ``B - b`` extra points drawn uniformly with replacement from this
  process's shard of a ``PrioritizedDataModule``'s training set, through a second DataLoader;
- ``device``: the same draws, gathered from the training set's tensors held on the module's device;
- ``large_batch``: the loader yields ``B`` points (any loader, streams included) and the step keeps about ``b``;
  a step that does not select trains on the batch's first ``b`` points.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_per._checks import check_choice, check_int
from lightning_per.batch import PrioritizedBatch
from lightning_per.plumbing.inference import scoring_step
from lightning_per.plumbing.internals import logs_this_step
from lightning_per.plumbing.publish import publish, publish_due
from lightning_per.plumbing.requirements import require_batch
from lightning_per.plumbing.sync import checkpoint_due
from lightning_per.score import ScoreArg, as_score
from lightning_per.selection.cost import SelectionCost, summarise
from lightning_per.selection.irreducible import find_irreducible, register_reader
from lightning_per.selection.presample import ExtraPoints, derive_seed
from lightning_per.selection.rules import SelectionRule
from lightning_per.selection.sources import DeviceExtras, LargeBatch, keep_points, resolve_source
from lightning_per.selection.switches import AfterWarmup, Switch

__all__ = ["SELECTION_MODES", "OnlineSelection", "SelectionMode"]

SelectionMode = Literal["auto", "indexed", "device", "large_batch"]
SELECTION_MODES: tuple[str, ...] = get_args(SelectionMode)

_NOISY_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


class OnlineSelection(Callback):
    """Trains each selecting step on the points ``rule`` picks from a scored presample of ``B = presample * b``.

    The named methods are this engine with a rule and a switch (``TopKSelection``, ``SelectiveBackprop``,
    ``ImportanceSamplingCallback``); give it your own ``SelectionRule`` to try another. One online-selection
    callback per Trainer.

    Args:
        rule: picks the points and their weights (``lightning_per.selection.rules``).
        switch: which steps select (``None``: every step, ``AfterWarmup(0)``).
        presample: ``B / b``, an integer >= 2.
        score: the score handed to the rule (a name, a ``Score`` or ``fn(outputs, batch)``).
        seed: seed of the extra presample points and of the rule's draws (derived per process and per step).
        prog_bar: the ``per/`` figures the progress bar shows.
        mode: where the presample comes from (see the module): ``auto`` is ``device`` for a
            ``PrioritizedDataModule`` over tensors (a ``TensorDataset`` or a ``Subset`` of one, default collate),
            ``indexed`` for any other ``PrioritizedDataModule``, and ``large_batch`` for any other loader.

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, manual optimization, another selection
            callback, ``mode='indexed'``/``'device'`` without a ``PrioritizedDataModule``, or ``score='reducible'``
            without an ``IrreducibleLoss`` callback.
        TypeError: at setup, ``mode='device'`` over a training set that is not tensors.

    Example:
        >>> from lightning_per.selection.rules import TopK
        >>> selection = OnlineSelection(TopK(), presample=4, score="loss")
        >>> selection.presample, type(selection.switch).__name__
        (4, 'AfterWarmup')
    """

    def __init__(
        self,
        rule: SelectionRule,
        switch: Switch | None = None,
        presample: int = 2,
        score: ScoreArg = "loss",
        seed: int = 0,
        prog_bar: Sequence[str] = ("per/is_active",),
        mode: SelectionMode = "auto",
    ) -> None:
        check_int("presample", presample, 2, hint="The presample has `presample * batch_size` points.")
        check_int("seed", seed, 0)
        check_choice("mode", mode, SELECTION_MODES)
        self.rule = rule
        self.switch: Switch = switch if switch is not None else AfterWarmup(0)
        self.presample = presample
        self.score = score
        self.seed = seed
        self.prog_bar = tuple(prog_bar)
        self.mode = mode
        self._scorer = as_score(score, type(self).__name__)
        self._extras: ExtraPoints | DeviceExtras | LargeBatch = ExtraPoints(presample, seed)
        self._mode = "indexed"  # the mode in use (resolved from `mode` at setup)
        self._cost = SelectionCost()
        self._selection_steps = 0  # seeds each step's draw
        self._step_selected = False
        self._step_scores: Tensor | None = None
        self._step_stats: dict[str, float] = {}
        self._since_log: dict[str, Any] = {}
        self._log_epoch = -1
        self._run_steps = 0  # of this run (a resumed run counts on), for the summary at its end
        self._run_selected = 0
        self._noted_eval = False
        self._warned_nonfinite = False
        self._trainer: Trainer | None = None
        self._generator: torch.Generator | None = None  # re-seeded for every step's draw

    _wording = ("selected from a presample", "selected from a presample")
    """How the summary says that some steps selected, and that none did."""

    @property
    def cost(self) -> SelectionCost:
        """What selection has cost this run: points scored without gradients, points trained on, host seconds."""
        return self._cost

    @property
    def resolved_mode(self) -> str:
        """Where this fit's presamples come from: ``indexed``, ``device`` or ``large_batch`` (``mode`` resolved)."""
        return self._mode

    @property
    def last_step_was_selected(self) -> bool:
        """Whether the last (or current) training step trained on points chosen from a presample."""
        return self._step_selected

    # ------------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        self._run_steps = self._run_selected = 0  # a resumed run's counts are restored after this
        self._cost = SelectionCost()
        name = type(self).__name__
        self._mode, self._extras = resolve_source(self.mode, trainer, self.presample, self.seed, name)
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        others = [type(c).__name__ for c in callbacks if isinstance(c, OnlineSelection) and c is not self]
        if others:
            raise ValueError(
                f"{name} and {others[0]} are both in the Trainer's callbacks: each replaces every training batch by "
                "the points it selects, so their selections would compound (a selection of a selection) and neither "
                "would do what it says. Keep one online-selection callback per Trainer."
            )
        if not pl_module.automatic_optimization:
            raise ValueError(
                f"{name} scores each presample by calling `training_step` without gradients, which needs automatic "
                "optimization (a manual `training_step` runs its own backward and optimizer step); got "
                "`automatic_optimization=False`."
            )
        if self._scorer.name == "reducible":
            register_reader(trainer, name, self._scorer)  # refused now, not at the first step
        start = getattr(self.switch, "start", None)
        if callable(start):
            start()
        if not self._noted_eval and any(isinstance(m, _NOISY_LAYERS) for m in pl_module.modules()):
            self._noted_eval = True
            rank_zero_info(
                f"{name}: the model has BatchNorm or Dropout layers; presamples are scored in eval mode (running "
                "statistics, no dropout) and training mode is restored."
            )

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._extras.close()
        if self._scorer.name == "reducible":
            irreducible = find_irreducible(trainer, type(self).__name__)
            self._scorer.attach_irreducible(irreducible.source())

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not isinstance(batch, PrioritizedBatch) and self._mode == "large_batch":
            raise TypeError(
                f"{type(self).__name__} got a training batch of type {type(batch).__name__}: it installs its collate "
                "function on a loader given to `trainer.fit(model, train_dataloaders=loader)`, but this one came from "
                "a `train_dataloader()` hook (or was rebuilt by Lightning). Build the loader with "
                "`collate_fn=lightning_per.StreamCollate(your_collate_fn)`."
            )
        require_batch(batch, type(self).__name__, uniform=True)
        self.switch.starts_step(pl_module.device)
        self._step_selected = False
        self._step_scores = None
        self._step_stats = {}
        if self.switch.selects(trainer):
            self._selection_step(trainer, pl_module, batch, batch_idx)
        elif self._mode == "large_batch":  # a step that does not select trains on b of the B points, as it would
            keep_points(batch, torch.arange(self._b(batch), device=batch.index.device), None)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.switch.ends_step(pl_module.device, self._step_selected)
        self.switch.observe(outputs, batch, self._step_scores, self._scorer)
        self._step_scores = None
        self._count(outputs, batch)
        writes = logs_this_step(trainer)
        due = publish_due(trainer, batch_idx)  # `writes`, or the epoch's last batch
        if due or checkpoint_due(trainer) or self.switch.due():
            self._synchronise(trainer, pl_module)
        if writes or (due and self._log_epoch != trainer.current_epoch):  # at an epoch's end once
            self._log(trainer, writes)
            self._log_epoch = trainer.current_epoch

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._synchronise(trainer, pl_module)  # a checkpoint saved at the validation's end holds every step

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._synchronise(trainer, pl_module)  # every process ends training together
        self._extras.close()
        self._summarise()

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._extras.close()

    # ------------------------------------------------------------------------------------------ the step
    def _selection_step(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch, i: int) -> None:
        start = time.perf_counter()
        try:
            self._select(trainer, pl_module, batch, i)
        finally:  # the host's time of the whole selection: the extra points' loading, the scoring forward, the rule
            self._cost.seconds += time.perf_counter() - start

    def _select(self, trainer: Trainer, pl_module: LightningModule, batch: PrioritizedBatch, i: int) -> None:
        presample = self._extras.presample(trainer, pl_module, batch)
        self._cost.scored += presample.batch_size
        outputs = scoring_step(pl_module, presample, i, trainer)
        if outputs is None or (isinstance(outputs, Mapping) and not outputs):
            return  # `training_step` skips this presample (returned None): the incoming batch trains as it is
        scores = self._scorer(outputs, presample)
        self._step_scores = scores
        device = scores.device  # the rule draws where the scores are
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
        generator = self._generator.manual_seed(derive_seed(self.seed, trainer.global_rank, self._selection_steps))
        self._selection_steps += 1
        choice = self.rule.choose(scores, self._b(batch), generator)
        if choice is None:
            if not bool(torch.isfinite(scores).any()) and not self._warned_nonfinite:
                self._warned_nonfinite = True
                rank_zero_warn(
                    f"{type(self).__name__}: no finite score in a presample of {scores.numel()} points (NaN/inf from "
                    "the model or the score); this step trained on the incoming batch. Warned once."
                )
            if self._mode == "large_batch":
                keep_points(batch, torch.arange(self._b(batch), device=batch.index.device), None)
            return
        like = batch if self._mode != "large_batch" else None  # the incoming batch (b points) tells fields apart
        keep_points(presample, choice.positions, choice.weights, like=like, into=batch)
        self._step_selected = True
        self._step_stats = choice.stats

    def _b(self, batch: PrioritizedBatch) -> int:
        """The points a step trains on: the batch's size, or a ``presample``-th of a large batch (at least 1)."""
        return max(1, batch.batch_size // self.presample) if self._mode == "large_batch" else batch.batch_size

    def _count(self, outputs: Any, batch: Any) -> None:
        """The step's counts and statistics, for the logged means and the summary."""
        acc = self._since_log
        acc["steps"] = acc.get("steps", 0) + 1
        self._run_steps += 1
        self._cost.trained += batch.batch_size if isinstance(batch, PrioritizedBatch) else 0
        if not self._step_selected:
            return
        self._run_selected += 1
        acc["selected"] = acc.get("selected", 0) + 1
        for key, value in self._step_stats.items():
            acc[key] = acc.get(key, 0.0) + value
        losses = outputs.get(self._scorer_loss_key) if isinstance(outputs, Mapping) else None
        if isinstance(losses, Tensor) and losses.ndim >= 1 and losses.numel():
            acc["loss_steps"] = acc.get("loss_steps", 0) + 1
            acc["loss"] = acc.get("loss", 0.0) + losses.detach().float().mean()  # a tensor: no host sync

    @property
    def _scorer_loss_key(self) -> str:
        return getattr(self._scorer, "loss_key", "per_sample_loss")

    def _synchronise(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rule.synchronise(trainer, pl_module)
        self.switch.synchronise(trainer, pl_module, self._scorer)

    def _log(self, trainer: Trainer, writes: bool) -> None:
        """Means since the last logger write; only a writing step starts new means (see ``plumbing.publish``)."""
        acc = self._since_log
        steps, selected = acc.get("steps", 0), acc.get("selected", 0)
        metrics = {"per/is_active": selected / max(1, steps), **self._cost.metrics(), **self.switch.metrics()}
        for key, value in acc.items():
            if key not in ("steps", "selected", "loss_steps", "loss") and selected:
                metrics[f"per/{key}"] = float(value) / selected
        if acc.get("loss_steps"):
            metrics["per/loss_unweighted"] = float(acc["loss"]) / acc["loss_steps"]
        publish(trainer, metrics, to_loggers=writes, prog_bar=self.prog_bar)
        if writes:
            self._since_log = {}

    def _summarise(self) -> None:
        """Say at the end of training how many steps selected, why none did, and what the selection cost."""
        steps, selected = self._run_steps, self._run_selected
        if not steps:
            return
        name = type(self).__name__
        reducible = self._scorer.name == "reducible" and self._trainer is not None
        auxiliary = find_irreducible(self._trainer, name).cost_units if reducible else 0.0  # type: ignore[arg-type]
        said = self.switch.summary(steps, selected)
        summarise(name, steps, selected, said, self._wording, self._cost.describe(auxiliary))

    # ------------------------------------------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        # no collective and no change of state: a checkpoint may be built on one process alone
        return {
            "selection_steps": self._selection_steps,
            "extra_batches": self._extras.batches_drawn,
            "run_steps": self._run_steps,
            "run_selected": self._run_selected,
            "cost": self._cost.state_dict(),
            "score": self._scorer.state_dict(),
            "rule": self.rule.state_dict(),
            "switch": self.switch.state_dict(self._scorer),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = self._trainer.global_rank if self._trainer is not None else 0
        self._selection_steps = int(state_dict.get("selection_steps", 0))
        self._extras.batches_drawn = int(state_dict.get("extra_batches", 0))
        self._run_steps = int(state_dict.get("run_steps", 0))
        self._run_selected = int(state_dict.get("run_selected", 0))
        self._cost.load_state_dict(state_dict.get("cost", {}))
        self._scorer.load_state_dict(state_dict.get("score", {}))
        self.rule.load_state_dict(state_dict.get("rule", {}), rank)
        self.switch.load_state_dict(state_dict.get("switch", {}), rank)
        self._extras.close()
