"""Bad input gets a clear, early error that names the argument, the value and the fix (never Python's raw message)."""

import logging

import pytest
import torch
from torch.utils.data import IterableDataset, TensorDataset

import lightning_per as lp
from lightning_per._checks import check_device, check_int, check_number
from lightning_per.continual import TaskAccuracyMatrix, TaskDataset, TaskSequence
from lightning_per.examples import Classifier
from lightning_per.replay import MER, ExperienceReplay, ReplayBuffer
from tests.helpers import TinyClassifier, blobs, small_trainer


class _Stream(IterableDataset):
    def __iter__(self):
        yield from blobs(8)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: lp.PrioritizedDataModule(blobs(8), batch_size="32"), TypeError, r"`batch_size` must be an integer"),
        (lambda: lp.SamplingStrategy(alpha="1.0"), TypeError, r"`alpha` must be a finite number >= 0, got '1.0'"),
        (lambda: lp.ImportanceSamplingCallback(tau_th="high"), TypeError, r"`tau_th` must be a finite number > 0"),
        (lambda: lp.weighted_mean([1.0, 2.0], None), TypeError, r"`losses` must be a tensor of per-sample losses"),
        (lambda: MER("MyModule"), TypeError, r"`module` must be your LightningModule instance"),
        (lambda: TaskSequence(tasks=[]), ValueError, r"`tasks` is empty"),
        (lambda: TaskSequence(tasks=[_Stream()]), TypeError, r"`tasks\[0\]` must be a map-style dataset"),
        (lambda: ReplayBuffer(capacity=10, sampler="uniform"), TypeError, r"`sampler` must be a replay sampler"),
        (lambda: ExperienceReplay(device="gpu0"), ValueError, r"`device` must be a device name .*got 'gpu0'"),
        (lambda: TaskDataset(blobs(4), task="a"), TypeError, r"`task` must be an integer >= 0, got 'a'"),
        (lambda: lp.PrioritizedDataModule(_Stream()), TypeError, r"`train_dataset` is an IterableDataset"),
        (lambda: lp.Score("loss", loss_key=3), TypeError, r"`loss_key` must be a str"),
        (lambda: TaskAccuracyMatrix(inputs=[0.5]), TypeError, r"`inputs` must hold tuple positions"),
    ],
)
def test_a_wrong_value_is_refused_at_construction_naming_the_argument(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_the_shared_checks_say_what_was_expected():
    with pytest.raises(TypeError, match=r"`n` must be an integer >= 1, got True \(bool\)"):
        check_int("n", True, 1)
    with pytest.raises(ValueError, match=r"`x` must be a finite number in \(0, 1\], got 0.0"):
        check_number("x", 0, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match=r"`x` must be a finite number >= 0, got nan"):
        check_number("x", float("nan"), 0.0)
    assert check_number("x", None, 0.0, optional=True) is None and check_device("d", "module", ["module"]) == "module"


def test_a_task_accuracy_matrix_without_a_task_sequence_is_refused_at_setup(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    trainer = small_trainer(tmp_path, callbacks=[TaskAccuracyMatrix()], max_epochs=1)
    with pytest.raises(ValueError, match=r"must be a `lightning_per.continual.TaskSequence`.*PrioritizedDataModule"):
        trainer.fit(TinyClassifier(), datamodule=dm)


def test_a_task_accuracy_matrix_key_the_samples_lack_is_refused_before_the_first_task(tmp_path):
    dm = TaskSequence(tasks=[blobs(8)], test_tasks=[blobs(8)], batch_size=4)
    trainer = small_trainer(tmp_path, callbacks=[TaskAccuracyMatrix(inputs="image")], max_epochs=1)
    with pytest.raises(ValueError, match=r"`inputs`='image'\): the evaluation samples are tuples of 3 fields"):
        trainer.fit(TinyClassifier(), datamodule=dm)
    assert trainer.global_step == 0


def test_margin_on_regression_targets_is_refused(tmp_path):
    score = lp.Score("margin")
    batch = lp.PrioritizedBatch(None, torch.arange(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"reads 'target' as class labels in \[0, 2\), but got 0.5"):
        score({"logits": torch.zeros(3, 2), "target": torch.tensor([0.5, 1.0, 0.0])}, batch)
    with pytest.raises(ValueError, match=r"needs class scores 'logits' of shape \(n, C\)"):
        score({"logits": torch.zeros(3, 2), "target": torch.zeros(3, 5)}, batch)


def test_an_irreducible_loss_model_of_the_wrong_size_is_named_in_the_error(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=Classifier(in_features=7, num_classes=3, arch="mlp"), max_epochs=1)
    trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=2)], max_epochs=1)
    with pytest.raises(ValueError, match=r"IrreducibleLoss: the holdout model \(Classifier\) failed while training it"):
        trainer.fit(TinyClassifier(), datamodule=dm)


def test_an_irreducible_loss_nobody_reads_is_warned_about(tmp_path, caplog):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=Classifier(in_features=4, num_classes=3, arch="mlp"), max_epochs=1)
    trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=2, score="loss")])
    with caplog.at_level(logging.INFO), pytest.warns(UserWarning, match="no callback reads the irreducible losses"):
        trainer.fit(TinyClassifier(), datamodule=dm)
    # its own fit is a step of the user's run: no second banner, no "max_epochs reached" of its 1 epoch
    assert "`max_epochs=1` reached" not in caplog.text and caplog.text.count("GPU available") <= 1


def test_two_online_selection_callbacks_are_refused_at_setup(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    callbacks = [lp.ImportanceSamplingCallback(), lp.TopKSelection(presample=2, score="loss")]
    with pytest.raises(ValueError, match=r"ImportanceSamplingCallback and TopKSelection .* would compound"):
        small_trainer(tmp_path, callbacks=callbacks).fit(TinyClassifier(), datamodule=dm)


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


def test_a_strategy_set_after_the_sampler_exists_is_the_one_drawn_from():
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8, strategy="uniform", seed=0)
    assert dm.sampler.strategy.name == "uniform"
    dm.strategy = "rank"  # as a name, a dict or a SamplingStrategy, as the constructor takes it
    assert dm.sampler.strategy.name == "rank" and dm.sampler.plan().weighted is False  # epoch 0: nothing scored yet
    dm.scores.update(torch.arange(16), torch.arange(16.0))
    dm.prepare_epoch(1)
    assert dm.sampler.plan().weighted
