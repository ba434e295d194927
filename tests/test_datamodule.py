"""lightning_per.datamodule: the PrioritizedDataModule; its data checks, its strategy, resumes and replaced data."""

import warnings

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import IterableDataset

import lightning_per as lp
from tests.helpers import StopAfterEpochs, TinyClassifier, blobs, fit, small_trainer


def test_iterable_dataset_is_refused_at_construction_with_the_reason():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from blobs(8)

    with pytest.raises(TypeError, match=r"`train_dataset` is an IterableDataset \(Stream\).*map-style Dataset"):
        lp.PrioritizedDataModule(Stream(), batch_size=4)
    dm = lp.PrioritizedDataModule(batch_size=4)
    with pytest.raises(TypeError, match="map-style Dataset"):  # set later, as a subclass's `setup` would
        dm.train_dataset = Stream()


def test_a_batch_size_larger_than_the_dataset_trains_unless_drop_last(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(5), batch_size=64, strategy="rank")
    model = fit(tmp_path, [lp.LossTracker()], datamodule=dm).model
    assert [len(i) for i in model.seen_index] == [5, 5]
    with pytest.raises(ValueError, match="drop_last=True"):
        fit(tmp_path, [lp.LossTracker()], datamodule=lp.PrioritizedDataModule(blobs(5), batch_size=64, drop_last=True))


def test_a_strategy_given_as_a_dict_is_accepted_as_yaml_gives_it_and_bad_ones_are_refused_at_once(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(32), batch_size=8, strategy={"name": "rank", "alpha": 0.5})
    assert dm.strategy == lp.SamplingStrategy("rank", alpha=0.5)
    fit(tmp_path, [lp.LossTracker()], datamodule=dm)
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
        fit(tmp_path, [lp.LossTracker()], datamodule=dm, max_epochs=None, max_steps=12)


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


def _ckpt_run(tmp_path, max_epochs, ckpt_path=None, every=None, kill_after=None):
    torch.manual_seed(0)
    dm = lp.PrioritizedDataModule(blobs(48), batch_size=8, strategy="proportional", seed=5)
    model = TinyClassifier()
    callbacks = [lp.LossTracker(ema=0.5)]
    if kill_after:
        callbacks.append(StopAfterEpochs(kill_after))
    if every:
        callbacks.append(
            ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
        )
    saves = bool(every)
    fit(
        tmp_path,
        callbacks,
        model=model,
        datamodule=dm,
        ckpt_path=ckpt_path,
        max_epochs=max_epochs,
        enable_checkpointing=saves,
    )
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


def test_a_strategy_set_after_the_sampler_exists_is_the_one_drawn_from():
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="uniform", seed=0)
    assert dm.sampler.strategy.name == "uniform"
    dm.strategy = "rank"  # as a name, a dict or a SamplingStrategy, as the constructor takes it
    assert dm.sampler.strategy.name == "rank" and dm.sampler.plan().weighted is False  # epoch 0: nothing scored yet
    dm.scores.update(torch.arange(16), torch.arange(16.0))
    dm.prepare_epoch(1)
    assert dm.sampler.plan().weighted


def test_no_validation_set_says_one_line_in_place_of_lightnings_warning(tmp_path, caplog):
    import logging

    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        fit(tmp_path, datamodule=lp.PrioritizedDataModule(blobs(40), batch_size=8), max_epochs=1)  # no val_dataset
    assert not [w for w in warned if "val_dataloader" in str(w.message)]
    assert caplog.text.count("PrioritizedDataModule has no `val_dataset`: `validation_step` does not run.") == 1
