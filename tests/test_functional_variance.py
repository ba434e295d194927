"""lightning_per.functional.variance: tau, by hand, in both forms, and its moving average."""

import math

import pytest
import torch

from lightning_per import functional as PF


def test_tau_matches_a_hand_computation_in_both_forms():
    scores = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    # g = [1, 1, 2, 4] / 8; sum g^2 = 22/64; ||g - 1/4||^2 = 22/64 - 1/4 = 6/64
    rooted = (1 - (6 / 64) / (22 / 64)) ** -0.5
    unrooted = 4 * 22 / 64
    assert math.isclose(float(PF.tau(scores, rooted=True)), rooted, rel_tol=1e-12)
    assert math.isclose(float(PF.tau(scores, rooted=False)), unrooted, rel_tol=1e-12)
    assert math.isclose(unrooted, 1.375) and math.isclose(rooted, math.sqrt(1.375))
    assert float(PF.tau(torch.ones(7, dtype=torch.float64))) == pytest.approx(1.0, abs=1e-12)
    assert PF.tau_ema(2.0, 5.0, 0.9) == pytest.approx(2.3, abs=1e-12)


def test_tau_equals_its_definition_in_both_forms():
    s = torch.tensor([1.0, 2.0, 3.0, 4.0])
    g = s / s.sum()
    ratio = 1 - ((g - 0.25) ** 2).sum() / (g**2).sum()
    assert torch.allclose(PF.tau(s), ratio**-0.5)
    assert torch.allclose(PF.tau(s, rooted=False), 1 / ratio)
    assert torch.allclose(PF.tau(s, rooted=False), 4 * (g**2).sum())
