import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import IterableDataset

import lightning_per as lp
from lightning_per import functional as PF
from tests.helpers import DictDataset, ListDataset, RecordingLogger, TinyClassifier, blobs, small_trainer


def _fit(tmp_path, dm, model=None, tracker=None, **trainer_kwargs):
    model = model or TinyClassifier()
    tracker = tracker or lp.LossTracker()
    trainer_kwargs.setdefault("callbacks", [tracker])
    trainer = small_trainer(tmp_path, **trainer_kwargs)
    trainer.fit(model, datamodule=dm)
    return trainer, model, tracker


def test_scores_fill_the_table_and_weights_reach_training_step(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), blobs(16, seed=1), batch_size=16, strategy="proportional", seed=0)
    trainer, model, _ = _fit(tmp_path, dm, max_epochs=3)
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
    trainer, _, _ = _fit(
        tmp_path, dm, max_epochs=3, logger=logger, enable_checkpointing=True, callbacks=[tracker, best]
    )
    ours = [(step, w) for step, w in zip(logger.steps, logger.writes, strict=True) if "per/ess" in w]
    # one write per epoch, at the step Lightning's own epoch-end logs use (4 steps per epoch), with the epoch
    assert [step for step, _ in ours] == [4, 8, 12] and [w["epoch"] for _, w in ours] == [0, 1, 2]
    assert ours[-1][1]["per/ess"] == pytest.approx(tracker.last_stats["per/ess"])
    assert float(trainer.callback_metrics["per/ess"]) == pytest.approx(tracker.last_stats["per/ess"])
    assert best.best_model_score is not None and 0 < float(best.best_model_score) <= 1  # monitorable


def test_each_epochs_statistics_describe_that_epoch_and_the_schedule_spans_the_prioritized_epochs(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=16, strategy="proportional", seed=0)  # beta 0.4 -> 1.0
    logger = RecordingLogger()
    _, model, tracker = _fit(tmp_path, dm, max_epochs=4, logger=logger)
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


def test_a_loss_with_the_wrong_number_of_rows_is_refused_by_name(tmp_path):
    # (n, T) per-token losses are read as sequences (tests/test_sequence.py); a loss of another length is refused
    class Short(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            out["per_sample_loss"] = out["per_sample_loss"][:4, None].expand(-1, 3)
            return out

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="proportional")
    with pytest.raises(ValueError, match=r"'per_sample_loss' with shape \(4, 3\).*one row per sample"):
        _fit(tmp_path, dm, model=Short())


@pytest.mark.parametrize("wrap", [DictDataset, ListDataset])
def test_dict_and_list_samples_work(tmp_path, wrap):
    dm = lp.PrioritizedDataModule(wrap(blobs(32)), batch_size=8, strategy="rank")
    _fit(tmp_path, dm)
    assert dm.scores.seen == 32


def returned_score(outputs, batch):
    """A score function: the per-sample values the model returns under "score"."""
    return outputs["score"]


@pytest.mark.parametrize("score", ["deviation", "margin", "grad_norm", "novelty", returned_score])
def test_every_score_kind_records_finite_non_negative_scores(tmp_path, score):
    dm = lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy="proportional")
    _fit(tmp_path, dm, tracker=lp.LossTracker(score=score))
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
    _fit(tmp_path, dm, model=TinyClassifier(classes=2, lr=0.0), tracker=lp.LossTracker(class_balance=1.0), max_epochs=1)
    torch.manual_seed(0)
    _fit(tmp_path, plain, model=TinyClassifier(classes=2, lr=0.0), max_epochs=1)
    ratio = dm.scores.scores / plain.scores.scores  # factor (n_c / mean n_c)^-1 with counts 54 and 6, mean 30
    assert torch.allclose(ratio[:6], torch.full((6,), 5.0), rtol=1e-4)
    assert torch.allclose(ratio[6:], torch.full((54,), 30 / 54), rtol=1e-4)


def test_refresh_pass_scores_every_sample_in_eval_mode(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, strategy="proportional")
    _, model, _ = _fit(
        tmp_path, dm, tracker=lp.LossTracker(refresh_every_n_epochs=1), limit_train_batches=2, max_epochs=1
    )
    assert dm.scores.seen == 40  # only 16 were trained on; the refresh pass scored all of them
    assert sum(len(i) for i in model.seen_index) == 16 and model.training


def test_missing_per_sample_losses_name_the_key_and_the_fix(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r'per_sample_loss(.|\n)*reduction="none"') as error:
        _fit(tmp_path, dm, model=TinyClassifier(return_mode="tensor"))
    assert "\n" in str(error.value) and "\\n" not in str(error.value)  # the hint prints on its own lines


