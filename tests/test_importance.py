"""ImportanceSamplingCallback: the maths without a Trainer, then the callback inside small CPU Trainers."""

import logging
import math
import re
import warnings
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, default_collate

import lightning_per as lp
from lightning_per import functional as PF
from lightning_per.functional import draw_importance_sample
from tests.helpers import (
    DictDataset,
    ListDataset,
    RecordingLogger,
    TinyClassifier,
    blobs,
    run_two_processes,
    small_trainer,
)

DDP_SCRIPT = Path(__file__).with_name("ddp_importance_script.py")
NEVER = 1e9  # a tau_th that tau never exceeds: every step uniform
ALWAYS = 1e-9  # a tau_th that any positive tau exceeds: every step after the first is an importance step


# ----------------------------------------------------------------------------------------------- helpers
def heavy_scores(n: int, seed: int = 0) -> torch.Tensor:
    """Log-normal scores with sigma 3: a few points carry most of the mass."""
    g = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, generator=g, dtype=torch.float64)).exp().float()


def table_score(table: torch.Tensor):
    """A custom score function that looks every point's score up by its dataset index."""

    def score_fn(outputs, batch):
        return table[batch.index.cpu()]

    return score_fn


def _batch(n: int) -> lp.PrioritizedBatch:
    return lp.PrioritizedBatch(None, torch.arange(n), torch.ones(n))


def _dm(n=64, batch_size=8, **kwargs):
    kwargs.setdefault("strategy", "uniform")
    kwargs.setdefault("seed", 0)
    return lp.PrioritizedDataModule(blobs(n), batch_size=batch_size, **kwargs)


class Steps(Callback):
    """Put after the importance callback: per training step, its phase, tau and what was trained."""

    def __init__(self, cb: lp.ImportanceSamplingCallback) -> None:
        self.cb = cb
        self.rows: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append(
            dict(
                step=trainer.global_step,
                tau=self.cb.tau,
                importance=self.cb.last_step_was_importance,
                index=batch.index.tolist(),
                weight=batch.weight.tolist(),
            )
        )


def _fit(tmp_path, cb, dm=None, model=None, extra=(), **trainer_kwargs):
    dm = dm if dm is not None else _dm()
    model = model if model is not None else TinyClassifier()
    steps = Steps(cb)
    trainer = small_trainer(tmp_path, callbacks=[cb, steps, *extra], **trainer_kwargs)
    trainer.fit(model, datamodule=dm)
    return trainer, steps.rows, model


# ------------------------------------------------------------------------------------- maths, no Trainer
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


def _tau_by_hand(scores: np.ndarray, rooted: bool) -> float:
    scores = scores[np.isfinite(scores)].astype(np.float64)
    g = scores / scores.sum()
    u = 1.0 / g.size
    ratio = 1.0 - ((g - u) ** 2).sum() / (g**2).sum()
    return ratio**-0.5 if rooted else g.size * (g**2).sum()


@pytest.mark.parametrize(("tau_form", "every"), [("rooted", 1), ("unrooted", 1), ("rooted", 4)])
def test_tau_and_its_moving_average_are_exact_through_the_callback(tmp_path, tau_form, every):
    table = torch.rand(48, generator=torch.Generator().manual_seed(1)) + 0.05
    calls = []

    def score_fn(outputs, batch):
        values = table[batch.index]
        calls.append(values.double().numpy())
        return values

    # uniform steps (scores of the 8 trained points) until tau > 0.65, then importance steps (24-point presample)
    cb = lp.ImportanceSamplingCallback(
        presample=3,
        tau_every_n_steps=every,
        tau_th=0.65,
        a_tau=0.7,
        tau_form=tau_form,
        score=score_fn,
    )
    _, rows, _ = _fit(tmp_path, cb, dm=_dm(48), max_epochs=2)  # 6 steps per epoch, no logger
    phases = [r["importance"] for r in rows]
    assert phases[:2] == [False, False] and phases[-1] and len(rows) == 12
    assert [len(c) for c in calls] == [24 if p else 8 for p in phases]  # one scoring per step, of those points
    exact, tau = [], 0.0  # the per-step recurrence over what was scored
    for scores in calls:
        tau = 0.7 * tau + 0.3 * _tau_by_hand(scores, rooted=tau_form == "rooted")
        exact.append(tau)
    updated, since = -1, 0  # tau is brought up to date every `every` steps and at every epoch end
    for i, row in enumerate(rows):
        since += 1
        if since == every or i % 6 == 5:
            updated, since = i, 0
        assert row["tau"] == (pytest.approx(exact[updated], rel=1e-12) if updated >= 0 else 0.0)
        if i + 1 < len(rows):  # the next step's phase follows the tau of the last update
            assert phases[i + 1] == (row["tau"] > 0.65)
    assert cb.tau == pytest.approx(exact[-1], rel=1e-12)


