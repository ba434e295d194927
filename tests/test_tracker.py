"""lightning_per.tracker: LossTracker records scores, reports each epoch, resumes, refuses bad input."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

import lightning_per as lp
from tests.helpers import (
    DictDataset,
    ListDataset,
    RecordingLogger,
    TinyClassifier,
    blob_datamodule,
    blobs,
    fit,
    small_trainer,
)


def test_scores_fill_the_table_and_weights_reach_training_step(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), blobs(16, seed=1), batch_size=16, strategy="proportional", seed=0)
    trainer, model, _ = fit(tmp_path, [lp.LossTracker()], datamodule=dm, max_epochs=3)
    assert dm.scores.seen == 64
    first_epoch_weights = [w for ws in model.seen_weight[:4] for w in ws]
    later_weights = [w for ws in model.seen_weight[4:] for w in ws]
    assert set(first_epoch_weights) == {1.0}  # epoch 0 has no scores yet: uniform
    assert len(set(later_weights)) > 1  # prioritized epochs carry importance weights
    for key in ("per/ess", "per/seen_fraction", "per/max_weight", "per/score_q50", "per/nonfinite"):
        assert key in trainer.callback_metrics
    assert 0 < trainer.callback_metrics["per/ess"] <= 1


def test_epoch_statistics_reach_loggers_checkpoint_monitors_and_last_stats(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy="proportional", seed=0)
    logger = RecordingLogger()
    best = ModelCheckpoint(dirpath=tmp_path, monitor="per/ess", mode="max", save_top_k=1)
    tracker = lp.LossTracker()
    trainer = fit(
        tmp_path, [tracker, best], datamodule=dm, max_epochs=3, logger=logger, enable_checkpointing=True
    ).trainer
    ours = [(step, w) for step, w in zip(logger.steps, logger.writes, strict=True) if "per/ess" in w]
    # one write per epoch, at the step Lightning's own epoch-end logs use (4 steps per epoch), with the epoch
    assert [step for step, _ in ours] == [4, 8, 12] and [w["epoch"] for _, w in ours] == [0, 1, 2]
    assert ours[-1][1]["per/ess"] == pytest.approx(tracker.last_stats["per/ess"])
    assert float(trainer.callback_metrics["per/ess"]) == pytest.approx(tracker.last_stats["per/ess"])
    assert best.best_model_score is not None and 0 < float(best.best_model_score) <= 1  # monitorable


def test_each_epochs_statistics_describe_that_epoch_and_the_schedule_spans_the_prioritized_epochs(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy="proportional", seed=0)  # beta 0.4 -> 1.0
    logger = RecordingLogger()
    tracker = lp.LossTracker()
    model = fit(tmp_path, [tracker], datamodule=dm, max_epochs=4, logger=logger).model
    rows = [w for w in logger.writes if "per/ess" in w]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # the last epoch is reported
    assert rows[0]["per/ess"] == 1.0 and rows[0]["per/max_weight"] == 1.0 and "per/beta" not in rows[0]  # uniform
    # epoch 0 is uniform, so the schedule starts in epoch 1 and ends in the last epoch
    assert [r["per/beta"] for r in rows[1:]] == pytest.approx([0.4, 0.7, 1.0])
    assert tracker.last_stats == {k: pytest.approx(v) for k, v in rows[-1].items() if k != "epoch"}
    for epoch, row in enumerate(rows):  # each row describes the weights that epoch trained with
        drawn = [w for ws in model.seen_weight[4 * epoch : 4 * epoch + 4] for w in ws]
        assert max(drawn) <= row["per/max_weight"] + 1e-6
        assert (max(drawn) > 1.0) == (epoch > 0)
        assert 0 < row["per/top10_mass"] <= 1 and row["per/seen_fraction"] > 0
    assert tracker.last_plan is not None and tracker.last_plan.beta == 1.0


def test_initial_uniform_epochs_train_uniform_passes_first_and_start_the_schedule_after_them(tmp_path):
    strategy = lp.SamplingStrategy("proportional", initial_uniform_epochs=2)  # beta 0.4 -> 1.0 over epochs 2-4
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy=strategy, seed=0)
    logger = RecordingLogger()
    model = fit(tmp_path, [lp.LossTracker()], datamodule=dm, max_epochs=5, logger=logger).model
    rows = [w for w in logger.writes if "per/ess" in w]
    assert [r["per/ess"] for r in rows[:2]] == [1.0, 1.0] and all("per/beta" not in r for r in rows[:2])
    assert [r["per/beta"] for r in rows[2:]] == pytest.approx([0.4, 0.7, 1.0])
    for epoch in range(5):  # scored all along, weighted only once the strategy applies
        drawn = [w for ws in model.seen_weight[4 * epoch : 4 * epoch + 4] for w in ws]
        assert (max(drawn) > 1.0) == (epoch >= 2)
    assert bool(torch.isfinite(dm.scores.scores).all())
    short = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy=strategy, seed=0)
    with pytest.warns(UserWarning, match="anneals beta from 0.4 to 1.0 over the Trainer's `max_epochs`"):
        fit(tmp_path / "steps", [lp.LossTracker()], datamodule=short, max_epochs=-1, max_steps=4)
    with pytest.warns(UserWarning, match="never applies: `initial_uniform_epochs=2`.*`max_epochs=2`"):  # not silenced
        fit(tmp_path / "short", [lp.LossTracker()], datamodule=short, max_epochs=2)


@pytest.mark.parametrize("wrap", [DictDataset, ListDataset])
def test_dict_and_list_samples_are_scored(tmp_path, wrap):
    dm = lp.PrioritizedDataModule(wrap(blobs(32)), batch_size=8, strategy="rank")
    fit(tmp_path, [lp.LossTracker()], datamodule=dm)
    assert dm.scores.seen == 32


def returned_score(outputs, batch):
    """A score function: the per-sample values the model returns under "score"."""
    return outputs["score"]


@pytest.mark.parametrize("score", ["deviation", "margin", "grad_norm", "novelty", returned_score])
def test_every_score_kind_records_finite_non_negative_scores(tmp_path, score):
    dm = lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy="proportional")
    fit(tmp_path, [lp.LossTracker(score=score)], datamodule=dm)
    assert dm.scores.seen == 32 and (dm.scores.scores >= 0).all()


def test_class_balance_up_weights_rare_classes(tmp_path):
    base = blobs(60, classes=2)
    y = base.tensors[1].clone()
    y[:] = 0
    y[:6] = 1  # class 1 is rare
    data = torch.utils.data.TensorDataset(base.tensors[0], y)
    dm = lp.PrioritizedDataModule(data, batch_size=10, strategy="proportional")
    plain = lp.PrioritizedDataModule(data, batch_size=10, strategy="proportional")
    torch.manual_seed(0)
    fit(
        tmp_path,
        [lp.LossTracker(class_balance=1.0)],
        datamodule=dm,
        model=TinyClassifier(classes=2, lr=0.0),
        max_epochs=1,
    )
    torch.manual_seed(0)
    fit(tmp_path, [lp.LossTracker()], datamodule=plain, model=TinyClassifier(classes=2, lr=0.0), max_epochs=1)
    ratio = dm.scores.scores / plain.scores.scores  # factor (n_c / mean n_c)^-1 with counts 54 and 6, mean 30
    assert torch.allclose(ratio[:6], torch.full((6,), 5.0), rtol=1e-4)
    assert torch.allclose(ratio[6:], torch.full((54,), 30 / 54), rtol=1e-4)


def test_refresh_pass_scores_every_sample_in_eval_mode(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, strategy="proportional")
    model = fit(
        tmp_path, [lp.LossTracker(refresh_every_n_epochs=1)], datamodule=dm, limit_train_batches=2, max_epochs=1
    ).model
    assert dm.scores.seen == 40  # only 16 were trained on; the refresh pass scored all of them
    assert sum(len(i) for i in model.seen_index) == 16 and model.training


def test_non_finite_losses_never_enter_the_table_and_are_counted(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="proportional")
    with pytest.warns(UserWarning, match="non-finite"):
        tracker = lp.LossTracker()
        trainer = fit(tmp_path, [tracker], datamodule=dm, model=TinyClassifier(return_mode="nan"), max_epochs=2).trainer
    assert torch.isfinite(dm.scores.scores[~torch.isnan(dm.scores.scores)]).all()
    assert trainer.callback_metrics["per/nonfinite"] == 2 and tracker.state_dict()["nonfinite_total"] == 4


@pytest.mark.parametrize(("first_negative", "flush"), [(0, 256), (3, 2)])
def test_negative_scores_with_proportional_are_refused_at_the_step_that_returned_them(tmp_path, first_negative, flush):
    class Negative(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            sign = -1.0 if self.global_step >= first_negative else 1.0
            out["score"] = sign * out["per_sample_loss"].detach()
            return out

    model = Negative()
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, strategy="proportional")
    tracker = lp.LossTracker(score=returned_score, flush_every_n_steps=flush)
    with pytest.raises(
        ValueError, match=rf"negative score .* in epoch 0, batch_idx {first_negative},.*strategy='rank'"
    ):
        fit(tmp_path, [tracker], datamodule=dm, model=model, max_epochs=2)
    # refused in the first epoch (8 steps), on the first step (a check per fit) or at the next synchronisation
    assert len(model.seen_index) == first_negative + 1 + (first_negative > 0)


def test_tracker_without_prioritized_datamodule_is_refused(tmp_path):
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker()])
    loader = torch.utils.data.DataLoader(blobs(8), batch_size=4)
    with pytest.raises(TypeError, match="PrioritizedDataModule"):
        trainer.fit(TinyClassifier(), train_dataloaders=loader)


def test_prune_shortens_epochs_and_ends_with_full_epochs(tmp_path, caplog):
    dm = lp.PrioritizedDataModule(
        blobs(80), batch_size=10, strategy=lp.SamplingStrategy("prune", final_uniform_epochs=1)
    )
    with caplog.at_level("INFO"):
        trainer, model, _ = fit(tmp_path, [lp.LossTracker()], datamodule=dm, max_epochs=4)
    # the notice says what the tracker did, not what the user must do
    assert "so it set the Trainer's `reload_dataloaders_every_n_epochs` from 0 to 1" in caplog.text
    assert "nothing to do on your side" in caplog.text and trainer.reload_dataloaders_every_n_epochs == 1
    lengths = [len(model.epoch_index[e]) for e in range(4)]
    assert lengths[0] == 80 and lengths[3] == 80 and all(n < 80 for n in lengths[1:3])


def test_prune_lets_lightnings_short_epoch_note_say_once_not_at_every_new_length(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    dm = lp.PrioritizedDataModule(blobs(80), batch_size=10, strategy="prune")
    logger = CSVLogger(tmp_path)  # the note needs a logger: 8 batches an epoch, fewer than log_every_n_steps
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        model = fit(tmp_path, [lp.LossTracker()], datamodule=dm, max_epochs=4, logger=logger).model
    assert len({len(model.epoch_index[e]) for e in range(4)}) > 2  # the epoch length changed more than once
    notes = [w for w in warned if "is smaller than the logging interval" in str(w.message)]
    assert len(notes) == 1


def test_bad_tracker_arguments_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="`score` must be one of"):
        lp.LossTracker(score="bogus")
    with pytest.raises(ValueError, match=r"`ema` must be a finite number in \[0, 1\), got 1.0"):
        lp.LossTracker(ema=1.0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1, got 0"):
        lp.PrioritizedDataModule(batch_size=0)


def test_tracker_state_loads_weights_only(tmp_path):
    t = lp.LossTracker(score="novelty")
    t.load_state_dict({"score": {"novelty_mean": torch.ones(3)}, "nonfinite_total": 2})
    torch.save(t.state_dict(), tmp_path / "t.pt")
    u = lp.LossTracker(score="novelty")
    u.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    state = u.state_dict()
    assert torch.equal(state["score"]["novelty_mean"], torch.ones(3)) and state["nonfinite_total"] == 2


def test_the_progress_bar_shows_the_effective_sample_size(tmp_path):
    trainer = fit(
        tmp_path,
        [lp.LossTracker()],
        datamodule=lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy="rank", seed=0),
    ).trainer
    assert 0 < trainer.progress_bar_metrics["per/ess"] <= 1
    assert {k for k in trainer.progress_bar_metrics if k.startswith("per/")} == {"per/ess"}  # the rest: loggers
    assert "per/top10_mass" in trainer.callback_metrics


class StepCounter(TinyClassifier):
    def on_train_epoch_end(self):
        self.steps_per_epoch = [*getattr(self, "steps_per_epoch", []), self.trainer.num_training_batches]


def test_num_samples_epochs_are_reloaded_at_their_own_length(tmp_path):
    model = StepCounter()
    strategy = lp.SamplingStrategy("proportional", num_samples=128)  # 128 draws from 64 samples
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy=strategy, seed=0)
    trainer = small_trainer(tmp_path, max_epochs=3, callbacks=[lp.LossTracker()])
    trainer.fit(model, datamodule=dm)
    assert model.steps_per_epoch == [4, 8, 8]  # epoch 0 is a uniform pass over the 64 samples


def test_checkpoint_before_the_epoch_end_keeps_the_unmerged_scores(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, strategy="proportional", seed=0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1, save_on_train_epoch_end=False)
    trainer = small_trainer(tmp_path, max_epochs=1, callbacks=[lp.LossTracker(), ckpt], enable_checkpointing=True)
    trainer.fit(TinyClassifier(), datamodule=dm)
    state = torch.load(tmp_path / "epoch=0-step=3.ckpt", weights_only=True)["callbacks"]["LossTracker"]
    assert state["unmerged_index"].numel() == 3 * 8 and state["unmerged_values"].shape == (24,)
    tracker = lp.LossTracker()
    tracker.load_state_dict(state)
    restored = tracker.state_dict()  # held until the next epoch end merges them into the table
    assert torch.equal(restored["unmerged_index"], state["unmerged_index"])
    assert torch.equal(restored["unmerged_values"], state["unmerged_values"])


class SkipsSteps(TinyClassifier):
    def training_step(self, batch, batch_idx):
        return None if batch_idx % 2 else super().training_step(batch, batch_idx)


def test_loss_tracker_ignores_skipped_steps(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, strategy="proportional", seed=0)
    small_trainer(tmp_path, max_epochs=1, callbacks=[lp.LossTracker()]).fit(SkipsSteps(), datamodule=dm)
    assert dm.scores.seen == 32  # only the trained half of the batches was recorded


class SoftTargets(TinyClassifier):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["target"] = F.one_hot(out["target"], 3).float() * 0.9 + 0.1 / 3  # label-smoothed probabilities
        return out


def test_grad_norm_score_accepts_class_probabilities(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(48), batch_size=8, strategy="proportional", seed=0)
    tracker = lp.LossTracker(score="grad_norm", class_balance=0.5)
    small_trainer(tmp_path, max_epochs=1, callbacks=[tracker]).fit(SoftTargets(), datamodule=dm)
    assert dm.scores.seen == 48 and bool(torch.isfinite(dm.scores.scores).all())


def test_loss_tracker_prioritizes_by_reducible_loss_across_epochs(tmp_path):
    dm = blob_datamodule(80, holdout_fraction=0.25, strategy="rank")
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=2)
    tracker = lp.LossTracker(score="reducible")

    class LastLosses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last = (batch.index.clone(), outputs["per_sample_loss"].detach().clone())

    last = LastLosses()
    fit(tmp_path, [irreducible, tracker, last], datamodule=dm, max_epochs=1)  # epoch 0 visits each sample once
    index, losses = last.last  # the table holds loss - irreducible loss of what was trained
    assert torch.allclose(dm.scores.scores[index], losses - irreducible.table[index], atol=1e-6)
    assert bool((dm.scores.scores < 0).any()) and dm.scores.seen == 60
    plan = lp.strategy.build_plan(dm.scores.scores, dm.strategy, 1, None, torch.Generator().manual_seed(0), 60)
    assert plan.cdf is not None and plan.stats["ess"] < 1  # a rank plan is drawn from them
    with pytest.raises(ValueError, match=r"negative score .*strategy='rank'"):  # proportional needs >= 0
        fit(
            tmp_path,
            [lp.IrreducibleLoss(model=TinyClassifier()), lp.LossTracker(score="reducible")],
            datamodule=blob_datamodule(80, holdout_fraction=0.25, strategy="proportional"),
            max_epochs=1,
        )


def test_a_negative_score_from_a_function_names_the_function(tmp_path):
    def log_likelihood(outputs, batch):
        return -outputs["per_sample_loss"]

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="proportional")
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker(score=log_likelihood)])
    with pytest.raises(ValueError, match=r"LossTracker\(score=.*log_likelihood\) recorded a negative score"):
        trainer.fit(TinyClassifier(), datamodule=dm)


def test_a_tracker_that_recorded_only_nan_says_so_instead_of_asking_for_a_tracker(tmp_path):
    data = TensorDataset(torch.full((16, 4), float("nan")), torch.zeros(16).long())
    dm = lp.PrioritizedDataModule(data, batch_size=8, strategy="rank")
    with pytest.warns(UserWarning) as record:
        small_trainer(tmp_path, callbacks=[lp.LossTracker()]).fit(TinyClassifier(), datamodule=dm)
    messages = [str(w.message) for w in record]
    assert any("LossTracker recorded no finite score during fit" in m and "NaN or inf" in m for m in messages)
    assert not any("add `LossTracker()`" in m for m in messages)


def test_a_tracker_whose_every_step_returned_none_says_the_steps_were_skipped(tmp_path):
    class SkipsEveryBatch(TinyClassifier):
        def training_step(self, batch, batch_idx):
            return None  # Lightning skips the optimizer step; the tracker has nothing to record

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="rank")
    with pytest.warns(UserWarning) as record:
        small_trainer(tmp_path, callbacks=[lp.LossTracker()]).fit(SkipsEveryBatch(), datamodule=dm)
    said = [str(w.message) for w in record if "LossTracker recorded no finite score" in str(w.message)]
    assert len(said) == 1 and "4 training steps returned None from `training_step` (skipped)" in said[0]
    assert not any("add `LossTracker()`" in str(w.message) for w in record)
