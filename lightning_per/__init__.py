"""lightning-per: prioritized sampling, online batch selection and experience replay for PyTorch Lightning.

The top level holds what a training script or a YAML file names. Experience replay is ``lightning_per.replay``,
continual-learning scaffolding ``lightning_per.continual``, the pure maths ``lightning_per.functional``; everything
else is importable from its module (the layers are described in ``docs/architecture.md``).
"""

from lightning_per.batch import PrioritizedBatch, weighted_mean
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.plumbing.distributed import release_process_group
from lightning_per.score import Score
from lightning_per.selection.callbacks import SelectiveBackprop, TopKSelection
from lightning_per.selection.importance import ImportanceSamplingCallback
from lightning_per.selection.irreducible import IrreducibleLoss
from lightning_per.selection.sources import StreamCollate
from lightning_per.selection.tokens import TokenSelection
from lightning_per.strategy import SamplingStrategy
from lightning_per.tracker import LossTracker

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
    "StreamCollate",
    "TokenSelection",
    "TopKSelection",
    "release_process_group",
    "weighted_mean",
]