class _Outputs(Callback):
    """Keeps every training step's logits and targets (put before the importance callback)."""

    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append((outputs["logits"].detach().clone(), outputs["target"].clone()))


@pytest.mark.parametrize("every", [1, 4])
def test_ce_bound_scored_several_steps_at_once_gives_the_per_step_tau(tmp_path, every):
    # 44 points in batches of 8: every epoch ends with a batch of 4, so an update mixes batch sizes
    cb = lp.ImportanceSamplingCallback(
        tau_th=NEVER, tau_every_n_steps=every, score=lp.Score("grad_norm", label_smoothing=0.1)
    )
    outputs = _Outputs()
    _fit(tmp_path, cb, dm=_dm(44), extra=[outputs], max_epochs=2)
    tau = 0.0
    for logits, targets in outputs.steps:
        scores = PF.softmax_ce_grad_norm(logits, targets, label_smoothing=0.1).double()
        tau = 0.9 * tau + 0.1 * float(PF.tau(scores))
    assert len(outputs.steps) == 12 and cb.tau == pytest.approx(tau, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "loss_fn"),
    [
        (dict(), lambda z, y: F.cross_entropy(z, y, reduction="none")),
        (dict(label_smoothing=0.2), lambda z, y: F.cross_entropy(z, y, reduction="none", label_smoothing=0.2)),
        (
            dict(class_weights=[0.5, 2.0, 1.0, 3.0]),
            lambda z, y: F.cross_entropy(z, y, reduction="none", weight=torch.tensor([0.5, 2.0, 1.0, 3.0])),
        ),
        (
            dict(label_smoothing=0.1, class_weights=[0.5, 2.0, 1.0, 3.0]),
            lambda z, y: F.cross_entropy(
                z, y, reduction="none", weight=torch.tensor([0.5, 2.0, 1.0, 3.0]), label_smoothing=0.1
            ),
        ),
    ],
    ids=["plain", "label_smoothing", "class_weights", "both"],
)
@pytest.mark.parametrize("soft", [False, True], ids=["indices", "probabilities"])
def test_closed_form_ce_bound_equals_the_autograd_bound(kwargs, loss_fn, soft):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(10, 4, generator=g)
    y = torch.randint(4, (10,), generator=g)
    if soft:
        y = torch.rand(10, 4, generator=g).softmax(-1)
    outputs = {"logits": logits, "target": y}
    closed = lp.Score("grad_norm", **kwargs)(outputs, _batch(10))
    auto = lp.Score("grad_norm", bound="autograd", loss_fn=loss_fn)(outputs, _batch(10))
    assert closed.shape == (10,)
    assert torch.allclose(closed, auto, atol=1e-6)
    assert closed.std() > 0.05  # not a degenerate comparison


def test_closed_form_bce_and_mse_bounds_equal_the_autograd_bound():
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(9, 5, generator=g)
    y_bin = (torch.rand(9, 5, generator=g) > 0.5).float()
    y_reg = torch.randn(9, 5, generator=g)

    def bce(z, y):  # summed over the outputs of a sample
        return F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(-1)

    def mse(z, y):  # averaged over the outputs of a sample
        return (z - y).square().mean(-1)

    for kind, loss_fn, y in (("bce", bce, y_bin), ("mse", mse, y_reg)):
        outputs = {"logits": z, "target": y}
        closed = lp.Score("grad_norm", bound=kind)(outputs, _batch(9))
        auto = lp.Score("grad_norm", bound="autograd", loss_fn=loss_fn)(outputs, _batch(9))
        assert torch.allclose(closed, auto, atol=1e-6), kind
    # a reduced loss_fn (the mean) gives scores proportional to the per-sample ones: the same distribution
    mean_auto = lp.Score("grad_norm", bound="autograd", loss_fn=lambda z, y: F.cross_entropy(z, y))(
        {"logits": z, "target": y_bin.argmax(-1)}, _batch(9)
    )
    per_sample = PF.softmax_ce_grad_norm(z, y_bin.argmax(-1))
    assert torch.allclose(mean_auto * 9, per_sample, atol=1e-6)


