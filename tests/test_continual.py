"""lightning_per.continual: task sequences, the stream sampler, the accuracy matrix with any module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import Tensor
from torch.utils.data import TensorDataset

import lightning_per as lp
from lightning_per import PrioritizedBatch
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence, evaluate_tasks
from lightning_per.continual.stream import TaskStreamSampler
from lightning_per.examples import ContinualClassifier
from lightning_per.functional.continual import task_class_mask
from tests.helpers import DictDataset, TinyClassifier, blobs, small_trainer, toy_tasks


def test_batches_are_prioritized_batches_of_the_users_structure_with_task_ids() -> None:
    dm = TaskSequence(tasks=[DictDataset(t) for t in toy_tasks()], batch_size=5)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert all(isinstance(b, PrioritizedBatch) for b in batches)
    assert set(batches[0].keys()) == {"x", "y", "task"} and batches[0].weight.tolist() == [1.0] * 5
    tasks = torch.cat([b["task"] for b in batches])
    assert tasks.tolist() == [0] * 12 + [1] * 12 + [2] * 12  # task after task
    index = torch.cat([b.index for b in batches])
    assert sorted(index.tolist()) == list(range(36)) and ((index // 12) == tasks).all()  # indices of the stream
    plain = TaskSequence(tasks=toy_tasks(), batch_size=5, task_ids=False)
    plain.setup("fit")
    assert len(next(iter(plain.train_dataloader()))) == 2  # (x, y): no task id


def test_one_dataset_plus_task_fn_describes_a_sequence() -> None:
    data = TensorDataset(torch.randn(12, 4), torch.arange(12) % 4)
    dm = TaskSequence(dataset=data, test_dataset=data, num_tasks=2, classes_per_task=2, batch_size=3)
    dm.setup("fit")
    for batch in dm.train_dataloader():
        _x, y, t = batch
        assert (y // 2 == t).all()
    assert len(dm.eval_tasks) == 2 and len(dm.val_dataset) == 12  # type: ignore[arg-type]
    bad = TaskSequence(dataset=TensorDataset(torch.randn(6, 4), torch.arange(6)), num_tasks=2, classes_per_task=2)
    with pytest.raises(ValueError, match=r"task id 2 for sample 4 of `dataset`, outside the declared tasks \[0, 2\)"):
        bad.setup("fit")


def test_tasks_with_samples_of_another_shape_are_refused() -> None:
    tasks = [TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    tasks[1] = TensorDataset(torch.randn(4, 5), torch.full((4,), 2))
    with pytest.raises(ValueError, match=r"task 1 \(training set\) are \[Tensor\[float32, \(5,\)\]"):
        TaskSequence(tasks=tasks).setup("fit")


def test_task_mode_streams_the_current_task_and_repeats_batches() -> None:
    dm = TaskSequence(tasks=toy_tasks(), batch_size=5, mode="task", repeats=2)
    dm.setup("fit")
    dm.set_task(1)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(loader) == len(batches) == 6  # 3 batches of task 1, each twice
    assert all(b[2].eq(1).all() for b in batches) and torch.equal(batches[0].index, batches[1].index)
    assert [dm.task_of_batch(i) for i in range(6)] == [1] * 6
    with pytest.raises(ValueError, match=r"`task` must be in \[0, 3\), got 3"):
        dm.set_task(3)


def test_stream_sampler_shards_every_task_across_ranks_and_resumes() -> None:
    lengths = [5, 4, 2]  # 11 items: padded to 12 with the last item, which stays in the last task
    order = TaskStreamSampler(lengths, seed=1).stream_order().tolist()
    assert [i for i in order if i < 5] == order[:5] and sorted(order) == list(range(11))  # task after task
    shares = [list(TaskStreamSampler(lengths, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 6
    assert sorted(shares[0] + shares[1]) == sorted([*order, order[-1]])
    for r, share in enumerate(shares):
        task_ids = [0 if i < 5 else 1 if i < 9 else 2 for i in share]
        assert task_ids == sorted(task_ids)  # each rank sees its share of every task, in task order
        sampler = TaskStreamSampler(lengths, seed=1, num_replicas=2, rank=r)
        assert [sampler.task_at(k) for k in range(6)] == task_ids  # known without reading the batch
    resumed = TaskStreamSampler(lengths, seed=1, num_replicas=2, rank=0, start=2)
    assert len(resumed) == 6 and list(resumed) == shares[0][2:]  # skips what was trained, once
    assert list(resumed) == shares[0]
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, 2\), got 2"):
        TaskStreamSampler(lengths, num_replicas=2, rank=2)


def test_task_il_masks_other_tasks_outputs_and_class_il_the_classes_not_seen() -> None:
    assert task_class_mask(torch.tensor([0, 2]), 2, 6).tolist() == [
        [True, True, False, False, False, False],
        [False, False, False, False, True, True],
    ]
    split = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="task")
    logits = split(torch.randn(2, 4), torch.tensor([1, 2]))
    assert torch.isinf(logits[0, [0, 1, 4, 5]]).all() and torch.isfinite(logits[0, 2:4]).all()
    with pytest.raises(ValueError, match=r"Task-IL \(`scenario='task'`\) needs the task id"):
        split(torch.randn(2, 4))
    heads = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=10, shared_classes=True, scenario="task")
    assert heads(torch.randn(5, 4), torch.full((5,), 2)).shape == (5, 10)  # the task's own head: labels 0..9
    class_il = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="class")
    assert torch.isfinite(class_il(torch.randn(1, 4))).all()  # before training: every class
    batch = PrioritizedBatch(
        (torch.randn(2, 4), torch.tensor([2, 3]), torch.ones(2, dtype=torch.long)), torch.arange(2), torch.ones(2)
    )
    class_il.training_step(batch, 0)
    out = class_il(torch.randn(1, 4))
    assert torch.isfinite(out[0, :4]).all() and torch.isinf(out[0, 4:]).all()  # classes seen so far


class _Threshold(LightningModule):
    """Not a classifier the matrix knows: predicts label ``2 t + (x_0 > 2 t + 0.5)`` from ``(x, task)``."""

    def forward(self, x: Tensor, task: Tensor) -> Tensor:
        return (2 * task + (x[:, 0] > 2 * task + 0.5).long()).float()


def _predict(module: LightningModule, batch: Any) -> Tensor:
    return module(batch[0], batch[2]).topk(1).indices  # labels as a column: compared with the labels' shape


def test_the_matrix_evaluates_any_module_by_argmax_or_a_user_function(tmp_path: Path) -> None:
    tasks = toy_tasks()
    by_function = evaluate_tasks(_Threshold(), [tasks[0]], predict=lambda m, b: m(b[0], torch.zeros_like(b[1])).long())
    assert 0.5 < float(by_function[0]) <= 1.0
    dm = TaskSequence(tasks=tasks, test_tasks=tasks, batch_size=4)
    dm.setup("fit")
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="task")
    by_argmax = evaluate_tasks(model, dm.eval_tasks, inputs=[0, 2])
    expected = [
        float((model(x, t).argmax(-1) == y).float().mean()) for x, y, t in (dm.eval_tasks[i][:] for i in range(3))
    ]
    assert by_argmax.tolist() == pytest.approx(expected)
    matrix = TaskAccuracyMatrix(predict=_predict)
    trainer = small_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[matrix])
    trainer.fit(model, datamodule=dm)
    assert matrix.completed == 3 and not torch.isnan(matrix.matrix).any()  # rows from the user function


def test_a_submodule_frozen_in_eval_mode_stays_in_eval_mode_after_the_matrix_evaluates(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=toy_tasks(), test_tasks=toy_tasks(), batch_size=4)
    dm.setup("fit")
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="task")
    frozen = model.net.net[1]  # e.g. a frozen backbone layer, kept in eval mode by the user
    frozen.eval()
    evaluate_tasks(model, dm.eval_tasks, inputs=[0, 2])
    assert model.training and model.net.training and not frozen.training
    matrix = TaskAccuracyMatrix(inputs=[0, 2])  # evaluates inside the training loop, when each task ends
    trainer = small_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[matrix])
    trainer.fit(model, datamodule=dm)
    assert matrix.completed == 3 and not frozen.training


def test_the_matrix_without_evaluation_sets_is_refused_at_setup(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=toy_tasks(), batch_size=4)  # no `test_tasks`
    matrix = TaskAccuracyMatrix()
    trainer = small_trainer(tmp_path, max_epochs=1, callbacks=[matrix])
    with pytest.raises(ValueError, match="got TaskSequence without evaluation sets"):
        trainer.fit(ContinualClassifier(in_features=4, num_tasks=3), datamodule=dm)
    assert matrix.completed == 0 and trainer.global_step == 0


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


def test_a_task_accuracy_matrix_key_dict_samples_lack_is_refused_naming_their_keys(tmp_path):
    class Dicts(torch.utils.data.Dataset):
        def __init__(self, data):
            self.data = data

        def __len__(self):
            return len(self.data)

        def __getitem__(self, i):
            x, y = self.data[i]
            return {"x": x, "y": y}

    dm = TaskSequence(tasks=[Dicts(blobs(8))], test_tasks=[Dicts(blobs(8))], batch_size=4)
    trainer = small_trainer(tmp_path, callbacks=[TaskAccuracyMatrix(inputs="image")], max_epochs=1)
    with pytest.raises(ValueError, match=r"`inputs`='image'\): the evaluation samples are dicts with the keys \[.*'x'"):
        trainer.fit(TinyClassifier(), datamodule=dm)
    assert trainer.global_step == 0
