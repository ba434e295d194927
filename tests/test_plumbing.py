"""lightning_per.plumbing: the Lightning internals it reads, scoring mode, the data check, shards, collectives."""

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

import lightning_per as lp
from lightning_per.plumbing import internals
from lightning_per.plumbing.distributed import all_gather_variable
from lightning_per.plumbing.inference import scoring_mode
from lightning_per.plumbing.loaders import shard, shard_loader
from lightning_per.plumbing.requirements import require_batch, require_datamodule
from tests.helpers import TinyClassifier, blobs, small_trainer


def test_the_lightning_internals_read_still_exist(tmp_path):
    """Fails loudly when a Lightning release renames what `plumbing/internals.py` reads (its fallbacks are silent)."""
    trainer = small_trainer(tmp_path, max_epochs=1)
    dm = lp.PrioritizedDataModule(blobs(16), batch_size=8)
    trainer.fit(TinyClassifier(), datamodule=dm)
    assert hasattr(trainer, "_logger_connector") and hasattr(trainer._logger_connector, "should_update_logs")
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")
    assert hasattr(ModelCheckpoint(every_n_train_steps=3), "_every_n_train_steps")
    assert internals.every_n_train_steps(ModelCheckpoint(every_n_train_steps=3)) == 3
    assert hasattr(TinyClassifier(), "_on_before_batch_transfer") and hasattr(TinyClassifier(), "_current_fx_name")
    assert internals.logger_step(trainer) == 2
    # `train_loader_given` reads what `fit` was given from the fit loop's data source
    assert trainer.fit_loop._data_source.instance is dm and internals.train_loader_given(trainer) is None
    loader = shard_loader(dm, rank=0, world=1)
    given = small_trainer(tmp_path, max_epochs=1)
    given.fit(TinyClassifier(), train_dataloaders=loader)
    assert given.fit_loop._data_source.instance is loader and internals.train_loader_given(given) is loader


def test_the_one_data_check_names_the_callback_and_the_fix(tmp_path):
    trainer = small_trainer(tmp_path)
    with pytest.raises(TypeError, match=r"MyCallback needs the training data to come from a .*PrioritizedDataModule"):
        require_datamodule(trainer, "MyCallback")
    with pytest.raises(TypeError, match=r"MyCallback got a training batch of type tuple"):
        require_batch((torch.zeros(2), torch.zeros(2)), "MyCallback")


def test_shards_cover_every_sample_once_and_the_loader_yields_indexed_batches():
    assert sorted([*shard(7, 0, 2), *shard(7, 1, 2)]) == list(range(7)) and list(shard(2, 3, 4)) == []
    dm = lp.PrioritizedDataModule(blobs(10), batch_size=4, eval_batch_size=3)
    batches = list(shard_loader(dm, rank=1, world=2))
    assert [b.index.tolist() for b in batches] == [[1, 3, 5], [7, 9]]


def test_scoring_mode_restores_every_submodule_flag():
    model = TinyClassifier()
    model.frozen = nn.Sequential(nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model.frozen.eval()  # a frozen backbone the user keeps in eval mode
    with scoring_mode(model):
        assert not model.training and not model.net.training
    assert model.training and model.net.training
    assert not model.frozen.training and not any(m.training for m in model.frozen.modules())


def test_release_destroys_the_group_and_is_a_no_op_without_one(one_process_group):
    assert dist.is_initialized()
    lp.release_process_group()
    assert not dist.is_initialized()
    lp.release_process_group()  # nothing left to release: no error


def test_all_gather_variable_with_one_process_returns_the_tensor(one_process_group):
    t = torch.arange(3)
    assert torch.equal(all_gather_variable(t, world_size=1), t)