def test_importance_weighted_gradient_is_unbiased_for_the_presample_mean():
    g = torch.Generator().manual_seed(0)
    B, b = 24, 8
    model = nn.Linear(4, 3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(B, 4, generator=g), torch.randint(3, (B,), generator=g)

    def flat_grad(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()

    per_sample = torch.stack([flat_grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])) for i in range(B)])
    target = per_sample.mean(0)  # the presample's mean gradient
    with torch.no_grad():
        scores = PF.softmax_ce_grad_norm(model(x), y)
    assert scores.max() / scores.min() > 5  # far from uniform, so unweighted sampling would be biased

    # what training_step computes: the gradient of weighted_mean over the b chosen points
    positions, weights, _ = draw_importance_sample(scores, b, torch.Generator().manual_seed(1))
    chosen = lp.PrioritizedBatch(None, positions, weights)
    step_grad = flat_grad(
        lp.weighted_mean(F.cross_entropy(model(x[positions]), y[positions], reduction="none"), chosen)
    )
    assert torch.allclose(step_grad, (weights.double()[:, None] * per_sample[positions]).mean(0), atol=1e-6)

    draws = 4000
    gen = torch.Generator().manual_seed(2)
    weighted, unweighted = [], []
    for _ in range(draws):
        positions, weights, _ = draw_importance_sample(scores, b, gen)
        weighted.append((weights.double()[:, None] * per_sample[positions]).mean(0))
        unweighted.append(per_sample[positions].mean(0))
    for estimates, unbiased in ((torch.stack(weighted), True), (torch.stack(unweighted), False)):
        stderr = estimates.std(0) / math.sqrt(draws)
        z = ((estimates.mean(0) - target).abs() / stderr).max()
        # tolerance: every one of the 15 coordinates within 4.5 standard errors (fixed seeds, so deterministic)
        if unbiased:
            assert z < 4.5, float(z)
        else:  # the same test detects the bias of sampling by score without weights
            assert z > 10, float(z)


def test_draws_never_pick_a_non_finite_score_and_weights_use_the_finite_count():
    scores = torch.tensor([1.0, float("nan"), 3.0, float("inf"), 0.0, 4.0])
    positions, weights, p = draw_importance_sample(scores, 20000, torch.Generator().manual_seed(0))
    assert set(positions.tolist()) == {0, 2, 5}  # NaN, inf and zero scores have probability 0
    assert p.tolist() == pytest.approx([0.125, 0, 0.375, 0, 0, 0.5])
    n_finite = 4
    assert torch.allclose(weights.double(), 1 / (n_finite * p[positions]))
    assert draw_importance_sample(torch.tensor([float("nan"), float("inf")]), 3) is None
    assert draw_importance_sample(torch.zeros(3), 3) is None
    with pytest.raises(ValueError, match="non-negative"):
        draw_importance_sample(torch.tensor([1.0, -1.0]), 3)


# ------------------------------------------------------------------------------------------ in a Trainer
class CountingClassifier(TinyClassifier):
    """Records (rows, grad enabled, training mode) of every forward, and counts backward passes."""

    def __init__(self) -> None:
        super().__init__()
        self.forwards: list[tuple[int, bool, bool]] = []
        self.backwards = 0

    def forward(self, x):
        self.forwards.append((x.shape[0], torch.is_grad_enabled(), self.training))
        return super().forward(x)

    def on_after_backward(self) -> None:
        self.backwards += 1


