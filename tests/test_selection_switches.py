"""lightning_per.selection.switches and tau: the moving average of tau, when importance sampling switches on, resume."""

import logging
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_per as lp
from lightning_per import functional as PF
from tests.helpers import (
    ALWAYS,
    NEVER,
    Steps,
    TinyClassifier,
    blob_datamodule,
    fit,
    heavy_scores,
    small_trainer,
    table_score,
)


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
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], datamodule=blob_datamodule(48), max_epochs=2)  # 6 steps per epoch, no logger
    rows = steps.rows
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
    fit(tmp_path, [cb, outputs], datamodule=blob_datamodule(44), max_epochs=2)
    tau = 0.0
    for logits, targets in outputs.steps:
        scores = PF.softmax_ce_grad_norm(logits, targets, label_smoothing=0.1).double()
        tau = 0.9 * tau + 0.1 * float(PF.tau(scores))
    assert len(outputs.steps) == 12 and cb.tau == pytest.approx(tau, rel=1e-9)


def test_switch_turns_on_for_heavy_tailed_scores_and_stays_on(tmp_path):
    cb = lp.ImportanceSamplingCallback(presample=3, score=table_score(heavy_scores(128)))
    assert cb.tau_th == 2.0  # (B + 3b) / (3b) with B = 3b
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], datamodule=blob_datamodule(128, 16), max_epochs=4)
    rows = steps.rows
    phases = [r["importance"] for r in rows]
    first = phases.index(True)
    assert 0 < first < 24 and all(phases[first:])
    assert rows[first - 1]["tau"] > 2.0 >= rows[first - 2]["tau"]  # it switches the step after tau passes tau_th
    assert rows[-1]["tau"] > 3.0
    trained_weights = [w for r in rows[first:] for w in r["weight"]]
    assert len(set(trained_weights)) > 1 and min(trained_weights) > 0


def test_switch_stays_off_for_uniform_scores(tmp_path):
    cb = lp.ImportanceSamplingCallback(presample=3, score=lambda outputs, batch: torch.ones(len(batch.index)))
    steps = Steps(cb)
    trainer = fit(tmp_path, [cb, steps], datamodule=blob_datamodule(128, 16), max_epochs=4).trainer
    rows = steps.rows
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
    dm = blob_datamodule(48, seed=5)
    steps = Steps(cb)
    callbacks = [cb, steps, at_start, *extra]
    fit(tmp_path, callbacks, datamodule=dm, ckpt_path=ckpt_path, max_epochs=max_epochs, enable_checkpointing=save)
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
        steps = Steps(cb)
        fit(path, [cb, steps, saver], datamodule=blob_datamodule(48), max_epochs=3)  # 6 steps per epoch
        rows = steps.rows
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
    # restored steps hold their own tau_step values: the scorer is not read
    restored.tau_switch.synchronise(SimpleNamespace(world_size=1, global_step=9), None, lp.Score("loss"))
    expected = switch["tau"]
    for tau_step in switch["pending_taus"]:
        expected = 0.9 * expected + 0.1 * tau_step
    assert restored.tau == pytest.approx(expected, rel=1e-12) and restored.tau != switch["tau"]


def test_a_skipped_training_step_leaves_tau_unchanged(tmp_path):
    class Skipping(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if batch_idx == 2:
                return None  # Lightning skips the step and hands `{}` to on_train_batch_end
            return super().training_step(batch, batch_idx)

    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=NEVER)
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], model=Skipping(), max_epochs=1)
    rows = steps.rows
    assert rows[2]["tau"] == rows[1]["tau"]  # no scores from a skipped step: tau_step = tau, so tau stays
    assert rows[3]["tau"] != rows[2]["tau"] and len(rows) == 8


def test_a_negative_score_is_refused_in_the_uniform_phase_already(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=2, tau_th=NEVER, score=lambda o, b: -o["per_sample_loss"])
    with pytest.raises(
        ValueError, match=r"ImportanceSamplingCallback got a negative score \(-[0-9.]+\): scores must be non-negative"
    ):
        fit(tmp_path, [cb], max_epochs=1)


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
        trainer.fit(TinyClassifier(), datamodule=blob_datamodule())
    told = caplog.text + "\n".join(str(w.message) for w in warned)
    assert len(re.findall(said, told)) == 1


def test_a_long_run_whose_average_never_passes_is_not_told_to_run_longer(tmp_path):
    scores = torch.ones(64)
    scores[5] = 200.0  # a presample with point 5 is very uneven; the others are uniform
    probe = lp.ImportanceSamplingCallback(score=table_score(scores), tau_th=NEVER, a_tau=0.5, tau_every_n_steps=1)
    small_trainer(tmp_path, callbacks=[probe], max_epochs=2).fit(TinyClassifier(), datamodule=blob_datamodule())
    estimate = probe.tau_switch.estimate
    between = (estimate.peak + estimate.step_peak) / 2  # above the average's peak, below one step's estimate
    cb = lp.ImportanceSamplingCallback(score=table_score(scores), tau_th=between, a_tau=0.5, tau_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"none of the 16 .* only occasional steps' estimates passed it") as record:
        small_trainer(tmp_path, callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=blob_datamodule())
    assert not any("longer run" in str(w.message) for w in record)


def test_a_run_whose_scores_are_all_nan_says_so_instead_of_too_alike(tmp_path):
    cb = lp.ImportanceSamplingCallback(score=table_score(torch.full((64,), float("nan"))), tau_every_n_steps=1)
    with pytest.warns(UserWarning, match=r"16 steps scored only NaN or inf") as record:
        small_trainer(tmp_path, callbacks=[cb], max_epochs=2).fit(TinyClassifier(), datamodule=blob_datamodule())
    assert not any("too alike" in str(w.message) for w in record)


def test_the_progress_bar_shows_tau_next_to_its_threshold(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_th=1.5)
    trainer = small_trainer(tmp_path, callbacks=[cb], max_epochs=1)
    trainer.fit(TinyClassifier(), datamodule=blob_datamodule())
    assert trainer.progress_bar_metrics["per/tau_th"] == 1.5 and "per/tau" in trainer.progress_bar_metrics
