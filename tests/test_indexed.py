"""lightning_per.indexed: indexed datasets fetch by batch and collate every form of sampler key."""

import numpy as np
import pytest
import torch

import lightning_per as lp
from tests.helpers import blobs


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