class PerStepCost(Callback):
    """Put before the importance callback: the forwards and backwards of each step."""

    def __init__(self) -> None:
        self.steps: list[tuple[list, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = (len(pl_module.forwards), pl_module.backwards)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        f, bw = self._start
        self.steps.append((pl_module.forwards[f:], pl_module.backwards - bw))


@pytest.mark.parametrize("phase", ["importance", "uniform"])
def test_cost_is_one_no_grad_forward_over_the_presample_and_one_training_pass_over_b(tmp_path, phase):
    cost = PerStepCost()
    cb = lp.ImportanceSamplingCallback(
        tau_every_n_steps=1, presample=3, tau_th=ALWAYS if phase == "importance" else NEVER
    )
    model = CountingClassifier()
    trainer = small_trainer(tmp_path, callbacks=[cost, cb], max_epochs=1)
    trainer.fit(model, datamodule=_dm(64, 8))
    assert len(cost.steps) == 8
    uniform_step = ([(8, True, True)], 1)  # the training forward over b = 8, one backward, nothing else
    importance_step = ([(24, False, False), (8, True, True)], 1)  # + one eval, no-grad forward over B = 24
    if phase == "uniform":
        assert cost.steps == [uniform_step] * 8
    else:  # tau starts at 0, so the first step is uniform whatever the threshold
        assert cost.steps == [uniform_step] + [importance_step] * 7
    assert model.training


def test_switch_turns_on_for_heavy_tailed_scores_and_stays_on(tmp_path):
    cb = lp.ImportanceSamplingCallback(presample=3, score=table_score(heavy_scores(128)))
    assert cb.tau_th == 2.0  # (B + 3b) / (3b) with B = 3b
    _, rows, _ = _fit(tmp_path, cb, dm=_dm(128, 16), max_epochs=4)
    phases = [r["importance"] for r in rows]
    first = phases.index(True)
    assert 0 < first < 24 and all(phases[first:])
    assert rows[first - 1]["tau"] > 2.0 >= rows[first - 2]["tau"]  # it switches the step after tau passes tau_th
    assert rows[-1]["tau"] > 3.0
    trained_weights = [w for r in rows[first:] for w in r["weight"]]
    assert len(set(trained_weights)) > 1 and min(trained_weights) > 0


def test_switch_stays_off_for_uniform_scores(tmp_path):
    cb = lp.ImportanceSamplingCallback(presample=3, score=lambda outputs, batch: torch.ones(len(batch.index)))
    trainer, rows, _ = _fit(tmp_path, cb, dm=_dm(128, 16), max_epochs=4)
    assert not any(r["importance"] for r in rows)
    assert all(r["tau"] <= 1.0 + 1e-12 for r in rows) and rows[-1]["tau"] > 0.9  # tau -> 1 < tau_th = 2
    assert all(w == 1.0 for r in rows for w in r["weight"])
    assert trainer.callback_metrics["per/is_active"] == 0


def _resume_run(tmp_path, max_epochs, ckpt_path=None, save=False):
    torch.manual_seed(0)
    cb = lp.ImportanceSamplingCallback(tau_th=1.5, score=table_score(heavy_scores(48, seed=3)), seed=7)
    extra = []
    if save:
        extra.append(ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True))

    class AtStart(Callback):
        def on_train_start(self, trainer, pl_module):
            self.state = (cb.tau, cb.is_active)

    at_start = AtStart()
    dm = lp.PrioritizedDataModule(blobs(48), batch_size=8, strategy="uniform", seed=5)
    steps = Steps(cb)
    trainer = small_trainer(
        tmp_path, callbacks=[cb, steps, at_start, *extra], max_epochs=max_epochs, enable_checkpointing=save
    )
    trainer.fit(TinyClassifier(), datamodule=dm, ckpt_path=ckpt_path)
    return cb, steps.rows, at_start.state


def test_resume_restores_tau_and_the_phase_and_continues_the_uninterrupted_run(tmp_path):
    _, full, _ = _resume_run(tmp_path / "full", 5)
    half_cb, half, _ = _resume_run(tmp_path / "half", 3, save=True)
    assert half_cb.is_active  # the checkpoint is taken in the importance phase
    ckpt = tmp_path / "half" / "epoch=2-step=18.ckpt"
    state = torch.load(ckpt, weights_only=True)["callbacks"]["ImportanceSamplingCallback"]
    assert state["switch"]["tau"] == half_cb.tau and state["switch"]["active"] is True
    _, resumed, at_start = _resume_run(tmp_path / "resumed", 5, ckpt_path=str(ckpt))
    assert at_start == (half_cb.tau, True)
    assert resumed[0]["importance"]  # the first step after the restart is an importance step
    # the same tau, phases, trained points and weights as the run that was never stopped
    assert resumed == full[18:]
    assert half == full[:18]


class _SavesMidWindow(Callback):
    """Takes the importance callback's state after step ``at`` (mid-way between two tau updates)."""

    def __init__(self, cb, at):
        self.cb, self.at, self.state = cb, at, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            path = Path(trainer.default_root_dir) / "mid.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(self.cb.state_dict(), path)
            self.state = torch.load(path, weights_only=True)


def test_a_state_taken_between_tau_updates_keeps_the_pending_steps_and_changes_nothing(tmp_path):
    def run(path, at=None):
        torch.manual_seed(0)
        cb = lp.ImportanceSamplingCallback(
            tau_th=1.5, tau_every_n_steps=5, score=table_score(heavy_scores(48, seed=3)), seed=7
        )
        saver = _SavesMidWindow(cb, at)
        _, rows, _ = _fit(path, cb, dm=_dm(48), extra=[saver], max_epochs=3)  # 6 steps per epoch
        return rows, saver.state

    plain, _ = run(tmp_path / "plain")
    # the state after rows 0..8 (global step 9): tau was last updated at the epoch end (row 5); rows 6..8 pend
    rows, state = run(tmp_path / "saved", at=9)
    assert rows == plain  # taking the state mid-way changed no tau, phase, point or weight
    switch = state["switch"]
    assert len(switch["pending_taus"]) == 3 and all(t >= 1.0 for t in switch["pending_taus"])
    assert switch["tau"] == plain[8]["tau"]  # as of the last update
    # a callback restored from it takes the pending steps in at its next update, as the run that never saved did
    restored = lp.ImportanceSamplingCallback(tau_th=1.5, tau_every_n_steps=5)
    restored.load_state_dict(state)
    restored.tau_switch.synchronise(SimpleNamespace(world_size=1, global_step=9), None, restored._scorer)
    expected = switch["tau"]
    for tau_step in switch["pending_taus"]:
        expected = 0.9 * expected + 0.1 * tau_step
    assert restored.tau == pytest.approx(expected, rel=1e-12) and restored.tau != switch["tau"]


def _tuple_collate(samples):
    x, y = default_collate(samples)
    return (x, y)


Pair = namedtuple("Pair", ["x", "y"])


def _namedtuple_collate(samples):
    x, y = default_collate(samples)
    return Pair(x, y)


class CheckedClassifier(TinyClassifier):
    """Checks in every call (training and scoring) that each row is the dataset sample its index says."""

    def __init__(self, reference):
        super().__init__()
        self.reference = reference
        self.checked = 0

    def _unpack(self, batch):
        if isinstance(batch.data, dict):
            x, y = batch["x"], batch["y"]
        else:
            x, y = batch.data[0], batch.data[1]
        ref_x, ref_y = self.reference
        assert torch.equal(x, ref_x[batch.index]) and torch.equal(y, ref_y[batch.index])
        self.checked += 1
        return x, y


@pytest.mark.parametrize("structure", ["tuple", "namedtuple", "list", "dict"])
def test_tuple_list_and_dict_batches_keep_samples_and_indices_together(tmp_path, structure):
    base = blobs(40)
    data, collate = {
        "tuple": (base, _tuple_collate),
        "namedtuple": (base, _namedtuple_collate),
        "list": (ListDataset(base), None),
        "dict": (DictDataset(base), None),
    }[structure]
    dm = lp.PrioritizedDataModule(data, batch_size=8, strategy="uniform", seed=0, collate_fn=collate)
    seen_types = []

    class Types(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen_types.append(type(batch.data))

    model = CheckedClassifier(base.tensors)
    _, rows, _ = _fit(
        tmp_path, lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS), dm=dm, model=model, extra=[Types()]
    )
    assert sum(r["importance"] for r in rows) == len(rows) - 1
    expected = {"tuple": tuple, "namedtuple": Pair, "list": list, "dict": dict}[structure]
    assert set(seen_types) == {expected}
    assert model.checked == 2 * len(rows) - 1  # every training call and every scoring pass was checked


def test_data_loader_workers_work_for_the_epoch_and_the_extra_points(tmp_path):
    base = blobs(48)
    dm = lp.PrioritizedDataModule(base, batch_size=8, strategy="uniform", seed=0, num_workers=1)
    model = CheckedClassifier(base.tensors)
    _, rows, _ = _fit(
        tmp_path, lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS), dm=dm, model=model, max_epochs=1
    )
    assert [r["importance"] for r in rows] == [False] + [True] * 5


