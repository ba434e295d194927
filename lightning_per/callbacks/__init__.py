"""Lightning callbacks of lightning-per."""

from lightning_per.callbacks.importance import ImportanceSamplingCallback
from lightning_per.callbacks.loss_tracker import LossTracker
from lightning_per.callbacks.selection import SelectiveBackprop, TopKSelection

__all__ = ["ImportanceSamplingCallback", "LossTracker", "SelectiveBackprop", "TopKSelection"]
