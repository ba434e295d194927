"""Learning-rate schedules over a run's progress (0 at the first step, 1 when its budget is spent)."""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "step", "constant")
# the reference code's step schedule (idiap/importance-sampling, examples/cifar10_resnet.py, `TrainingSchedule`):
# 0.1, then 0.02 after half the budget, then 0.004 after 80% of it: the peak divided by 5 twice
STEP_MILESTONES = ((0.5, 0.2), (0.8, 0.04))


def lr_factor(schedule: str, progress: float) -> float:
    """The multiple of the peak learning rate at ``progress`` (clipped to [0, 1]).

    ``cosine`` falls from 1 to 0; ``step`` is 1, then 0.2 after half the run, then 0.04 after 80% of it (the
    reference code's schedule); ``constant`` is 1.

    Example: ``lr_factor("cosine", 0.5)`` is 0.5 and ``lr_factor("step", 0.9)`` is 0.04.
    """
    p = min(1.0, max(0.0, progress))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "step":
        factor = 1.0
        for milestone, value in STEP_MILESTONES:
            if p >= milestone:
                factor = value
        return factor
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
