"""Tests of lightning_per.replay: ER, MER, Task-IL / Class-IL, resume, CLI and DDP (buffers: test_replay_buffers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_per.cli import main
from lightning_per.replay import (
    MER,
    ContinualDataModule,
    ContinualModule,
    ExperienceReplay,
    PrioritizedReplayBuffer,
    ReservoirBuffer,
    SplitDigits,
    TaskAccuracyMatrix,
    TaskStreamSampler,
    fit_tasks,
)
from lightning_per.replay.functional import average_accuracy, backward_transfer, task_class_mask
from tests.helpers import run_two_processes

REPO = Path(__file__).resolve().parents[1]


def _trainer(tmp_path: Path, **kwargs: object) -> Trainer:
    defaults: dict[str, object] = {
        "max_epochs": 1,
        "enable_progress_bar": False,
        "logger": False,
        "default_root_dir": tmp_path,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    defaults.update(kwargs)
    return Trainer(**defaults)  # type: ignore[arg-type]


def _toy_tasks(num_tasks: int = 3, per_task: int = 12, dim: int = 4, classes: int = 2) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(num_tasks):
        y = torch.arange(per_task) % classes + t * classes
        x = torch.randn(per_task, dim, generator=g) + y.unsqueeze(1).float()
        tasks.append(TensorDataset(x, y))
    return tasks


def _batch(n: int, task: int, dim: int = 4, label: int | None = None) -> tuple[torch.Tensor, ...]:
    y = torch.full((n,), task * 2 if label is None else label, dtype=torch.int64)
    return torch.randn(n, dim), y, torch.full((n,), task, dtype=torch.int64)


# ------------------------------------------------------------------------------------------ buffers in the modules
@pytest.mark.parametrize("capacity", [0, -3])
def test_capacity_must_be_positive(capacity: int) -> None:
    with pytest.raises(ValueError, match=rf"`capacity` must be a positive integer, got {capacity}"):
        ReservoirBuffer(capacity)
    with pytest.raises(ValueError, match=rf"`capacity` \(buffer capacity\) must be a positive integer, got {capacity}"):
        ExperienceReplay(capacity=capacity)
    with pytest.raises(ValueError, match=rf"`memories` \(buffer capacity\) must be a positive integer, got {capacity}"):
        MER(memories=capacity)


def test_replay_batch_larger_than_buffer_draws_what_there_is() -> None:
    buf = ReservoirBuffer(capacity=10, seed=0)
    empty = buf.sample(5)  # nothing stored yet: nothing, no error
    assert empty.batch is None and empty.slots.numel() == 0
    buf.add(_batch(3, 0))
    sample = buf.sample(8)
    assert sample.batch[0].shape == (3, 4) and sorted(sample.slots.tolist()) == [0, 1, 2]
    per = PrioritizedReplayBuffer(capacity=10)
    per.add(_batch(3, 0))
    assert per.sample(8).slots.shape == (8,)  # with replacement
    with pytest.warns(UserWarning, match=r"`replay_batch_size` = 10 replays per draw is more than `capacity=4`"):
        model = ExperienceReplay(capacity=4, replay_batch_size=10, input_dim=4, num_tasks=2)
    model.buffer.add(_batch(6, 0))
    assert model.buffer.sample(model.replay_batch_size).batch[0].shape == (4, 4)  # what there is
    with pytest.warns(UserWarning, match=r"`replay_batch_size - 1` = 9 replays per draw is more than `memories=3`"):
        MER(memories=3, replay_batch_size=10)


def test_shape_change_between_tasks_is_rejected() -> None:
    buf = ReservoirBuffer(capacity=5)
    buf.add(_batch(2, 0, dim=4))
    with pytest.raises(ValueError, match=r"samples \(Tensor\[float32, \(5,\)\].*samples \(Tensor\[float32, \(4,\)\]"):
        buf.add(_batch(2, 1, dim=5))
    tasks = [TensorDataset(torch.randn(4, 3), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
    tasks[1] = TensorDataset(torch.randn(4, 5), torch.full((4,), 2))
    dm = ContinualDataModule(tasks=tasks, classes_per_task=2)
    with pytest.raises(ValueError, match=r"task 1 have shape \(5,\), but task 0's have shape \(3,\)"):
        dm.setup("fit")


# ------------------------------------------------------------------------------------------ Task-IL / Class-IL
def test_task_il_masks_other_tasks_outputs() -> None:
    mask = task_class_mask(torch.tensor([0, 2]), 2, 6)
    assert mask.tolist() == [[True, True, False, False, False, False], [False, False, False, False, True, True]]
    model = ContinualModule(input_dim=4, num_tasks=3, classes_per_task=2, scenario="task")
    logits = model.masked_logits(torch.randn(2, 4), torch.tensor([1, 2]))
    assert torch.isinf(logits[0, [0, 1, 4, 5]]).all() and torch.isfinite(logits[0, 2:4]).all()
    assert torch.isfinite(logits[1, 4:]).all()
    assert model.predict_batch(torch.randn(5, 4), torch.full((5,), 2)).ge(4).all()


def test_task_il_offsets_for_shared_classes_and_class_il_head() -> None:
    task_il = ContinualModule(input_dim=4, num_tasks=3, classes_per_task=10, shared_classes=True, scenario="task")
    assert task_il.num_outputs == 30
    assert task_il.targets(torch.tensor([3, 3]), torch.tensor([0, 2])).tolist() == [3, 23]
    pred = task_il.predict_batch(torch.randn(4, 4), torch.full((4,), 2))
    assert pred.ge(0).all() and pred.lt(10).all()  # mapped back to the data's labels
    class_il = ContinualModule(input_dim=4, num_tasks=3, classes_per_task=10, shared_classes=True, scenario="class")
    assert class_il.num_outputs == 10
    split = ContinualModule(input_dim=4, num_tasks=3, classes_per_task=2, scenario="class")
    split.observe_tasks(torch.tensor([0, 1]))
    logits = split.masked_logits(torch.randn(1, 4), torch.tensor([0]))
    assert torch.isfinite(logits[0, :4]).all() and torch.isinf(logits[0, 4:]).all()  # classes seen so far


def test_task_id_outside_declared_tasks_is_rejected() -> None:
    model = ContinualModule(input_dim=4, num_tasks=2, classes_per_task=2)
    with pytest.raises(ValueError, match=r"`task` id 2 is outside the declared tasks \[0, 2\)"):
        model.check_batch(torch.tensor([4]), torch.tensor([2]))
    with pytest.raises(ValueError, match=r"label 3 of task 0 is outside that task's classes \[0, 2\)"):
        model.check_batch(torch.tensor([3]), torch.tensor([0]))
    data = TensorDataset(torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 5]))
    dm = ContinualDataModule(dataset=data, num_tasks=2, classes_per_task=2)
    with pytest.raises(ValueError, match=r"task id 2 for sample 4 of `dataset`, outside the declared tasks \[0, 2\)"):
        dm.setup("fit")


def test_inputs_of_another_size_than_input_dim_are_refused_naming_the_setting() -> None:
    model = ContinualModule(num_tasks=2, classes_per_task=2)  # input_dim 40 (MNIST-1D); SplitDigits has 64
    batch = (torch.randn(3, 64), torch.tensor([0, 1, 0]), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"64 features per sample .* `input_dim=40`: set `input_dim: 64`"):
        model.training_step(batch, 0)
    ContinualModule(input_dim=64, num_tasks=2, classes_per_task=2).check_batch(batch[1], batch[2], batch[0])


@pytest.mark.parametrize("name", ["beta", "gamma"])
@pytest.mark.parametrize("value", [0.0, -0.1, 1.5])
def test_reptile_rates_outside_unit_interval_are_rejected(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"`{name}` \(Reptile rate\) must be in \(0, 1\], got {value}"):
        MER(**{name: value})  # type: ignore[arg-type]


def test_prioritized_settings_out_of_range_are_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"`priority_beta` \(importance-weight exponent\) must be in \[0, 1\], got 1.5"
    ):
        ExperienceReplay(prioritized=True, priority_beta=1.5)
    with pytest.raises(ValueError, match=r"`alpha` \(priority exponent\) must be >= 0, got -1"):
        ExperienceReplay(prioritized=True, alpha=-1)


# ------------------------------------------------------------------------------------------ data
def test_one_dataset_plus_task_fn_describes_a_sequence() -> None:
    data = TensorDataset(torch.randn(12, 4), torch.arange(12) % 4)
    dm = ContinualDataModule(dataset=data, test_dataset=data, num_tasks=2, classes_per_task=2, batch_size=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    tasks = torch.cat([b[2] for b in batches])
    assert tasks.tolist() == [0] * 6 + [1] * 6  # task after task
    for _x, y, t in batches:
        assert (y // 2 == t).all()
    assert len(dm.val_dataloader()) == 2


def test_stream_sampler_shards_every_task_across_ranks_and_resumes() -> None:
    lengths = [5, 4, 2]  # 11 items: padded to 12 with the last item, which stays in the last task
    order = TaskStreamSampler(lengths, seed=1).stream_order().tolist()
    assert [i for i in order if i < 5] == order[:5] and sorted(order) == list(range(11))  # task after task
    shares = [list(TaskStreamSampler(lengths, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 6
    assert sorted(shares[0] + shares[1]) == sorted([*order, order[-1]])
    for share in shares:
        task_ids = [0 if i < 5 else 1 if i < 9 else 2 for i in share]
        assert task_ids == sorted(task_ids)  # each rank sees its share of every task, in task order
    resumed = TaskStreamSampler(lengths, seed=1, num_replicas=2, rank=0, start=2)
    assert len(resumed) == 6 and list(resumed) == shares[0][2:]  # skips what was trained, once
    assert list(resumed) == shares[0]
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, 2\), got 2"):
        TaskStreamSampler(lengths, num_replicas=2, rank=2)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_er_batches_contain_the_requested_mix() -> None:
    model = ExperienceReplay(capacity=50, replay_batch_size=3, input_dim=4, num_tasks=2, classes_per_task=2)
    model.buffer.add(_batch(20, 0))
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = model.per_sample_loss

    def spy(x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        seen.append((x.clone(), task.clone()))
        return original(x, y, task)

    model.per_sample_loss = spy  # type: ignore[method-assign]
    x, y, t = _batch(4, 1)
    model.training_step((x, y, t), 0)
    xs, ts = seen[0]
    assert xs.shape[0] == 7 and torch.equal(xs[:4], x)  # 4 incoming + 3 replayed
    assert ts.tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert model.buffer.seen == 24  # then the buffer is updated with the incoming batch


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
def test_prioritized_er_sets_replayed_priorities_to_their_losses() -> None:
    model = ExperienceReplay(
        capacity=20, replay_batch_size=6, prioritized=True, alpha=1.0, input_dim=4, num_tasks=2, classes_per_task=2
    )
    model.buffer.add(_batch(8, 0))  # not full: the incoming batch goes to new slots, not over replayed ones
    drawn: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    sample, loss_fn = model.buffer.sample, model.per_sample_loss

    def spy_sample(n: int):  # type: ignore[no-untyped-def]
        out = sample(n)
        drawn.append(out.slots.clone())
        return out

    def spy_loss(x: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        out = loss_fn(x, y, task)
        losses.append(out.detach().clone())
        return out

    model.buffer.sample = spy_sample  # type: ignore[method-assign]
    model.per_sample_loss = spy_loss  # type: ignore[method-assign]
    model.training_step(_batch(2, 1), 0)
    slots, replay_losses = drawn[0], losses[0][2:]
    tree = torch.from_numpy(model.buffer.sampler.tree.values()).float()
    for slot in slots.unique().tolist():
        last = int(torch.nonzero(slots == slot).max())  # a slot drawn twice keeps its last loss
        assert tree[slot] == pytest.approx(float(replay_losses[last]) + 1e-3, rel=1e-5)
    assert tree[8] == tree[9] == pytest.approx(model.buffer.max_priority)  # new items at the max priority


# ------------------------------------------------------------------------------------------ MER
def test_mer_reptile_interpolation_matches_hand_computation(tmp_path: Path) -> None:
    lr, beta, gamma, s = 0.5, 0.3, 0.6, 2
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.2, -0.1], [0.0, 0.3]]))
        net.bias.zero_()
    model = MER(
        memories=5, replay_batch_size=3, batches_per_example=s, beta=beta, gamma=gamma, lr=lr,
        backbone=net, num_tasks=1, classes_per_task=2,
    )  # fmt: skip
    memory_x = torch.tensor([[0.5, -1.0], [-2.0, 0.5], [1.5, 1.0]])
    memory_y = torch.tensor([0, 1, 0])
    model.buffer.add((memory_x, memory_y, torch.zeros(3, dtype=torch.long)))
    drawn: list[list[int]] = []
    sample = model.buffer.sample

    def spy(n: int):  # type: ignore[no-untyped-def]
        out = sample(n)
        drawn.append(out.slots.tolist())
        return out

    model.buffer.sample = spy  # type: ignore[method-assign]
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    loader = DataLoader(TensorDataset(x, y, torch.zeros(1, dtype=torch.long)), batch_size=1)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    _trainer(tmp_path, enable_checkpointing=False).fit(model, loader)

    def sgd(w: torch.Tensor, b: torch.Tensor, xi: torch.Tensor, yi: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = (w @ xi + b).softmax(0) - torch.eye(2)[yi]  # d CE / d logits = softmax - onehot
        return w - lr * torch.outer(d, xi), b - lr * d  # dW = outer(d, x), db = d

    assert [len(d) for d in drawn] == [2] * s  # k - 1 = 2 distinct replays in each of the s batches
    w, b = w0.clone(), b0.clone()
    for slots in drawn:
        wa, ba = w.clone(), b.clone()
        for i in slots:  # one SGD step per sample: the replays, then the new example
            w, b = sgd(w, b, memory_x[i], int(memory_y[i]))
        w, b = sgd(w, b, x[0], int(y[0]))
        w, b = wa + beta * (w - wa), ba + beta * (b - ba)  # within-batch Reptile
    w, b = w0 + gamma * (w - w0), b0 + gamma * (b - b0)  # across-batch Reptile
    assert torch.allclose(net.weight, w, atol=1e-6) and torch.allclose(net.bias, b, atol=1e-6)
    assert model.buffer.seen == 4  # reservoir update after the meta-update


def test_mer_inner_batch_has_k_minus_one_replays() -> None:
    model = MER(memories=20, replay_batch_size=4, batches_per_example=1, input_dim=4, num_tasks=2)
    model.buffer.add(_batch(10, 0))
    bx, _by, bt = model._inner_batch(*_batch(1, 1))
    assert bx.shape[0] == 4 and bt.tolist() == [0, 0, 0, 1]  # k - 1 replays, then the new example


@pytest.mark.parametrize("variant", ["example", "batch"])
def test_mer_trains_through_a_stream(tmp_path: Path, variant: str) -> None:
    seed_everything(0)
    dm = ContinualDataModule(tasks=_toy_tasks(), test_tasks=_toy_tasks(), classes_per_task=2, batch_size=4)
    model = MER(memories=8, replay_batch_size=3, batches_per_example=2, beta=0.5, lr=0.05, variant=variant,
                input_dim=4, num_tasks=3)  # fmt: skip
    matrix = TaskAccuracyMatrix()
    _trainer(tmp_path, callbacks=[matrix], enable_checkpointing=False).fit(model, datamodule=dm)
    assert model.buffer.seen == 36 and len(model.buffer) == 8
    assert matrix.completed == 3 and not torch.isnan(matrix.matrix).any()


# ------------------------------------------------------------------------------------------ metrics
def test_acc_and_bwt() -> None:
    r = torch.tensor([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]])
    assert average_accuracy(r) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    assert backward_transfer(r) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)


# ------------------------------------------------------------------------------------------ runs, resume, logging
def test_stream_run_logs_and_checkpoints(tmp_path: Path) -> None:
    dm = ContinualDataModule(tasks=_toy_tasks(), test_tasks=_toy_tasks(), classes_per_task=2, batch_size=4)
    model = ExperienceReplay(capacity=10, replay_batch_size=4, input_dim=4, num_tasks=3, scenario="task")
    logger = CSVLogger(tmp_path, name="cl")
    matrix = TaskAccuracyMatrix()
    trainer = _trainer(tmp_path, logger=logger, callbacks=[matrix], log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    text = Path(logger.log_dir, "metrics.csv").read_text()
    for key in ("cl/acc", "cl/bwt", "train/loss", "val/acc_task2"):
        assert key in text
    (ckpt,) = Path(tmp_path).rglob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["callbacks"][matrix.state_key]["next_task"] == 3  # every row, written before the checkpoint


def test_accuracy_matrix_without_evaluation_sets_stays_empty(tmp_path: Path) -> None:
    dm = ContinualDataModule(tasks=_toy_tasks(), classes_per_task=2, batch_size=4)  # no `test_tasks`
    model = ExperienceReplay(capacity=10, replay_batch_size=4, input_dim=4, num_tasks=3)
    matrix = TaskAccuracyMatrix()
    _trainer(tmp_path, callbacks=[matrix], enable_checkpointing=False).fit(model, datamodule=dm)
    assert matrix.completed == 0 and model.buffer.seen == 36


def test_resume_per_task_run_restores_buffer(tmp_path: Path) -> None:
    def sequence() -> ContinualDataModule:
        return ContinualDataModule(
            tasks=_toy_tasks(), test_tasks=_toy_tasks(), classes_per_task=2, batch_size=4, mode="task"
        )

    seed_everything(0)
    model = ExperienceReplay(capacity=6, replay_batch_size=2, prioritized=True, input_dim=4, num_tasks=3)
    matrix = TaskAccuracyMatrix()
    dm = sequence()
    trainer = _trainer(tmp_path / "t0", callbacks=[matrix])
    dm.setup("fit")
    dm.set_task(0)
    trainer.fit(model, datamodule=dm)
    ckpt = Path(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    saved = torch.load(ckpt, weights_only=True)  # tensors and plain values only
    assert saved["replay_buffers"][0]["seen"] == 12
    assert saved["callbacks"][matrix.state_key]["next_task"] == 1
    restored = ExperienceReplay.load_from_checkpoint(ckpt, weights_only=True)
    for a, b in zip(model.buffer.contents(), restored.buffer.contents(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(restored.buffer, PrioritizedReplayBuffer)
    assert torch.equal(restored.buffer.probabilities(), model.buffer.probabilities())
    assert int(restored.seen_tasks) == 1
    resumed_matrix = TaskAccuracyMatrix()
    resumed_matrix.load_state_dict(saved["callbacks"][matrix.state_key])
    trainers = fit_tasks(
        restored, sequence(), lambda t: _trainer(tmp_path / f"t{t}", callbacks=[resumed_matrix]), start_task=1
    )
    assert len(trainers) == 2 and restored.buffer.seen == 36
    assert resumed_matrix.completed == 3 and not torch.isnan(resumed_matrix.matrix).any()


def _stream_run(root: Path, **trainer_kwargs: object) -> tuple[ExperienceReplay, TaskAccuracyMatrix, Trainer]:
    seed_everything(0)
    dm = ContinualDataModule(tasks=_toy_tasks(), test_tasks=_toy_tasks(), classes_per_task=2, batch_size=4)
    model = ExperienceReplay(capacity=5, replay_batch_size=3, prioritized=True, input_dim=4, num_tasks=3)
    matrix = TaskAccuracyMatrix()
    checkpoint = ModelCheckpoint(dirpath=root, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    ckpt_path = trainer_kwargs.pop("ckpt_path", None)
    trainer = _trainer(root, callbacks=[matrix, checkpoint], num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)  # type: ignore[arg-type]
    return model, matrix, trainer


@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_resume_mid_stream_continues_where_it_stopped(tmp_path: Path) -> None:
    full, full_matrix, _ = _stream_run(tmp_path / "full")  # 3 tasks x 3 batches, one fit over the stream
    _stream_run(tmp_path / "cut", max_steps=4)  # stopped after task 0 and one batch of task 1
    ckpt = tmp_path / "cut" / "step=4.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["replay_buffers"][0]["seen"] == 16
    resumed, matrix, trainer = _stream_run(tmp_path / "resumed", ckpt_path=ckpt)
    assert trainer.global_step == 9
    assert resumed.buffer.seen == full.buffer.seen == 36  # the last 5 batches, not the stream again
    for a, b in zip(resumed.buffer.contents(), full.buffer.contents(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(resumed.buffer.probabilities(), full.buffer.probabilities())
    for p, q in zip(resumed.parameters(), full.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(matrix.matrix, full_matrix.matrix) and matrix.completed == 3


def test_cli_runs_continual_config(tmp_path: Path) -> None:
    config = REPO / "lightning_per" / "examples" / "configs" / "continual_er.yaml"
    args = [
        "fit", "--config", str(config), "--trainer.max_epochs=1", "--trainer.limit_train_batches=5",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    cli = main(args, run=True)
    assert isinstance(cli.model, ExperienceReplay) and isinstance(cli.datamodule, SplitDigits)
    assert cli.model.buffer.seen == 50
    for path in sorted((REPO / "lightning_per" / "examples" / "configs").glob("continual_*.yaml")):
        built = main(["--config", str(path)], run=False)
        assert isinstance(built.model, ContinualModule) and isinstance(built.datamodule, ContinualDataModule)


# ------------------------------------------------------------------------------------------ DDP
DDP_SCRIPT = Path(__file__).with_name("ddp_replay_script.py")


@pytest.mark.slow
def test_ddp_two_processes_share_the_memory_budget(tmp_path: Path) -> None:
    ranks = run_two_processes(DDP_SCRIPT, tmp_path)
    for name in ("er", "mer"):
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["world"] == r1["world"] == 2
        assert r0["capacity"] + r1["capacity"] == 30  # the single-process budget, split: 15 slots per rank
        assert r0["size"] == r1["size"] == 15 and r0["seen"] == r1["seen"] == 40  # each rank saw half the stream
        assert not set(r0["ids"]) & set(r1["ids"])  # disjoint shards
        assert r0["tasks"] == r1["tasks"] == [0, 1]
        assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-9)  # one model, kept in sync
        assert r0["rows"] == r1["rows"] == 2
    for name in ("er", "mer"):  # built on rank 0 alone before any synchronisation point: rank 0's buffer only
        alone = torch.load(tmp_path / name / "rank0_only.ckpt", weights_only=True)["replay_buffers"]
        assert alone[0]["size"] > 0 and alone[1] is None
    ckpt = tmp_path / "er" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert [s["size"] for s in saved["replay_buffers"]] == [15, 15]  # every rank's buffer, not only rank 0's
    with pytest.warns(UserWarning, match="pooled and re-sharded"):
        one = ExperienceReplay.load_from_checkpoint(ckpt, weights_only=True)
    assert one.buffer.capacity == 30 and one.buffer.seen == 80  # one process gets the whole budget back
    ids = sorted(int(i) for i in one.buffer.contents()[0][:, 0].tolist())
    assert ids == sorted(ranks[0]["er"]["ids"] + ranks[1]["er"]["ids"])


def test_acc_after_an_intermediate_task_counts_only_the_tasks_trained_so_far() -> None:
    matrix = TaskAccuracyMatrix()
    matrix.matrix = torch.tensor([[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.4, 0.6, 0.7]])
    matrix._next_task = 2  # after task 1 of 3 (e.g. a run stopped early): tasks 0 and 1 only, as bwt
    assert matrix.acc == pytest.approx((0.5 + 0.8) / 2) and matrix.bwt == pytest.approx(0.5 - 0.9)
    matrix._next_task = 3
    assert matrix.acc == pytest.approx((0.4 + 0.6 + 0.7) / 3)
