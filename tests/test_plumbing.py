"""The Lightning plumbing: the private attributes it reads still exist, the one data check, the shard loaders."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_per as lp
from lightning_per.plumbing import internals
from lightning_per.plumbing.loaders import shard, shard_loader
from lightning_per.plumbing.requirements import require_batch, require_datamodule
from tests.helpers import TinyClassifier, blobs, small_trainer


def test_the_lightning_internals_read_still_exist(tmp_path):
    """Fails loudly when a Lightning release renames what `plumbing/internals.py` reads (its fallbacks are silent)."""
    trainer = small_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyClassifier(), datamodule=lp.PrioritizedDataModule(blobs(16), batch_size=8))
    assert hasattr(trainer, "_logger_connector") and hasattr(trainer._logger_connector, "should_update_logs")
    assert hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")
    assert hasattr(ModelCheckpoint(every_n_train_steps=3), "_every_n_train_steps")
    assert internals.every_n_train_steps(ModelCheckpoint(every_n_train_steps=3)) == 3
    assert hasattr(TinyClassifier(), "_on_before_batch_transfer") and hasattr(TinyClassifier(), "_current_fx_name")
    assert internals.logger_step(trainer) == 2


def test_the_one_data_check_names_the_callback_and_the_fix(tmp_path):
    trainer = small_trainer(tmp_path)
    with pytest.raises(TypeError, match=r"MyCallback needs the training data to come from a .*PrioritizedDataModule"):
        require_datamodule(trainer, "MyCallback")
    with pytest.raises(TypeError, match=r"MyCallback got a training batch of type tuple"):
        require_batch((torch.zeros(2), torch.zeros(2)), "MyCallback")


def test_shards_cover_every_sample_once_and_the_loader_yields_indexed_batches():
    assert sorted([*shard(7, 0, 2), *shard(7, 1, 2)]) == list(range(7)) and list(shard(2, 3, 4)) == [0, 1]
    dm = lp.PrioritizedDataModule(blobs(10), batch_size=4, eval_batch_size=3)
    batches = list(shard_loader(dm, rank=1, world=2))
    assert [b.index.tolist() for b in batches] == [[1, 3, 5], [7, 9]]
