"""The benchmark protocol the studies share (issue 21): compute budget, learning-rate search, seeds, summaries,
time to target, the command line and rendering. A study is a :class:`Study` subclass; ``cli.main(study)`` runs it.
"""

from benchmarks.protocol.budget import ComputeBudget, epochs_budget, step_cost
from benchmarks.protocol.lr_search import LrChoice, geometric_grid, search_lr
from benchmarks.protocol.seeds import SeedPlan, is_close, rotation
from benchmarks.protocol.stats import describe, paired, t975
from benchmarks.protocol.study import Headline, Setting, Study
from benchmarks.protocol.targets import UNIFORM_FINAL, Target, first_reach, time_to_target

__all__ = [
    "UNIFORM_FINAL",
    "ComputeBudget",
    "Headline",
    "LrChoice",
    "SeedPlan",
    "Setting",
    "Study",
    "Target",
    "describe",
    "epochs_budget",
    "first_reach",
    "geometric_grid",
    "is_close",
    "paired",
    "rotation",
    "search_lr",
    "step_cost",
    "t975",
    "time_to_target",
]
