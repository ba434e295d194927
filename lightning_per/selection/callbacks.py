"""Biased online batch selection as named callbacks: the top-k rule (RHO-LOSS) and Selective Backprop."""

from __future__ import annotations

from lightning_per.score import ScoreArg
from lightning_per.selection.engine import OnlineSelection, SelectionMode
from lightning_per.selection.rules import PercentileKeep, TopK
from lightning_per.selection.switches import AfterWarmup

__all__ = ["SelectiveBackprop", "TopKSelection"]


class TopKSelection(OnlineSelection):
    """Trains each step on the ``b`` highest-scored points of a presample of ``B = presample * b``: RHO-LOSS.

    With the default ``score="reducible"`` (the loss minus the irreducible loss of an ``IrreducibleLoss`` callback)
    this is Mindermann et al.'s reducible holdout loss selection (ICML 2022, ``presample=10``). Every step after
    ``warmup_steps`` scores the presample without gradients and trains on its top ``b`` points with weights 1, so
    the gradient is biased toward them by design; ties go to the earlier point, non-finite scores are never chosen.
    A ``PrioritizedDataModule`` must serve uniform batches; any other loader serves large batches.

    Args:
        presample: ``B / b``, an integer > 1: the share selected is ``1 / presample``.
        score: the score ranked (a name, a ``Score`` or ``fn(outputs, batch)``); ``loss`` gives top-k by plain loss
            (which chases noisy labels).
        warmup_steps: train on the incoming batches, without selection, before this global step.
        seed: seed of the extra presample points.
        mode: where the presample comes from: ``auto``, ``indexed``, ``device`` or ``large_batch`` (see
            ``OnlineSelection``; ``large_batch`` takes any loader, streams included, yielding ``B`` points a step).

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, manual optimization, or ``score='reducible'``
            without an ``IrreducibleLoss`` callback.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> from lightning_per import IrreducibleLoss
        >>> from lightning_per.examples import Classifier
        >>> callbacks = [IrreducibleLoss(model=Classifier(in_features=4)), TopKSelection(presample=10)]
        >>> callbacks[1].presample, callbacks[1].score
        (10, 'reducible')
    """

    def __init__(
        self,
        presample: int = 10,
        score: ScoreArg = "reducible",
        warmup_steps: int = 0,
        seed: int = 0,
        mode: SelectionMode = "auto",
    ) -> None:
        super().__init__(TopK(), AfterWarmup(warmup_steps), presample, score, seed, mode=mode)
        self.warmup_steps = warmup_steps


class SelectiveBackprop(OnlineSelection):
    """Keeps each presample point with probability ``F(score)^selectivity`` and trains on the kept ones.

    Selective Backprop (Jiang et al. 2019): ``F`` is the percentile of a point's score (by default its loss) among
    the last ``history`` scores this process saw, so high-loss points are kept and low-loss ones mostly skipped.
    About ``B / (selectivity + 1)`` of a presample of ``B = presample * b`` points are kept (at least one), so
    ``presample = selectivity + 1`` trains about ``b`` points per step. Weights are 1: the gradient is biased toward
    high-loss points by design. Each step trains on its own kept points (the loader's epochs and step count stay as
    they are). A ``PrioritizedDataModule`` must serve uniform batches; any other loader serves large batches.

    Args:
        selectivity: ``beta`` in Jiang et al., > 0: 1 keeps about half of the points, 3 a quarter.
        presample: ``B / b``, an integer > 1.
        history: how many recent scores ``F`` is computed over (>= 1; the paper uses 1024 to 10,000).
        score: the score (a name, a ``Score`` or ``fn(outputs, batch)``).
        warmup_steps: train on the incoming batches, without selection, before this global step.
        seed: seed of the extra presample points and of the keep decisions.
        mode: where the presample comes from: ``auto``, ``indexed``, ``device`` or ``large_batch`` (see
            ``OnlineSelection``).

    Raises:
        ValueError: a bad argument; at setup, a prioritized strategy, manual optimization, or ``score='reducible'``
            without an ``IrreducibleLoss`` callback.
        TypeError: at setup, training data that does not come from a ``PrioritizedDataModule``.

    Example:
        >>> sb = SelectiveBackprop(selectivity=1.0, presample=2)
        >>> sb.selectivity, sb.history
        (1.0, 1024)
    """

    def __init__(
        self,
        selectivity: float = 1.0,
        presample: int = 2,
        history: int = 1024,
        score: ScoreArg = "loss",
        warmup_steps: int = 0,
        seed: int = 0,
        mode: SelectionMode = "auto",
    ) -> None:
        rule = PercentileKeep(selectivity, history)
        switch = AfterWarmup(warmup_steps)
        super().__init__(rule, switch, presample, score, seed, prog_bar=("per/kept_fraction",), mode=mode)
        self.selectivity = selectivity
        self.history = history
        self.warmup_steps = warmup_steps
