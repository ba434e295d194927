"""Lightning callbacks of lightning-per."""

from lightning_per.callbacks.importance import ImportanceSamplingCallback
from lightning_per.callbacks.loss_tracker import LossTracker, ScoreKind

__all__ = ["ImportanceSamplingCallback", "LossTracker", "ScoreKind"]
