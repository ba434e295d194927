"""lightning_per.selection.engine: one selection step's cost, resume, the summary and metrics, and what it refuses."""

import logging
import math

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import lightning_per as lp
from tests.helpers import (
    ALWAYS,
    NEVER,
    RecordingLogger,
    Steps,
    StopAfterEpochs,
    TinyClassifier,
    blob_datamodule,
    blobs,
    fit,
    heavy_scores,
    small_trainer,
)


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
    trainer.fit(model, datamodule=blob_datamodule(64, 8))
    assert len(cost.steps) == 8
    uniform_step = ([(8, True, True)], 1)  # the training forward over b = 8, one backward, nothing else
    importance_step = ([(24, False, False), (8, True, True)], 1)  # + one eval, no-grad forward over B = 24
    if phase == "uniform":
        assert cost.steps == [uniform_step] * 8
    else:  # tau starts at 0, so the first step is uniform whatever the threshold
        assert cost.steps == [uniform_step] + [importance_step] * 7
    assert model.training


class Counting(TinyClassifier):
    """Records every forward call: (number of points, whether gradients were on)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return super().forward(x)


@pytest.mark.parametrize(
    ("make", "trains"),
    [
        (lambda: lp.ImportanceSamplingCallback(presample=3, tau_th=1e-9, tau_every_n_steps=1), [8]),
        (lambda: lp.TopKSelection(presample=3, score="loss"), [8]),
        (lambda: lp.SelectiveBackprop(selectivity=1.0, presample=3), None),
    ],
    ids=["importance", "topk", "selective_backprop"],
)
def test_each_selection_step_costs_one_no_grad_forward_of_the_presample_and_one_training_pass(tmp_path, make, trains):
    model = Counting()
    cb = make()
    fit(tmp_path, [cb], model=model, max_epochs=1)  # 8 steps of b = 8
    calls = model.calls
    selecting = cb.state_dict()["run_selected"]
    assert selecting >= 7 and len(calls) == 8 + selecting  # a training pass per step, a scoring pass per selection
    scoring = [c for c in calls if not c[1]]
    assert scoring == [(24, False)] * selecting  # B = 3 b, without gradients
    training = [n for n, grad in calls if grad]
    assert training == [len(i) for i in model.seen_index]  # forward and backward on the chosen points only
    if trains is not None:
        assert set(training) == set(trains)


class CountsTraining(TinyClassifier):
    fits = 0

    def on_fit_start(self):
        CountsTraining.fits += 1


def _rule_run(tmp_path, make, epochs, ckpt_path=None, kill_after=None):
    torch.manual_seed(0)
    dm = blob_datamodule(80, holdout_fraction=0.2)
    callbacks = [lp.IrreducibleLoss(model=CountsTraining(), max_epochs=2), make()]
    if kill_after:
        callbacks += [StopAfterEpochs(kill_after), ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)]
    saves = bool(kill_after)
    fitted = fit(tmp_path, callbacks, datamodule=dm, ckpt_path=ckpt_path, max_epochs=epochs, enable_checkpointing=saves)
    return fitted.model, callbacks


@pytest.mark.parametrize(
    "make",
    [
        lambda: lp.TopKSelection(presample=3),
        lambda: lp.SelectiveBackprop(selectivity=1.0, presample=2, history=32, score="reducible"),
        lambda: lp.ImportanceSamplingCallback(tau_th=1.01, tau_every_n_steps=3, a_tau=0.5),
    ],
    ids=["topk", "selective_backprop", "importance"],
)
def test_a_resumed_run_selects_what_the_uninterrupted_run_selects(tmp_path, make):
    full, (_, rule) = _rule_run(tmp_path / "full", make, 3)
    _rule_run(tmp_path / "killed", make, 3, kill_after=2)
    fits = CountsTraining.fits
    ckpt = tmp_path / "killed" / "epoch=1-step=16.ckpt"
    resumed, (irreducible, resumed_rule) = _rule_run(tmp_path / "resumed", make, 3, ckpt_path=str(ckpt))
    selected = resumed_rule.state_dict()["run_selected"]
    assert selected == rule.state_dict()["run_selected"] >= 8  # the counts go on from the checkpoint
    assert resumed.seen_index == full.seen_index[16:] and resumed.seen_weight == full.seen_weight[16:]
    assert len(set(map(tuple, full.seen_index[16:]))) == 8  # (selections differ from step to step)
    assert CountsTraining.fits == fits  # the irreducible-loss model was not trained again: its table was restored
    assert irreducible.table is not None and irreducible.table.shape == (64,)


def test_the_summary_and_the_loggers_report_what_the_selection_cost(tmp_path, caplog):
    selection = lp.TopKSelection(presample=4, score="loss")
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, [selection], max_epochs=1).trainer
    # 8 steps, each scoring a presample of 4 * 8 points without gradients and training on 8
    assert trainer.callback_metrics["per/scoring_units"] == 8 * 32
    assert trainer.callback_metrics["per/scoring_seconds"] > 0
    assert (
        "8 of 8 training steps (100%) selected from a presample; scoring cost 256 forward-sample units (1.3x the"
        in (caplog.text)
    )


def test_selective_backprop_and_an_irreducible_loss_report_their_cost_too(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        trainer = fit(tmp_path, [lp.SelectiveBackprop()], max_epochs=1).trainer
    assert trainer.callback_metrics["per/scoring_units"] == 8 * 16  # each step scores its presample of 2 * 8 points
    assert "SelectiveBackprop: 8 of 8 training steps (100%) selected" in caplog.text
    assert "scoring cost 128 forward-sample units" in caplog.text
    caplog.clear()
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    with caplog.at_level(logging.INFO):
        datamodule = blob_datamodule(holdout_fraction=0.25)  # 16 held out, 48 trained
        fit(tmp_path, [irreducible, lp.TopKSelection(presample=4)], datamodule=datamodule, max_epochs=1)
    assert irreducible.cost_units == 3 * 16 + 48  # its training on the holdout, then one forward per trained sample
    assert "scored 48 training samples" in caplog.text and "after IrreducibleLoss's 96 units" in caplog.text


@pytest.mark.parametrize(
    ("make", "shown"),
    [
        (lambda: lp.TopKSelection(presample=2, score="loss"), {"per/is_active"}),
        (lambda: lp.SelectiveBackprop(), {"per/kept_fraction"}),
        (lambda: lp.ImportanceSamplingCallback(presample=2), {"per/tau", "per/tau_th"}),
    ],
)
def test_the_progress_bar_shows_one_or_two_figures_and_the_loggers_get_the_rest(tmp_path, make, shown):
    trainer = fit(tmp_path, [make()], max_epochs=2).trainer
    assert {k for k in trainer.progress_bar_metrics if k.startswith("per/")} == shown
    assert shown < {k for k in trainer.callback_metrics if k.startswith("per/")}  # e.g. per/scoring_units


def test_a_prioritized_strategy_is_refused_by_every_rule(tmp_path):
    for cb in (lp.TopKSelection(score="loss"), lp.SelectiveBackprop()):
        with pytest.raises(ValueError, match=r"got `strategy='rank'`\. Use `strategy='uniform'`"):
            fit(tmp_path, [cb], datamodule=blob_datamodule(strategy="rank"))


def test_prioritized_strategy_is_refused_at_setup(tmp_path):
    with pytest.raises(ValueError, match=r"got `strategy='proportional'`\. Use `strategy='uniform'`"):
        fit(tmp_path, [lp.ImportanceSamplingCallback()], datamodule=blob_datamodule(strategy="proportional"))


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
        fit(tmp_path, [lp.ImportanceSamplingCallback()], model=Manual())


def test_two_online_selection_callbacks_are_refused_at_setup(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    callbacks = [lp.ImportanceSamplingCallback(), lp.TopKSelection(presample=2, score="loss")]
    with pytest.raises(ValueError, match=r"ImportanceSamplingCallback and TopKSelection .* would compound"):
        small_trainer(tmp_path, callbacks=callbacks).fit(TinyClassifier(), datamodule=dm)


def test_batchnorm_and_dropout_get_a_one_time_note_and_presamples_do_not_touch_running_stats(tmp_path, caplog):
    class Noisy(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 3))

    model = Noisy()
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    with caplog.at_level(logging.INFO):
        fit(tmp_path, [cb, steps], model=model)
        fit(tmp_path / "again", [cb], model=model, max_epochs=3)
    rows = steps.rows  # the first fit's steps
    notes = [r for r in caplog.records if "BatchNorm or Dropout" in r.getMessage()]
    assert len(notes) == 1 and "eval mode" in notes[0].getMessage()
    assert sum(r["importance"] for r in rows) > 0 and model.training
    # scoring runs in eval mode: BatchNorm's statistics moved once per training step only (16 + 24 steps)
    assert int(model.net[1].num_batches_tracked) == 40


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
        trainer.fit(TinyClassifier(), datamodule=blob_datamodule())
    assert phase.fallbacks >= 2
    assert sum("no finite score" in str(w.message) for w in record) == 1


def test_metrics_are_logged_as_means_since_the_last_log(tmp_path):
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    trainer = fit(tmp_path, [cb, steps], max_epochs=1, log_every_n_steps=50).trainer  # one log: the epoch's last step
    rows = steps.rows
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
    fit(tmp_path, [cb, losses], max_epochs=2, log_every_n_steps=10, logger=logger)
    first = next(w for w in logger.writes if "per/loss_unweighted" in w)
    window = [v for v in losses.by_step[:10] if v is not None]
    assert len(window) == 9  # step 0 is uniform (tau starts at 0)
    assert first["per/loss_unweighted"] == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert first["per/is_active"] == pytest.approx(0.9)
