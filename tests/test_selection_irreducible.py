"""lightning_per.selection.irreducible: IrreducibleLoss, its holdout, its table and what it refuses."""

import logging

import pytest
import torch

import lightning_per as lp
from lightning_per.examples import Classifier
from tests.helpers import TinyClassifier, blob_datamodule, blobs, fit, small_trainer


def test_the_holdout_is_removed_from_training_and_the_table_has_one_loss_per_training_sample(tmp_path):
    dm = blob_datamodule(80, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=2)
    model = fit(tmp_path, [irreducible], datamodule=dm, max_epochs=1).model
    assert len(dm.train_dataset) == 60 and len(dm.holdout_dataset) == 20
    held = set(dm.holdout_dataset.indices)
    assert not held & set(dm.train_dataset.indices) and sorted([*held, *dm.train_dataset.indices]) == list(range(80))
    assert sorted(i for step in model.seen_index for i in step) == list(range(60))  # indices number the rest
    table = irreducible.table
    assert table.shape == (60,) and table.dtype == torch.float32 and bool(torch.isfinite(table).all())
    x, y = blobs(80)[dm.train_dataset.indices]
    expected = torch.nn.functional.cross_entropy(irreducible.model.eval()(x), y, reduction="none")
    assert torch.allclose(table, expected.detach(), atol=1e-5)
    assert irreducible.cost_units == 3 * 2 * 20 + 60  # two epochs over the holdout, one pass over the rest


def test_a_saved_table_for_other_data_is_refused_naming_both_lengths(tmp_path):
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    fit(tmp_path / "a", [irreducible], datamodule=blob_datamodule(80, holdout_fraction=0.25), max_epochs=1)
    state = irreducible.state_dict()
    torch.save(state, tmp_path / "il.pt")
    restored = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    restored.load_state_dict(torch.load(tmp_path / "il.pt", weights_only=True))
    with pytest.raises(ValueError, match=r"for 60 training samples \(holdout 20\), but this run has 72 \(holdout 8\)"):
        fit(tmp_path / "b", [restored], datamodule=blob_datamodule(80, holdout_fraction=0.1), max_epochs=1)


def test_a_table_saved_by_one_run_is_read_back_by_table_path_with_no_model_trained(tmp_path):
    dm = blob_datamodule(80, holdout_fraction=0.25)
    first = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    fit(tmp_path / "a", [first, lp.LossTracker(score="reducible")], datamodule=dm, max_epochs=1)
    torch.save(first.table, tmp_path / "table.pt")
    again = lp.IrreducibleLoss(table_path=str(tmp_path / "table.pt"))
    fit(tmp_path / "b", [again, lp.LossTracker(score="reducible")], datamodule=dm, max_epochs=1)
    assert torch.equal(again.table, first.table) and again.cost_units == 0
    with pytest.raises(ValueError, match=r"holds 60 losses, but the training set has 72 samples"):
        fit(
            tmp_path / "c",
            [lp.IrreducibleLoss(table_path=str(tmp_path / "table.pt"))],
            datamodule=blob_datamodule(80, holdout_fraction=0.1),
            max_epochs=1,
        )


def test_reducible_needs_an_irreducible_loss_callback_and_a_holdout(tmp_path):
    with pytest.raises(ValueError, match=r"TopKSelection\(score='reducible'\) needs .*IrreducibleLoss"):
        fit(tmp_path, [lp.TopKSelection()])
    with pytest.raises(ValueError, match=r"no holdout set.*holdout_fraction=0.25"):
        fit(tmp_path, [lp.IrreducibleLoss(model=TinyClassifier()), lp.TopKSelection()])
    with pytest.raises(ValueError, match=r"`holdout_fraction` must be a finite number in \[0, 1\), got 1.0"):
        blob_datamodule(holdout_fraction=1.0)


def test_an_irreducible_loss_model_of_the_wrong_size_is_named_in_the_error(tmp_path):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=Classifier(in_features=7, num_classes=3, arch="mlp"), max_epochs=1)
    trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=2)], max_epochs=1)
    with pytest.raises(ValueError, match=r"IrreducibleLoss: the holdout model \(Classifier\) failed while training it"):
        trainer.fit(TinyClassifier(), datamodule=dm)


def test_a_holdout_model_without_per_sample_losses_is_refused_by_the_shared_reader(tmp_path):
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(return_mode="tensor"), max_epochs=1)  # trains, then scores
    pattern = r"IrreducibleLoss \(the holdout model\): `training_step` returned a Tensor, without 'per_sample_loss'"
    with pytest.raises(ValueError, match=pattern):
        fit(
            tmp_path,
            [irreducible, lp.TopKSelection(presample=2)],
            datamodule=blob_datamodule(40, holdout_fraction=0.25),
        )


def test_an_irreducible_loss_nobody_reads_is_warned_about(tmp_path, caplog):
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=Classifier(in_features=4, num_classes=3, arch="mlp"), max_epochs=1)
    trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=2, score="loss")])
    with (
        caplog.at_level(logging.INFO),
        pytest.warns(UserWarning, match="no callback reads the irreducible losses") as w,
    ):
        trainer.fit(TinyClassifier(), datamodule=dm)
    # its own fit is a step of the user's run: no second banner, no "max_epochs reached" of its 1 epoch, no note
    # that its holdout model's `validation_step` has no data
    assert "`max_epochs=1` reached" not in caplog.text and caplog.text.count("GPU available") <= 1
    told = caplog.text + "\n".join(str(warning.message) for warning in w)
    assert "val_dataloader" not in told and told.count("does not run") == 1  # the user's fit, without a val set


def test_a_reader_whose_token_reduction_differs_from_the_irreducible_losses_is_refused(tmp_path):
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), token_reduction="sum")
    dm = lp.PrioritizedDataModule(blobs(40), batch_size=8, holdout_fraction=0.25)
    for reader in (lp.TopKSelection(presample=2), lp.LossTracker(score="reducible")):
        with pytest.raises(
            ValueError, match=r"score takes the mean of each sequence's token losses and IrreducibleLoss"
        ):
            small_trainer(tmp_path, callbacks=[irreducible, reader]).fit(TinyClassifier(), datamodule=dm)
