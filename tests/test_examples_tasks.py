"""The example task sequences on embedded data."""

import pytest
import torch

pytest.importorskip("sklearn")

from lightning_per.examples import PermutedDigits


def test_permuted_digits_tasks_are_pixel_permutations_of_the_same_digits():
    dm = PermutedDigits(num_tasks=3, train_per_task=50, data_seed=1)
    train, test = dm.build_tasks()
    assert [len(t) for t in train] == [50, 50, 50] and len({len(t) for t in test}) == 1
    x0, y0 = test[0].tensors
    assert x0.shape[1] == 64 and set(y0.tolist()) == set(range(10))
    for t in (1, 2):  # every task evaluates the same held-out digits, its pixels in its own order
        xt, yt = test[t].tensors
        assert torch.equal(yt, y0) and not torch.equal(xt, x0)
        assert torch.equal(xt.sort(1).values, x0.sort(1).values)  # each image's pixels, reordered
    again = PermutedDigits(num_tasks=3, train_per_task=50, data_seed=1).build_tasks()[0]
    assert all(torch.equal(a.tensors[0], b.tensors[0]) for a, b in zip(train, again, strict=True))  # seeded


def test_permuted_digits_refuses_more_images_per_task_than_the_training_pool():
    with pytest.raises(ValueError, match="`train_per_task` must be in \\[1, 1438\\]"):
        PermutedDigits(train_per_task=5000)
