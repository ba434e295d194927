"""lightning_per.batch: the batch type (unpacking, reading by key, batch-size inference) and weighted_mean."""

import pytest
import torch

import lightning_per as lp
from tests.helpers import DictDataset, TinyClassifier, blobs, small_trainer


class EpochLogging(TinyClassifier):
    """Logs an epoch mean in `training_step`, which makes Lightning infer the batch size."""

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        self.log("train/loss_epoch", out["per_sample_loss"].mean(), on_step=False, on_epoch=True)
        return out


def test_dict_batches_with_epoch_logging_infer_the_batch_size(tmp_path):
    model = EpochLogging()
    dm = lp.PrioritizedDataModule(DictDataset(blobs(60)), batch_size=16, strategy="proportional", seed=0)
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker()])
    trainer.fit(model, datamodule=dm)  # used to fail: Lightning iterated the dict's keys for a batch size
    assert "train/loss_epoch" in trainer.callback_metrics
    assert lp.batch.PrioritizedBatch.__dict__.get("__iter__") is None


def test_weighted_mean_weights_each_samples_row_whatever_the_loss_shape():
    batch = lp.PrioritizedBatch(None, torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    losses = torch.tensor([1.0, 1.0, 2.0, 0.5])
    expected = (losses * batch.weight).mean()
    assert torch.allclose(lp.weighted_mean(losses, batch), expected)
    assert torch.allclose(lp.weighted_mean(losses[:, None], batch), expected)  # (n, 1), as F.mse_loss gives
    per_token = torch.tensor([[1.0, 3.0, 0.0, 0.0], [0.0, 2.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.0, 0.0, 0.0, 3.0]])
    # (n, T) with T == n must not be weighted by column
    assert torch.allclose(lp.weighted_mean(per_token, batch), (per_token.mean(1) * batch.weight).mean())
    for bad in (torch.tensor(1.0), torch.ones(3), torch.ones(5, 4)):
        with pytest.raises(ValueError, match=r"`losses` has shape .* but the batch has 4 weights"):
            lp.weighted_mean(bad, batch)


def test_unpacking_a_dict_batch_says_to_read_it_by_key():
    batch = lp.PrioritizedBatch(
        {"x": torch.zeros(2, 3), "y": torch.tensor([0, 1])}, torch.tensor([4, 7]), torch.ones(2)
    )
    with pytest.raises(TypeError, match=r"dict with the keys \['x', 'y'\]: read it by key, e\.g\. `batch\['x'\]`"):
        _, _ = batch
    assert batch["y"].tolist() == [0, 1] and list(batch.keys()) == ["x", "y"]
    _, y = lp.PrioritizedBatch((torch.zeros(2, 3), torch.tensor([0, 1])), torch.tensor([4, 7]), torch.ones(2))
    assert y.tolist() == [0, 1]  # tuple samples unpack as before
