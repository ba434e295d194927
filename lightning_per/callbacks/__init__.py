"""Lightning callbacks of lightning-per."""

from lightning_per.callbacks.loss_tracker import LossTracker, ScoreKind

__all__ = ["LossTracker", "ScoreKind"]
