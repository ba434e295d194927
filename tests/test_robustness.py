"""Ordinary user set-ups that must not break: frozen submodules, dict batches with epoch logging, variable epoch
lengths, checkpoints saved before an epoch's end, per-sample tuples, skipped steps, soft targets."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

import lightning_per as lp
from lightning_per import functional as PF
from lightning_per.plumbing.inference import scoring_mode
from lightning_per.tree import concat_batches, select
from tests.helpers import DictDataset, TinyClassifier, blobs, small_trainer


def test_scoring_mode_restores_every_submodule_flag():
    model = TinyClassifier()
    model.frozen = nn.Sequential(nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model.frozen.eval()  # a frozen backbone the user keeps in eval mode
    with scoring_mode(model):
        assert not model.training and not model.net.training
    assert model.training and model.net.training
    assert not model.frozen.training and not any(m.training for m in model.frozen.modules())


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
    index, values, _ = tracker._local()  # restored: merged into the table at the next epoch end
    assert torch.equal(index, state["unmerged_index"]) and torch.equal(values, state["unmerged_values"])


def test_per_sample_tuples_of_different_shapes_are_not_read_as_fields():
    # a detection-style collate: (tuple of images of different sizes, tuple of per-sample dicts)
    def make(n, start):
        images = tuple(torch.zeros(3, 4 + i, 5) for i in range(n))
        targets = tuple({"boxes": torch.ones(i + 1, 4)} for i in range(n))
        return lp.PrioritizedBatch((images, targets), torch.arange(start, start + n), torch.ones(n))

    joined = concat_batches(make(2, 0), make(4, 10))
    assert joined.batch_size == 6 and len(joined.data[0]) == 6 and len(joined.data[1]) == 6
    picked = select(joined, torch.tensor([5, 0]))
    assert [tuple(im.shape) for im in picked.data[0]] == [(3, 7, 5), (3, 4, 5)]
    assert picked.data[1][0]["boxes"].shape == (4, 4) and picked.index.tolist() == [13, 0]
    # the usual (x, y) fields with as many fields as samples are still fields
    xy = lp.PrioritizedBatch((torch.arange(2), torch.arange(2) + 5), torch.arange(2), torch.ones(2))
    assert select(xy, torch.tensor([1])).data[1].tolist() == [6]


def _rgb(i):
    return torch.full((3, 4 + i, 5), float(i))  # 3 channels: as many rows as a presample of 3 has samples


@pytest.mark.parametrize(
    "make, check",
    [
        (lambda i: (torch.tensor([[i]]), torch.tensor([i]), ["abc"[i]]), lambda d: d[2] == ["c", "c"]),
        (
            lambda i: (torch.tensor([[i]]), torch.tensor([i]), {"id": torch.tensor([10 + i])}),
            lambda d: d[2]["id"].tolist() == [12, 12],
        ),
        (
            lambda i: (torch.tensor([[i]]), (torch.tensor([i]), torch.tensor([i])), torch.tensor([i])),
            lambda d: d[1][1].tolist() == [2, 2],
        ),
        (lambda i: (torch.tensor([[i]]), torch.tensor([i]), ("abc"[i],)), lambda d: d[2] == ("c", "c")),
        (
            lambda i: ((_rgb(i),), ({"boxes": torch.ones(i + 1, 4)},)),
            lambda d: [t.shape for t in d[0]] == [(3, 6, 5)] * 2 and d[1][0]["boxes"].shape == (3, 4),
        ),
    ],
    ids=["names-list", "dict-field", "nested-fields", "names-tuple", "detection-rgb"],
)
def test_a_presample_of_three_from_batches_of_one_keeps_its_structure(make, check):
    # batch 1, presample 3: as many samples as fields (or as image channels), told apart by the incoming batch
    incoming, extras = (lp.PrioritizedBatch(make(i), torch.tensor([i]), torch.ones(1)) for i in (0, 1))
    extras = concat_batches(extras, lp.PrioritizedBatch(make(2), torch.tensor([2]), torch.ones(1)))
    presample = concat_batches(incoming, extras)
    picked = select(presample, torch.tensor([2, 2]), like=incoming)
    assert picked.index.tolist() == [2, 2] and check(picked.data)


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


def test_plan_follows_max_epochs_and_priorities_leave_their_input_alone():
    table = lp.score_table.ScoreTable(10)
    table.update(torch.arange(10), torch.rand(10, generator=torch.Generator().manual_seed(0)))
    strategy = lp.SamplingStrategy("proportional", final_uniform_epochs=1)
    sampler = lp.sampler.PrioritizedSampler(range(10), table, strategy, seed=0, max_epochs=None)
    sampler.set_epoch(1)
    assert sampler.plan().cdf is not None
    sampler.max_epochs = 2  # epoch 1 is now the final uniform epoch
    assert sampler.plan().cdf is None
    scores = torch.tensor(np.array([1.0, 2.0]))  # float64 input
    PF.proportional_priorities(scores, alpha=2.0, eps=1.0)
    assert scores.tolist() == [1.0, 2.0]


class _BatchFetching(torch.utils.data.Dataset):
    """A dataset that serves whole batches (`__getitems__`, as Hugging Face datasets do) and counts the calls."""

    def __init__(self, base):
        self.base, self.batch_calls, self.item_calls = base, 0, 0

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        self.item_calls += 1
        return self.base[i]

    def __getitems__(self, indices):
        self.batch_calls += 1
        return [self.base[i] for i in indices]


@pytest.mark.parametrize("strategy", ["proportional", "uniform"])
def test_a_dataset_with_getitems_gets_one_call_per_batch_and_the_right_samples(strategy):
    base = blobs(20)
    dataset = _BatchFetching(base)
    dm = lp.PrioritizedDataModule(dataset, batch_size=8, strategy=strategy, seed=0)
    dm.setup("fit")
    dm.scores.update(torch.arange(20), torch.arange(1.0, 21.0))
    dm.prepare_epoch(1)  # proportional: the sampler yields (index, weight) pairs; uniform: plain int indices
    batches = list(dm.train_dataloader())
    assert dataset.batch_calls == len(batches) == 3 and dataset.item_calls == 0
    for batch in batches:
        x, y = batch
        assert torch.equal(x, base.tensors[0][batch.index]) and torch.equal(y, base.tensors[1][batch.index])
        if strategy == "uniform":
            assert batch.weight.dtype == torch.float32 and torch.equal(batch.weight, torch.ones(len(batch.index)))
        else:
            assert len(set(batch.weight.tolist())) > 1
    if strategy == "uniform":
        assert sorted(i for b in batches for i in b.index.tolist()) == list(range(20))  # one shuffled pass


@pytest.mark.parametrize(
    "keys",
    [
        [3, 0, 7],  # a uniform pass
        [(3, 0.5), (0, 2.0), (7, 1.5)],  # a weighted strategy's pairs
        [3, (0, 2.0), 7],  # mixed (a user's own sampler), starting with an int
        [(3, 0.5), 0, (7, 1.5)],  # mixed, starting with a pair
        [np.int64(3), np.int64(0), np.int64(7)],
    ],
)
def test_indexed_dataset_batches_every_form_of_sampler_key(keys):
    base = blobs(10)
    items = lp.indexed.IndexedDataset(base).__getitems__(keys)
    expected = [(int(k[0]), float(k[1])) if isinstance(k, tuple) else (int(k), 1.0) for k in keys]
    assert [(i, w) for i, w, _ in items] == expected  # the items read as (index, weight, sample) triples
    assert all(torch.equal(sample[0], base[i][0]) for i, _, sample in items)
    assert [i for i, _, _ in items[1:]] == [i for i, _ in expected[1:]]
    batch = lp.indexed.IndexedCollate()(items)
    assert batch.index.dtype == torch.int64 and batch.weight.dtype == torch.float32
    assert batch.index.tolist() == [i for i, _ in expected] and batch.weight.tolist() == [w for _, w in expected]
    assert torch.equal(batch[0], base.tensors[0][batch.index])
    # a plain list of triples (a user's own fetching) collates the same
    same = lp.indexed.IndexedCollate()(list(items))
    assert torch.equal(same.index, batch.index) and torch.equal(same.weight, batch.weight)
    assert torch.equal(same[0], batch[0])


def test_a_getitems_that_loses_samples_is_refused():
    class Short(_BatchFetching):
        def __getitems__(self, indices):
            return [self.base[i] for i in indices[:-1]]

    with pytest.raises(ValueError, match=r"returned 2 samples for 3 indices"):
        lp.indexed.IndexedDataset(Short(blobs(10))).__getitems__([1, 2, 3])


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
