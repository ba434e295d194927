"""The cost of an importance step in uniform steps, measured on the device that trains: ``tau_th="auto"``.

Importance sampling pays when its variance reduction ``tau`` exceeds what an importance step costs in uniform steps.
The theory (``(B + 3b) / 3b``, a backward costing two forwards) was wrong on both machines measured (a CPU: the
presample's forward cost 1.1 of a training step; an H200: 0.1 to 0.17). ``CostCalibration`` times a few uniform
steps, then a few importance steps, synchronising the device only around those steps, and their ratio of medians
becomes the threshold (averaged over the processes, so that every process switches on the same step).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer

from lightning_per._checks import check_int

__all__ = ["CostCalibration"]


class CostCalibration:
    """Times ``steps`` uniform steps, then ``steps`` importance steps (after ``skip`` untimed steps of each).

    Args:
        steps: timed steps of each kind (>= 1).
        skip: steps of each kind run first without timing (warm-up of allocators and caches).

    Example:
        >>> calibration = CostCalibration(steps=2, skip=0)
        >>> calibration.begin()
        >>> [calibration.forces_selection() for _ in range(1)], calibration.step_count
        ([False], 0)
    """

    def __init__(self, steps: int = 8, skip: int = 2) -> None:
        self.steps = check_int("calibration_steps", steps, 1)
        self.skip = check_int("skip", skip, 0)
        self.ratio: float | None = None  # the last measured cost ratio
        self.running = False
        self.step_count = 0
        self._times: dict[bool, list[float]] = {False: [], True: []}
        self._start = 0.0

    @property
    def _phase_length(self) -> int:
        return self.skip + self.steps

    def begin(self) -> None:
        """Measure again from the next step (every process must call this at the same step)."""
        self.running, self.step_count, self._times = True, 0, {False: [], True: []}

    def forces_selection(self) -> bool:
        """Whether the coming step must be an importance step (the second phase)."""
        return self.running and self.step_count >= self._phase_length

    def starts_step(self, device: torch.device) -> None:
        """Called before a step: start its clock if it is a timed one."""
        if self._timed():
            _synchronize(device)
            self._start = time.perf_counter()

    def ends_step(self, device: torch.device, selected: bool) -> None:
        """Called after the step: stop its clock, and count it."""
        if not self.running:
            return
        if self._timed():
            _synchronize(device)
            self._times[selected].append(time.perf_counter() - self._start)
        self.step_count += 1

    def due(self) -> bool:
        """Whether both phases are measured (the engine then synchronises, and ``finish`` runs on every process)."""
        return self.running and self.step_count >= 2 * self._phase_length

    def finish(self, trainer: Trainer, pl_module: LightningModule) -> float:
        """The cost ratio, averaged over the processes; the calibration stops."""
        uniform, importance = self._times[False], self._times[True]
        local = statistics.median(importance) / statistics.median(uniform) if uniform and importance else 1.0
        ratio = local
        if trainer.world_size > 1:
            total = trainer.strategy.reduce(torch.tensor(local, device=pl_module.device), reduce_op="mean")
            ratio = float(total)
        self.ratio, self.running = ratio, False
        return ratio

    def _timed(self) -> bool:
        return self.running and self.step_count % self._phase_length >= self.skip

    def state_dict(self) -> dict[str, Any]:
        """The measured ratio (a calibration under way is measured again after a resume)."""
        return {"cost_ratio": self.ratio, "calibrating": self.running}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ratio; restart a calibration that was under way."""
        self.ratio = state.get("cost_ratio")
        if state.get("calibrating"):
            self.begin()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