def test_a_skipped_training_step_leaves_tau_unchanged(tmp_path):
    class Skipping(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                return None  # Lightning skips the step and hands `{}` to on_train_batch_end
            return super().training_step(batch, batch_idx)

    _, rows, _ = _fit(
        tmp_path, lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=NEVER), model=Skipping(), max_epochs=1
    )
    assert rows[2]["tau"] == rows[1]["tau"]  # no scores from a skipped step: tau_step = tau, so tau stays
    assert rows[3]["tau"] != rows[2]["tau"] and len(rows) == 8


def test_a_presample_that_training_step_skips_trains_the_incoming_batch_uniformly(tmp_path):
    class SkipsSample5(TinyClassifier):  # e.g. a module that returns None when a loss is not finite
        def training_step(self, batch, batch_idx):
            return None if 5 in batch.index.tolist() else super().training_step(batch, batch_idx)

    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    _, rows, _ = _fit(tmp_path, cb, model=SkipsSample5(), max_epochs=2)
    assert len(rows) == 16 and any(r["importance"] for r in rows)
    assert any(not r["importance"] and r["weight"] == [1.0] * 8 for r in rows[1:])  # a skipped presample


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
    _, rows, _ = _fit(tmp_path, cb, model=IgnoresSome(), max_epochs=2)
    assert math.isfinite(cb.tau) and cb.tau > 1 and any(r["importance"] for r in rows)


