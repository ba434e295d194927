"""lightning_per.selection.importance: ImportanceSamplingCallback's arguments and its work beside other callbacks."""

import math

import pytest
import torch
import torch.nn.functional as F

import lightning_per as lp
from lightning_per import functional as PF
from tests.helpers import ALWAYS, Steps, TinyClassifier, blob_datamodule, fit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(presample=1), r"`presample` must be an integer >= 2, got 1\."),
        (dict(presample=0), r"`presample` must be an integer >= 2, got 0\."),
        (dict(tau_th=0.0), r"`tau_th` must be a finite number > 0 or None, got 0\.0"),
        (dict(tau_th=-1.0), r"`tau_th` must be a finite number > 0 or None, got -1\.0"),
        (dict(tau_th=float("nan")), r"`tau_th` must be a finite number > 0 or None, got nan"),
        (dict(a_tau=1.0), r"`a_tau` must be a finite number in \[0, 1\), got 1\.0"),
        (dict(a_tau=-0.1), r"`a_tau` must be a finite number in \[0, 1\), got -0\.1"),
        (dict(tau_every_n_steps=0), r"`tau_every_n_steps` must be an integer >= 1, got 0\."),
        (dict(score="autograd"), r"`score` must be one of 'loss', 'reducible', 'grad_norm', .*got 'autograd'"),
    ],
)
def test_bad_arguments_name_the_argument_and_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lp.ImportanceSamplingCallback(**kwargs)
    with pytest.raises(TypeError, match=r"`tau_every_n_steps` must be an integer >= 1, got 2\.5 \(float\)\."):
        lp.ImportanceSamplingCallback(tau_every_n_steps=2.5)


def test_a_score_that_is_neither_a_name_a_score_nor_a_function_is_refused():
    with pytest.raises(TypeError, match=r"`score` must be a score name, a `lightning_per.Score` or a function.*int"):
        lp.ImportanceSamplingCallback(score=3)
    with pytest.raises(ValueError, match=r"`bound='autograd'` needs `loss_fn`"):
        lp.Score("grad_norm", bound="autograd")


def test_works_with_loss_tracker_and_the_uniform_strategy(tmp_path):
    dm = blob_datamodule(48)
    tracker = lp.LossTracker()
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    model = fit(tmp_path, [cb, steps, tracker], datamodule=dm).model
    rows = steps.rows
    assert sum(r["importance"] for r in rows) == len(rows) - 1 == 11
    trained = {i for r in rows for i in r["index"]}
    assert dm.scores.seen == len(trained) > 0  # the tracker recorded the points that were trained on
    assert tracker.last_plan is not None and set(model.seen_weight[-1]) != {1.0}  # importance weights reached it


def test_ce_bound_gives_ignored_targets_score_zero_as_cross_entropy_does(tmp_path):
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, -100, 2, 1])
    (grad,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    assert torch.allclose(PF.softmax_ce_grad_norm(z, y), grad.norm(dim=-1)) and PF.softmax_ce_grad_norm(z, y)[1] == 0
    assert torch.isnan(PF.softmax_ce_grad_norm(z, torch.tensor([0, 7, 2, 1]))[1])  # no class 7: NaN, not a crash

    class IgnoresSome(TinyClassifier):  # unlabelled samples, as in semi-supervised training
        def training_step(self, batch, batch_idx):
            x, y = batch
            y = torch.where(batch.index % 3 == 0, -100, y)
            logits = self(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            return {"loss": lp.weighted_mean(losses, batch), "logits": logits, "target": y}

    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=4, tau_th=ALWAYS)
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], model=IgnoresSome(), max_epochs=2)
    rows = steps.rows
    assert math.isfinite(cb.tau) and cb.tau > 1 and any(r["importance"] for r in rows)
