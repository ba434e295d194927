"""lightning_per.functional.continual: ACC and BWT, as the accuracy matrix reports them."""

import pytest
import torch

from lightning_per.continual import TaskAccuracyMatrix
from lightning_per.functional.continual import average_accuracy, backward_transfer


def test_acc_and_bwt_read_the_tasks_completed_so_far() -> None:
    r = torch.tensor([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]])
    assert average_accuracy(r) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert backward_transfer(r) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    matrix = TaskAccuracyMatrix()
    matrix.load_state_dict({"matrix": r.clone(), "next_task": 2, "trained": 1})  # after task 1 of 3: tasks 0 and 1 only
    assert matrix.acc == pytest.approx((0.5 + 0.8) / 2) and matrix.bwt == pytest.approx(0.5 - 0.9)
    matrix.load_state_dict({"matrix": r.clone(), "next_task": 3, "trained": 2})
    assert matrix.acc == pytest.approx((0.4 + 0.6 + 0.7) / 3) and matrix.diagonal.tolist() == pytest.approx(
        [0.9, 0.8, 0.7]
    )