def test_a_negative_score_is_refused_in_the_uniform_phase_already(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=2, tau_th=NEVER, score=lambda o, b: -o["per_sample_loss"])
    with pytest.raises(
        ValueError, match=r"ImportanceSamplingCallback got a negative score \(-[0-9.]+\): scores must be non-negative"
    ):
        _fit(tmp_path, cb, max_epochs=1)


# ------------------------------------------------------------------------------------------ refusals
def test_prioritized_strategy_is_refused_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"got `strategy='proportional'`\. Use `strategy='uniform'`"):
        _fit(tmp_path, lp.ImportanceSamplingCallback(), dm=_dm(strategy="proportional"))


def test_a_plain_dataloader_with_the_indexed_mode_is_refused_at_setup_naming_the_datamodule_to_use(tmp_path):
    trainer = small_trainer(tmp_path, callbacks=[lp.ImportanceSamplingCallback(mode="indexed")])
    with pytest.raises(TypeError, match=r"mode='indexed' draws extra points from it.*strategy='uniform'\)"):
        trainer.fit(TinyClassifier(), train_dataloaders=DataLoader(blobs(16), batch_size=8))


def test_manual_optimization_is_refused_at_setup(tmp_path):
    class Manual(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            self.manual_backward(out["loss"])
            self.optimizers().step()
            return out

    with pytest.raises(ValueError, match=r"needs automatic optimization.*automatic_optimization=False"):
        _fit(tmp_path, lp.ImportanceSamplingCallback(), model=Manual())


def test_works_with_loss_tracker_and_the_uniform_strategy(tmp_path):
    dm = _dm(48)
    tracker = lp.LossTracker()
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    _, rows, model = _fit(tmp_path, cb, dm=dm, extra=[tracker])
    assert sum(r["importance"] for r in rows) == len(rows) - 1 == 11
    trained = {i for r in rows for i in r["index"]}
    assert dm.scores.seen == len(trained) > 0  # the tracker recorded the points that were trained on
    assert tracker.last_plan is not None and set(model.seen_weight[-1]) != {1.0}  # importance weights reached it


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


class NoLogits(TinyClassifier):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        return {"loss": out["loss"], "per_sample_loss": out["per_sample_loss"]}


class ShortLogits(TinyClassifier):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["logits"] = out["logits"][:-1]
        return out


def test_outputs_without_logits_say_what_was_found_and_how_to_pass_a_score_function(tmp_path):
    found = r"under 'logits' and 'target'.*the keys \['loss', 'per_sample_loss'\](.|\n)*fn\(outputs, batch\)"
    with pytest.raises(ValueError, match=found):
        _fit(tmp_path, lp.ImportanceSamplingCallback(), model=NoLogits())


def test_logits_of_the_wrong_length_say_the_shapes_and_how_to_pass_a_score_function(tmp_path):
    with pytest.raises(ValueError, match=r"'logits' with shape \(7, 3\), but the batch has 8 samples"):
        _fit(tmp_path, lp.ImportanceSamplingCallback(), model=ShortLogits())


def test_non_finite_scores_in_a_presample_are_never_selected(tmp_path):
    table = heavy_scores(64)
    bad = set(range(0, 64, 3))
    table[list(range(0, 64, 6))] = float("nan")
    table[list(range(3, 64, 6))] = float("inf")
    _, rows, _ = _fit(
        tmp_path,
        lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS, score=table_score(table)),
    )
    importance = [r for r in rows if r["importance"]]
    assert len(importance) == len(rows) - 1
    assert not bad & {i for r in importance for i in r["index"]}
    assert all(math.isfinite(w) and w > 0 for r in importance for w in r["weight"])


def test_a_presample_without_finite_scores_trains_uniformly_and_warns_once(tmp_path):
    table = heavy_scores(64)

    def score_fn(outputs, batch):  # finite on the trained batch (b = 8), all NaN on every presample (B = 24)
        n = len(batch.index)
        return table[batch.index] if n == 8 else torch.full((n,), float("nan"))

    class Phase(Callback):
        def __init__(self):
            self.fallbacks = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if cb.is_active:  # runs before the importance callback: the step is meant to be an importance step
                self._meant = True
                self._index = batch.index.clone()
            else:
                self._meant = False

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self._meant:
                assert not cb.last_step_was_importance
                assert torch.equal(batch.index, self._index) and bool((batch.weight == 1).all())
                self.fallbacks += 1

    cb = lp.ImportanceSamplingCallback(tau_th=1.2, score=score_fn)
    phase = Phase()
    trainer = small_trainer(tmp_path, callbacks=[phase, cb], max_epochs=6)
    with pytest.warns(UserWarning) as record:
        trainer.fit(TinyClassifier(), datamodule=_dm())
    assert phase.fallbacks >= 2
    assert sum("no finite score" in str(w.message) for w in record) == 1