def test_every_missing_key_is_named_at_once(tmp_path):
    class LossOnly(TinyClassifier):
        def training_step(self, batch, batch_idx):
            out = super().training_step(batch, batch_idx)
            return {"loss": out["loss"], "per_sample_loss": out["per_sample_loss"]}

    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r"under 'logits' and 'target'.*the keys \['loss', 'per_sample_loss'\]"):
        _fit(tmp_path, dm, model=LossOnly(), tracker=lp.LossTracker(score="margin"))


def test_losses_of_the_wrong_length_are_refused(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    with pytest.raises(ValueError, match=r"'per_sample_loss' with shape \(7,\), but the batch has 8"):
        _fit(tmp_path, dm, model=TinyClassifier(return_mode="short"))


def test_non_finite_losses_never_enter_the_table_and_are_counted(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="proportional")
    with pytest.warns(UserWarning, match="non-finite"):
        trainer, _, tracker = _fit(tmp_path, dm, model=TinyClassifier(return_mode="nan"), max_epochs=2)
    assert torch.isfinite(dm.scores.scores[~torch.isnan(dm.scores.scores)]).all()
    assert trainer.callback_metrics["per/nonfinite"] == 2 and tracker._nonfinite_total == 4


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
        _fit(tmp_path, dm, model=model, tracker=tracker, max_epochs=2)
    # refused in the first epoch (8 steps), on the first step (a check per fit) or at the next synchronisation
    assert len(model.seen_index) == first_negative + 1 + (first_negative > 0)


def test_iterable_dataset_is_refused_at_construction_with_the_reason():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from blobs(8)

    with pytest.raises(TypeError, match=r"`train_dataset` is an IterableDataset \(Stream\).*map-style Dataset"):
        lp.PrioritizedDataModule(Stream(), batch_size=4)
    dm = lp.PrioritizedDataModule(batch_size=4)
    with pytest.raises(TypeError, match="map-style Dataset"):  # set later, as a subclass's `setup` would
        dm.train_dataset = Stream()


def test_tracker_without_prioritized_datamodule_is_refused(tmp_path):
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker()])
    loader = torch.utils.data.DataLoader(blobs(8), batch_size=4)
    with pytest.raises(TypeError, match="PrioritizedDataModule"):
        trainer.fit(TinyClassifier(), train_dataloaders=loader)


def test_batch_size_larger_than_the_dataset_works(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(5), batch_size=64, strategy="rank")
    _, model, _ = _fit(tmp_path, dm)
    assert [len(i) for i in model.seen_index] == [5, 5]
    with pytest.raises(ValueError, match="drop_last=True"):
        _fit(tmp_path, lp.PrioritizedDataModule(blobs(5), batch_size=64, drop_last=True))


def test_prune_shortens_epochs_and_ends_with_full_epochs(tmp_path, caplog):
    dm = lp.PrioritizedDataModule(
        blobs(80), batch_size=10, strategy=lp.SamplingStrategy("prune", final_uniform_epochs=1)
    )
    with caplog.at_level("INFO"):
        trainer, model, _ = _fit(tmp_path, dm, max_epochs=4)
    # the notice says what the tracker did, not what the user must do
    assert "so it set the Trainer's `reload_dataloaders_every_n_epochs` from 0 to 1" in caplog.text
    assert "nothing to do on your side" in caplog.text and trainer.reload_dataloaders_every_n_epochs == 1
    lengths = [len(model.epoch_index[e]) for e in range(4)]
    assert lengths[0] == 80 and lengths[3] == 80 and all(n < 80 for n in lengths[1:3])


class _KillAfter(Callback):
    """Stops the run at the end of epoch ``epochs - 1``: a kill, with the Trainer configured as the full run."""

    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _ckpt_run(tmp_path, max_epochs, ckpt_path=None, every=None, kill_after=None):
    torch.manual_seed(0)
    dm = lp.PrioritizedDataModule(blobs(48), batch_size=8, strategy="proportional", seed=5)
    model = TinyClassifier()
    callbacks = [lp.LossTracker(ema=0.5)]
    if kill_after:
        callbacks.append(_KillAfter(kill_after))
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
        )
    trainer = small_trainer(tmp_path, callbacks=callbacks, max_epochs=max_epochs, enable_checkpointing=bool(every))
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, dm


def test_kill_and_resume_draws_exactly_what_the_uninterrupted_run_draws(tmp_path):
    full, full_dm = _ckpt_run(tmp_path / "a", 4)
    _ckpt_run(tmp_path / "b", 4, every=True, kill_after=2)
    ckpt = tmp_path / "b" / "epoch=1-step=12.ckpt"
    state = torch.load(ckpt, weights_only=True)  # the whole checkpoint loads with weights_only
    assert "PrioritizedDataModule" in state
    resumed, resumed_dm = _ckpt_run(tmp_path / "c", 4, ckpt_path=str(ckpt))
    assert resumed.epoch_index[2] == full.epoch_index[2] and resumed.epoch_index[3] == full.epoch_index[3]
    assert torch.equal(resumed_dm.scores.scores, full_dm.scores.scores)


