"""lightning-per: prioritized sampling, online batch selection and experience replay for PyTorch Lightning.

The top level holds what a training script or a YAML file names; everything else is importable from its module
(``lightning_per.functional``, ``lightning_per.strategy``, ``lightning_per.sampler``, ``lightning_per.scores``,
``lightning_per.data``, ``lightning_per.scoring``, ``lightning_per.replay``).
"""

from lightning_per.callbacks import ImportanceSamplingCallback, LossTracker, SelectiveBackprop, TopKSelection
from lightning_per.data import PrioritizedBatch, weighted_mean
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.distributed import release_process_group
from lightning_per.scoring import Score
from lightning_per.selection.irreducible import IrreducibleLoss
from lightning_per.strategy import SamplingStrategy

__version__ = "0.1.0"

__all__ = [
    "ImportanceSamplingCallback",
    "IrreducibleLoss",
    "LossTracker",
    "PrioritizedBatch",
    "PrioritizedDataModule",
    "SamplingStrategy",
    "Score",
    "SelectiveBackprop",
    "TopKSelection",
    "release_process_group",
    "weighted_mean",
]