def test_batchnorm_and_dropout_get_a_one_time_note_and_presamples_do_not_touch_running_stats(tmp_path, caplog):
    class Noisy(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3))

    model = Noisy()
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    with caplog.at_level(logging.INFO):
        _, rows, _ = _fit(tmp_path, cb, model=model)
        _fit(tmp_path / "again", cb, model=model, max_epochs=3)
    notes = [r for r in caplog.records if "BatchNorm or Dropout" in r.getMessage()]
    assert len(notes) == 1 and "eval mode" in notes[0].getMessage()
    assert sum(r["importance"] for r in rows) > 0 and model.training
    # scoring runs in eval mode: BatchNorm's statistics moved once per training step only (16 + 24 steps)
    assert int(model.net[1].num_batches_tracked) == 40


def test_metrics_are_logged_as_means_since_the_last_log(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    trainer, rows, _ = _fit(tmp_path, cb, max_epochs=1, log_every_n_steps=50)  # one log: the epoch's last step
    keys = ("per/tau", "per/is_active", "per/max_p", "per/unique_fraction", "per/loss_unweighted")
    for key in keys:  # shown at the epoch's end; nothing written to loggers before their first step (50)
        assert key in trainer.callback_metrics and key not in trainer.logged_metrics, key
    metrics = trainer.callback_metrics
    assert float(metrics["per/tau"]) == pytest.approx(cb.tau)
    # the first step is uniform (tau starts at 0), every later one an importance step
    assert float(metrics["per/is_active"]) == pytest.approx(sum(r["importance"] for r in rows) / len(rows))
    assert 0 < float(metrics["per/is_active"]) < 1
    assert 1 / 24 <= float(metrics["per/max_p"]) <= 1
    assert 1 / 8 <= float(metrics["per/unique_fraction"]) <= 1
    assert math.isfinite(float(metrics["per/loss_unweighted"]))
    assert "per/tau" in trainer.progress_bar_metrics


class _UnweightedLosses(Callback):
    """The plain mean of the trained points' losses on every importance step (what `per/loss_unweighted` averages)."""

    def __init__(self, cb):
        self.cb = cb
        self.by_step = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        importance = self.cb.last_step_was_importance
        self.by_step.append(float(outputs["per_sample_loss"].float().mean()) if importance else None)


def test_loggers_get_means_over_all_steps_since_their_last_write_across_an_epoch_end_log(tmp_path):
    # 8 steps per epoch and a logger write every 10 steps: epoch 0 has no write step, so its last step (7) logs for
    # the progress bar; the write at step 9 must still average steps 0..9, not 8..9
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    logger, losses = RecordingLogger(), _UnweightedLosses(cb)
    _fit(tmp_path, cb, extra=[losses], max_epochs=2, log_every_n_steps=10, logger=logger)
    first = next(w for w in logger.writes if "per/loss_unweighted" in w)
    window = [v for v in losses.by_step[:10] if v is not None]
    assert len(window) == 9  # step 0 is uniform (tau starts at 0)
    assert first["per/loss_unweighted"] == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert first["per/is_active"] == pytest.approx(0.9)


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_config_trains_with_the_callback_and_logs_tau(tmp_path):
    from lightning_per.cli import main

    args = [
        "fit",
        "--config=lightning_per/examples/configs/mnist1d_importance.yaml",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=300",
        "--data.val_size=100",
        "--data.test_size=0",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = main(args)
    (cb,) = [c for c in cli.trainer.callbacks if isinstance(c, lp.ImportanceSamplingCallback)]
    assert cb.presample == 3 and cb.score == "grad_norm" and cb.tau_th == 2.0
    assert cli.datamodule.strategy.name == "uniform"
    assert cli.trainer.global_step == 6 and cb.tau > 0
    assert float(cli.trainer.callback_metrics["per/tau"]) == pytest.approx(cb.tau)
    assert "per/is_active" in cli.trainer.callback_metrics


# --------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_processes_share_tau_and_switch_on_the_same_step(tmp_path):
    ranks = run_two_processes(DDP_SCRIPT, tmp_path)
    assert [r["world"] for r in ranks] == [2, 2]
    # each rank alone would decide differently: rank 0's own scores are heavy-tailed, rank 1's are constant
    # (tau_th = 1.5 in the script; the averaged tau_step is about (mean(local0) + 1) / 2)
    local0, local1 = ranks[0]["local_tau"], ranks[1]["local_tau"]
    assert sum(local0) / len(local0) > 2.5 and max(abs(t - 1.0) for t in local1) < 1e-6
    assert ranks[0]["tau"] == ranks[1]["tau"]  # bitwise the same tau after every step
    tau = 0.0  # every step's tau_step, averaged over the ranks, enters the moving average once, in order
    for own0, own1 in zip(local0, local1, strict=True):
        tau = 0.9 * tau + 0.1 * (own0 + own1) / 2
    assert ranks[0]["tau"][-1] == pytest.approx(tau, rel=1e-9)  # saving state mid-way (below) changed nothing
    # a state taken between updates runs no collective (a checkpoint may be built on one process alone): it holds
    # this rank's own tau_step of the pending step
    assert all(len(p) == 1 for r in ranks for p in r["pending"])
    firsts = [i for i, s in enumerate(ranks[0]["steps"]) if i % 4 == 0]  # 4 steps per epoch
    uniform = [i for i in firsts if not ranks[0]["importance"][i]]
    assert uniform
    for r, local in ((0, local0), (1, local1)):
        assert all(ranks[r]["pending"][i // 4][0] == pytest.approx(local[i], rel=1e-12) for i in uniform)
    assert ranks[0]["importance"] == ranks[1]["importance"]
    first = ranks[0]["importance"].index(True)
    assert first > 1 and all(ranks[0]["importance"][first:])
    assert ranks[0]["steps"][first] == ranks[1]["steps"][first]
    # the trained points differ by rank (each draws from its own shard)
    assert ranks[0]["trained"] != ranks[1]["trained"]


@pytest.mark.parametrize(
    ("tau_th", "said"),
    [
        (NEVER, r"none of the 16 training steps was an importance step: tau peaked at .* no step's estimate"),
        (ALWAYS, r"15 of 16 training steps \(94%\) were importance steps; tau peaked at"),
    ],
)
def test_the_end_of_training_says_once_how_many_steps_were_importance_steps(tmp_path, caplog, tau_th, said):
    cb = lp.ImportanceSamplingCallback(score=table_score(torch.ones(64)), tau_th=tau_th, tau_every_n_steps=1)
    trainer = small_trainer(tmp_path, callbacks=[cb], max_epochs=2)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        trainer.fit(TinyClassifier(), datamodule=_dm())
    told = caplog.text + "\n".join(str(w.message) for w in warned)
    assert len(re.findall(said, told)) == 1


def test_a_long_run_whose_average_never_passes_is_not_told_to_run_longer(tmp_path):
    scores = torch.ones(64)
    scores[5] = 200.0  # a presample with point 5 is very uneven; the others are uniform
    probe = lp.ImportanceSamplingCallback(score=table_score(scores), tau_th=NEVER, a_tau=0.5, tau_every_n_steps=1)
    small_trainer(tmp_path, callbacks=[probe], max_epochs=2).fit(TinyClassifier(), datamodule=_dm())
    estimate = probe.tau_switch.estimate
    between = (estimate.peak + estimate.step_peak) / 2  # above the average's peak, below one step's estimate
    cb = lp.ImportanceSamplingCallback(score=table_score(scores), tau_th=between, a_tau=0.5, tau_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"none of the 16 .* only occasional steps' estimates passed it") as record:
        small_trainer(tmp_path, callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=_dm())
    assert not any("longer run" in str(w.message) for w in record)


def test_a_run_whose_scores_are_all_nan_says_so_instead_of_too_alike(tmp_path):
    cb = lp.ImportanceSamplingCallback(score=table_score(torch.full((64,), float("nan"))), tau_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"16 steps scored only NaN or inf") as record:
        small_trainer(tmp_path, callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=_dm())
    assert not any("too alike" in str(w.message) for w in record)


def test_the_progress_bar_shows_tau_next_to_its_threshold(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_th=1.5)
    trainer = small_trainer(tmp_path, callbacks=[cb], max_epochs=1)
    trainer.fit(TinyClassifier(), datamodule=_dm())
    assert trainer.progress_bar_metrics["per/tau_th"] == 1.5 and "per/tau" in trainer.progress_bar_metrics
