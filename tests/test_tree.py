"""lightning_per.tree: batch trees indexed, joined and described, whatever the user's structure."""

from collections import namedtuple

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import default_collate

import lightning_per as lp
from lightning_per.tree import SampleSpec, concat_batches, select
from tests.helpers import ALWAYS, CheckedClassifier, DictDataset, ListDataset, Steps, blobs, fit


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


def test_a_sample_spec_describes_nested_structures() -> None:
    spec = SampleSpec.of({"a": (torch.zeros(2, 5), [torch.zeros(2, dtype=torch.bool)]), "b": torch.zeros(2)})
    assert repr(spec) == "{'a': (Tensor[float32, (5,)], [Tensor[bool, ()]]), 'b': Tensor[float32, ()]}"


def _tuple_collate(samples):
    x, y = default_collate(samples)
    return (x, y)


Pair = namedtuple("Pair", ["x", "y"])


def _namedtuple_collate(samples):
    x, y = default_collate(samples)
    return Pair(x, y)


@pytest.mark.parametrize("structure", ["tuple", "namedtuple", "list", "dict"])
def test_tuple_list_and_dict_batches_keep_samples_and_indices_together(tmp_path, structure):
    base = blobs(40)
    data, collate = {
        "tuple": (base, _tuple_collate),
        "namedtuple": (base, _namedtuple_collate),
        "list": (ListDataset(base), None),
        "dict": (DictDataset(base), None),
    }[structure]
    dm = lp.PrioritizedDataModule(data, batch_size=8, strategy="uniform", seed=0, collate_fn=collate)
    seen_types = []

    class Types(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen_types.append(type(batch.data))

    model = CheckedClassifier(base.tensors)
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    fit(tmp_path, [cb, steps, Types()], datamodule=dm, model=model)
    rows = steps.rows
    assert sum(r["importance"] for r in rows) == len(rows) - 1
    expected = {"tuple": tuple, "namedtuple": Pair, "list": list, "dict": dict}[structure]
    assert set(seen_types) == {expected}
    assert model.checked == 2 * len(rows) - 1  # every training call and every scoring pass was checked
