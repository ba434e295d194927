"""lightning-per: prioritized sampling, importance sampling and experience replay for PyTorch Lightning."""

from lightning_per import functional
from lightning_per.callbacks import ImportanceSamplingCallback, LossTracker, SelectiveBackprop, TopKSelection
from lightning_per.data import IndexedCollate, IndexedDataset, PrioritizedBatch, weighted_mean
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.distributed import release_process_group
from lightning_per.sampler import PrioritizedSampler
from lightning_per.scores import ScoreTable
from lightning_per.scoring import Score, ScoreName
from lightning_per.selection.irreducible import IrreducibleLoss
from lightning_per.strategy import SamplingPlan, SamplingStrategy, StrategyName, build_plan

__version__ = "0.1.0"

__all__ = [
    "ImportanceSamplingCallback",
    "IndexedCollate",
    "IndexedDataset",
    "IrreducibleLoss",
    "LossTracker",
    "PrioritizedBatch",
    "PrioritizedDataModule",
    "PrioritizedSampler",
    "SamplingPlan",
    "SamplingStrategy",
    "Score",
    "ScoreName",
    "ScoreTable",
    "SelectiveBackprop",
    "StrategyName",
    "TopKSelection",
    "build_plan",
    "functional",
    "release_process_group",
    "weighted_mean",
]