def test_resume_with_another_max_epochs_warns_that_the_schedule_was_rescaled(tmp_path):
    _ckpt_run(tmp_path / "a", 3, every=True)
    ckpt = str(tmp_path / "a" / "epoch=2-step=18.ckpt")
    with pytest.warns(UserWarning, match=r"`max_epochs=3`, now `max_epochs=6`.*beta from 0.4 to 1.0.*from epoch 3 on"):
        _ckpt_run(tmp_path / "b", 6, ckpt_path=ckpt)
    with warnings.catch_warnings():  # the same length continues the saved schedule: nothing to say
        warnings.filterwarnings("error", "Resumed from a run")
        _ckpt_run(tmp_path / "c", 3, ckpt_path=str(tmp_path / "a" / "epoch=1-step=12.ckpt"))


def test_resume_with_a_dataset_of_another_length_names_both_lengths(tmp_path):
    _ckpt_run(tmp_path, 1, every=True)
    dm = lp.PrioritizedDataModule(blobs(50), batch_size=8, strategy="proportional")
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker()], max_epochs=2)
    with pytest.raises(ValueError, match="48 samples but the training set has 50"):
        trainer.fit(TinyClassifier(), datamodule=dm, ckpt_path=str(tmp_path / "epoch=0-step=6.ckpt"))


def test_bad_tracker_arguments():
    with pytest.raises(ValueError, match="`score` must be one of"):
        lp.LossTracker(score="bogus")
    with pytest.raises(ValueError, match=r"`ema` must be a finite number in \[0, 1\), got 1.0"):
        lp.LossTracker(ema=1.0)
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1, got 0"):
        lp.PrioritizedDataModule(batch_size=0)


def test_tracker_state_loads_weights_only(tmp_path):
    t = lp.LossTracker(score="novelty")
    t._scorer._novelty_mean = torch.ones(3)
    torch.save(t.state_dict(), tmp_path / "t.pt")
    u = lp.LossTracker(score="novelty")
    u.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    assert torch.equal(u._scorer._novelty_mean, torch.ones(3))


def test_a_strategy_given_as_a_dict_is_accepted_as_yaml_gives_it_and_bad_ones_are_refused_at_once(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy={"name": "rank", "alpha": 0.5})
    assert dm.strategy == lp.SamplingStrategy("rank", alpha=0.5)
    _fit(tmp_path, dm)
    with pytest.raises(TypeError, match=r"unknown key\(s\) \['nme'\]; SamplingStrategy takes name, alpha"):
        lp.PrioritizedDataModule(blobs(8), strategy={"nme": "rank"})
    with pytest.raises(ValueError, match="`alpha` must be a finite number >= 0, got -1"):
        lp.PrioritizedDataModule(blobs(8), strategy={"name": "rank", "alpha": -1})
    with pytest.raises(TypeError, match=r"`strategy` must be a SamplingStrategy.*got int"):
        lp.PrioritizedDataModule(blobs(8), strategy=3)


def test_the_default_beta_schedule_anneals_to_unbiased_weights_and_warns_without_max_epochs(tmp_path):
    strategy = lp.SamplingStrategy("proportional")
    assert (strategy.beta, strategy.beta_final) == (0.4, 1.0)  # chosen on validation (benchmarks/select_defaults.py)
    assert strategy.scheduled(0, 5)[1] == pytest.approx(0.4)
    assert strategy.scheduled(4, 5)[1] == pytest.approx(1.0)  # the last epoch is unbiased
    dm = lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy=strategy)
    with pytest.warns(UserWarning, match=r"anneals beta from 0.4 to 1.0 .*`max_epochs=-1`"):
        _fit(tmp_path, dm, max_epochs=None, max_steps=12)


def test_a_non_finite_embedding_scores_nan_but_never_poisons_the_novelty_mean():
    t = lp.Score("novelty", novelty_momentum=0.5)
    t._novelty(torch.tensor([[1.0, 1.0], [3.0, 3.0]]))  # mean (2, 2)
    bad = torch.tensor([[float("nan"), 0.0], [2.0, 4.0], [float("inf"), 1.0]])
    scores = t._novelty(bad)
    assert torch.isnan(scores[0]) and not torch.isfinite(scores[2]) and scores[1] == pytest.approx(2.0)
    assert torch.allclose(t._novelty_mean, torch.tensor([2.0, 3.0]))  # blended with the one finite row only
    t._novelty(torch.full((2, 2), float("nan")))  # a batch without a finite row leaves the mean as it was
    assert torch.allclose(t._novelty_mean, torch.tensor([2.0, 3.0]))
    assert torch.isfinite(t._novelty(torch.zeros(2, 2))).all()
    u = lp.Score("novelty", novelty_momentum=0.5)
    assert torch.isnan(u._novelty(torch.full((2, 2), float("inf")))).all()  # a first batch without a finite row
    u._novelty(torch.full((1, 2), 4.0))
    assert torch.equal(u._novelty_mean, torch.full((2,), 4.0))  # the mean starts from the first finite rows


@pytest.mark.parametrize("score", ["grad_norm", "deviation", "margin"])
def test_targets_as_labels_column_or_one_hot_rows_score_like_plain_labels(score):
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 1, 0])
    batch = lp.PrioritizedBatch(None, torch.arange(5), torch.ones(5))
    t = lp.LossTracker(score=score, class_balance=0.5)._scorer
    expected = t({"logits": logits, "target": labels}, batch)
    forms = (
        labels[:, None],
        labels.float(),
        labels[:, None].float(),
        F.one_hot(labels, 3),
        F.one_hot(labels, 3).float(),
    )
    for target in forms:
        values, classes = t({"logits": logits, "target": target}, batch), t.labels({"target": target}, 5)
        assert values.shape == (5,) and torch.allclose(values, expected), target
        assert torch.equal(classes, labels)  # what class_balance counts
    with pytest.raises(ValueError, match=r"`targets` has shape \(5, 2\)"):
        PF.softmax_ce_grad_norm(logits, torch.zeros(5, 2, dtype=torch.long))


def test_bce_and_mse_bounds_pair_each_output_with_its_own_target():
    out, y = torch.tensor([[0.0], [2.0], [-1.0]]), torch.tensor([1.0, 0.0, 1.0])
    assert torch.allclose(PF.mse_grad_norm(out, y), PF.mse_grad_norm(out, y[:, None]))  # (n, 1) against (n,)
    assert PF.mse_grad_norm(out, y).shape == (3,)
    assert torch.allclose(PF.sigmoid_bce_grad_norm(out, y), PF.sigmoid_bce_grad_norm(out, y[:, None]))
    with pytest.raises(ValueError, match="give one target per output"):
        PF.mse_grad_norm(out, torch.zeros(4))


@pytest.mark.parametrize("new_size", [100, 20])
def test_a_replaced_training_set_of_another_length_starts_the_scores_afresh(tmp_path, new_size):
    dm = lp.PrioritizedDataModule(blobs(48), batch_size=8, strategy="proportional", seed=0)
    small_trainer(tmp_path, callbacks=[lp.LossTracker(class_balance=0.5)], max_epochs=2).fit(TinyClassifier(), dm)
    assert len(dm.scores) == 48
    dm.train_dataset = blobs(new_size, seed=1)  # e.g. a grown (or filtered) data set, re-fitted
    model = TinyClassifier()
    with pytest.warns(UserWarning, match=f"now has {new_size} samples but the score table was built for 48"):
        small_trainer(tmp_path, callbacks=[lp.LossTracker(class_balance=0.5)], max_epochs=2).fit(model, dm)
    assert len(dm.scores) == new_size and len(dm.sampler.dataset) == new_size
    assert sorted(model.epoch_index[0]) == list(range(new_size))  # a uniform first pass over the new set
    assert set(model.epoch_index[1]) <= set(range(new_size))


def test_a_pruned_epoch_shorter_than_a_batch_keeps_its_partial_batch_with_drop_last(tmp_path):
    strategy = lp.SamplingStrategy("prune", prune_ratio=0.9, final_uniform_epochs=0)
    dm = lp.PrioritizedDataModule(blobs(30), batch_size=20, drop_last=True, strategy=strategy, seed=0)
    model = TinyClassifier()
    with pytest.warns(UserWarning, match="fewer than `batch_size=20`: this epoch keeps its partial batch"):
        small_trainer(tmp_path, callbacks=[lp.LossTracker()], max_epochs=3).fit(model, dm)
    assert len(model.epoch_index[0]) == 20  # epoch 0: full pass of 30, the last partial batch dropped
    assert all(0 < len(model.epoch_index[e]) < 20 for e in (1, 2))  # pruned epochs still train
    with pytest.raises(ValueError, match="`batch_size=40` with `drop_last=True` leaves no batch: each process gets 30"):
        lp.PrioritizedDataModule(blobs(30), batch_size=40, drop_last=True).train_dataloader()


def test_the_progress_bar_shows_the_effective_sample_size(tmp_path):
    trainer, _, _ = _fit(tmp_path, lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy="rank", seed=0))
    assert 0 < trainer.progress_bar_metrics["per/ess"] <= 1
