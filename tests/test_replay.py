"""Tests of replay with the user's own module: the ER callback, the MER wrapper, resume, CLI and DDP.

Buffers: test_replay_buffers.py; task sequences and the accuracy matrix: test_replay_tasks.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import TensorDataset

import lightning_per as lp
from lightning_per.cli import main
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence, fit_tasks
from lightning_per.examples import ContinualClassifier, SplitDigits
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReservoirBuffer
from tests.helpers import DictDataset, run_two_processes

REPO = Path(__file__).resolve().parents[1]


def _trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    defaults: dict[str, Any] = {
        "max_epochs": 1,
        "enable_progress_bar": False,
        "logger": False,
        "default_root_dir": tmp_path,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "devices": 1,
        "num_sanity_val_steps": 0,
    }
    defaults.update(kwargs)
    return Trainer(**defaults)


def _toy_tasks(num_tasks: int = 3, per_task: int = 12, dim: int = 4, classes: int = 2) -> list[TensorDataset]:
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(num_tasks):
        y = torch.arange(per_task) % classes + t * classes
        x = torch.randn(per_task, dim, generator=g) + y.unsqueeze(1).float()
        tasks.append(TensorDataset(x, y))
    return tasks


class DictModule(LightningModule):
    """A user's module: dict samples, Adam, the two-line contract; records every batch it trains on."""

    def __init__(self, features: int = 4, classes: int = 6, lr: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Linear(features, classes)
        self.lr = lr
        self.batches: list[dict[str, Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        losses = F.cross_entropy(self.net(batch["x"]), batch["y"], reduction="none")
        record = {k: v.detach().clone() for k, v in batch.items()}
        record.update(index=batch.index.clone(), weight=batch.weight.clone(), losses=losses.detach().clone())
        self.batches.append(record)
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class _Slots(Callback):
    """Records, after ExperienceReplay's hooks, the buffer slots each batch replayed."""

    def __init__(self, replay: ExperienceReplay) -> None:
        self.replay = replay
        self.slots: list[Tensor | None] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        slots = self.replay.replayed_slots
        self.slots.append(None if slots is None else slots.clone())


def _dict_sequence(batch_size: int = 4) -> TaskSequence:
    return TaskSequence(tasks=[DictDataset(t) for t in _toy_tasks()], batch_size=batch_size)


# ------------------------------------------------------------------------------------------ ER with your module
@pytest.mark.parametrize("prioritized", [False, True])
def test_er_mixes_replayed_dict_samples_into_a_user_module_trained_with_adam(tmp_path: Path, prioritized: bool) -> None:
    seed_everything(0)
    module = DictModule()
    buffer = PrioritizedReplayBuffer(50, alpha=1.0) if prioritized else ReservoirBuffer(50)
    replay = ExperienceReplay(buffer, replay_batch_size=3)
    slots = _Slots(replay)
    _trainer(tmp_path, callbacks=[replay, slots], enable_checkpointing=False).fit(module, datamodule=_dict_sequence())
    assert replay.buffer.seen == 36 and len(replay.buffer) == 36  # every incoming sample offered once, copied
    assert set(replay.buffer.contents()) == {"x", "y", "task"}
    first, second = module.batches[0], module.batches[1]
    assert first["x"].shape[0] == 4 and (first["index"] >= 0).all()  # an empty buffer replays nothing
    assert second["x"].shape[0] == 7 and second["index"][4:].tolist() == [-1] * 3  # 4 incoming, then 3 replayed
    assert second["weight"][:4].tolist() == [1.0] * 4
    stored = replay.buffer.contents()
    for i, slot in enumerate(slots.slots[1].tolist()):  # the replayed samples are the buffer's, all fields alike
        assert torch.equal(second["x"][4 + i], stored["x"][slot]) and second["y"][4 + i] == stored["y"][slot]
        assert second["task"][4 + i] == stored["task"][slot]
    if not prioritized:
        assert second["weight"][4:].tolist() == [1.0] * 3 and len(set(slots.slots[1].tolist())) == 3
        return
    buffer = replay.buffer
    assert isinstance(buffer, PrioritizedReplayBuffer)
    weights = torch.cat([b["weight"][4:] for b in module.batches[1:]])
    assert (weights > 0).all() and (weights <= 1).all() and (weights < 1).any()  # importance weights
    tree = torch.from_numpy(buffer.sampler.tree.values())
    last, drawn = module.batches[-1], slots.slots[-1]
    n = int((last["index"] >= 0).sum())
    for slot in drawn.unique().tolist():  # priorities = this step's losses (+ eps, alpha = 1): last draw of a slot
        row = int(torch.nonzero(drawn == slot).max())
        assert float(tree[slot]) == pytest.approx(float(last["losses"][n + row]) + 1e-3, rel=1e-5)


def test_prioritized_er_needs_per_sample_losses(tmp_path: Path) -> None:
    class MeanOnly(DictModule):
        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return F.cross_entropy(self.net(batch["x"]), batch["y"])

    replay = ExperienceReplay(PrioritizedReplayBuffer(20), replay_batch_size=2)
    with pytest.raises(ValueError, match=r"returned no per-sample losses under 'per_sample_loss'"):
        _trainer(tmp_path, callbacks=[replay], enable_checkpointing=False).fit(MeanOnly(), datamodule=_dict_sequence())


def test_er_refuses_other_data_and_callbacks_that_read_dataset_indices(tmp_path: Path) -> None:
    replay = ExperienceReplay(ReservoirBuffer(20))
    loader = torch.utils.data.DataLoader(_toy_tasks()[0], batch_size=4)
    with pytest.raises(
        TypeError, match=r"needs the training data to come from a `lightning_per.PrioritizedDataModule`"
    ):
        _trainer(tmp_path, callbacks=[replay]).fit(ContinualClassifier(in_features=4, num_tasks=3), loader)
    for other in (lp.LossTracker(), lp.TopKSelection(presample=2)):
        with pytest.raises(ValueError, match=rf"ExperienceReplay cannot run with {type(other).__name__}"):
            _trainer(tmp_path, callbacks=[replay, other]).fit(DictModule(), datamodule=_dict_sequence())


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match=r"`capacity` must be an integer >= 1, got 0"):
        ExperienceReplay(ReservoirBuffer(capacity=0))
    with pytest.raises(ValueError, match=r"`beta` must be a finite number in \[0, 1\], got 1.5"):
        ExperienceReplay(PrioritizedReplayBuffer(beta=1.5))
    with pytest.raises(TypeError, match=r"`buffer` must be a replay buffer .*got int"):
        ExperienceReplay(500)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match=r"`replay_batch_size` = 10 replays per draw is more than the buffer's"):
        ExperienceReplay(ReservoirBuffer(capacity=4), replay_batch_size=10)
    module = ContinualClassifier(in_features=4)
    with pytest.raises(ValueError, match=r"`capacity` must be an integer >= 1, got -3"):
        MER(module, capacity=-3)
    for bad, error in ((-1, ValueError), (2.5, TypeError)):
        with pytest.raises(error, match=rf"`replay_batch_size` must be an integer >= 0, got {bad}"):
            MER(module, replay_batch_size=bad)  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match=r"`replay_batch_size` = 10 replays per draw is more than `capacity=4`"):
        MER(module, capacity=4, replay_batch_size=10)
    for name in ("reptile_beta", "reptile_gamma"):
        for value in (0.0, 1.5):
            with pytest.raises(ValueError, match=rf"`{name}` must be a finite number in \(0, 1\], got {float(value)}"):
                MER(module, **{name: value})  # type: ignore[arg-type]
    manual = ContinualClassifier(in_features=4)
    manual.automatic_optimization = False
    with pytest.raises(ValueError, match=r"must use automatic optimization"):
        MER(manual)


def test_a_repeated_batch_trains_several_times_and_is_offered_once(tmp_path: Path) -> None:
    module = DictModule()
    replay = ExperienceReplay(ReservoirBuffer(50), replay_batch_size=2)
    dm = TaskSequence(tasks=[DictDataset(t) for t in _toy_tasks()], batch_size=4, repeats=3)
    trainer = _trainer(tmp_path, callbacks=[replay], enable_checkpointing=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 27 and replay.buffer.seen == 36  # 9 incoming batches, 3 steps each
    incoming = [b["index"][b["index"] >= 0].tolist() for b in module.batches]
    assert incoming[0] == incoming[1] == incoming[2] != incoming[3]


# ------------------------------------------------------------------------------------------ MER around your module
class LinearModule(LightningModule):
    """A user's module around one linear layer (tuple samples), SGD at lr 0.5 from its own optimizer."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        losses = F.cross_entropy(self(x), y, reduction="none")
        self.log("train/inner", losses.mean())  # silenced within MER's inner steps
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)  # MER takes its learning rate only


def test_mer_around_a_user_module_matches_a_hand_computation(tmp_path: Path) -> None:
    lr, beta, gamma, s = 0.5, 0.3, 0.6, 2
    net = nn.Linear(2, 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.2, -0.1], [0.0, 0.3]]))
        net.bias.zero_()
    model = MER(
        LinearModule(net),
        capacity=5,
        replay_batch_size=2,
        batches_per_example=s,
        reptile_beta=beta,
        reptile_gamma=gamma,
    )
    memory_x = torch.tensor([[0.5, -1.0], [-2.0, 0.5], [1.5, 1.0]])
    memory_y = torch.tensor([0, 1, 0])
    model.buffer.add((memory_x, memory_y, torch.zeros(3, dtype=torch.long)))
    drawn: list[list[int]] = []
    sample = model.buffer.sample

    def spy(n: int) -> Any:
        out = sample(n)
        drawn.append(out.slots.tolist())
        return out

    model.buffer.sample = spy  # type: ignore[method-assign]
    x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    dm = TaskSequence(tasks=[TensorDataset(x, y)], batch_size=1)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    trainer = _trainer(tmp_path, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert model.inner_lr == lr  # the user optimizer's learning rate, plain SGD steps

    def sgd(w: Tensor, b: Tensor, xi: Tensor, yi: int) -> tuple[Tensor, Tensor]:
        d = (w @ xi + b).softmax(0) - torch.eye(2)[yi]  # d CE / d logits = softmax - onehot
        return w - lr * torch.outer(d, xi), b - lr * d

    assert [len(d) for d in drawn] == [2] * s  # replay_batch_size = 2 distinct replays in each of the s batches
    w, b = w0.clone(), b0.clone()
    for slots in drawn:
        wa, ba = w.clone(), b.clone()
        for i in slots:  # one SGD step per sample: the replays, then the new example
            w, b = sgd(w, b, memory_x[i], int(memory_y[i]))
        w, b = sgd(w, b, x[0], int(y[0]))
        w, b = wa + beta * (w - wa), ba + beta * (b - ba)  # within-batch Reptile
    w, b = w0 + gamma * (w - w0), b0 + gamma * (b - b0)  # across-batch Reptile
    assert torch.allclose(net.weight, w, atol=1e-6) and torch.allclose(net.bias, b, atol=1e-6)
    assert model.buffer.seen == 4 and trainer.global_step == 3 * s  # reservoir update after; every inner step counts
    assert "train/inner" not in trainer.callback_metrics and "train/loss" in trainer.callback_metrics


@pytest.mark.parametrize("variant", ["example", "batch"])
def test_mer_wraps_a_user_module_through_a_stream_of_dict_samples(tmp_path: Path, variant: str) -> None:
    seed_everything(0)
    dm = TaskSequence(
        tasks=[DictDataset(t) for t in _toy_tasks()], test_tasks=[DictDataset(t) for t in _toy_tasks()], batch_size=4
    )
    model = MER(
        DictModule(), capacity=8, replay_batch_size=2, batches_per_example=2, reptile_beta=0.5, variant=variant, lr=0.01
    )
    matrix = TaskAccuracyMatrix(inputs="x", target="y")
    _trainer(tmp_path, callbacks=[matrix], enable_checkpointing=False).fit(model, datamodule=dm)
    assert model.buffer.seen == 36 and len(model.buffer) == 8
    assert model.inner_lr == 0.01
    assert matrix.completed == 3 and not torch.isnan(matrix.matrix).any()
    sizes = {b["x"].shape[0] for b in model.module.batches}  # type: ignore[union-attr]
    assert sizes == {1} if variant == "example" else max(sizes) == 1  # per-sample inner steps
    replayed = [b for b in model.module.batches if (b["index"] == -1).any()]  # type: ignore[union-attr]
    assert replayed and all(b["weight"].eq(1).all() for b in replayed)


# ------------------------------------------------------------------------------------------ runs, resume, logging
def test_stream_run_logs_and_checkpoints(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=_toy_tasks(), test_tasks=_toy_tasks(), batch_size=4)
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="task")
    logger = CSVLogger(tmp_path, name="cl")
    replay, matrix = ExperienceReplay(ReservoirBuffer(10), replay_batch_size=4), TaskAccuracyMatrix(inputs=[0, 2])
    trainer = _trainer(tmp_path, logger=logger, callbacks=[replay, matrix], log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    text = Path(logger.log_dir, "metrics.csv").read_text()
    for key in ("cl/acc", "cl/bwt", "val/acc"):
        assert key in text
    (ckpt,) = Path(tmp_path).rglob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)  # tensors and plain values only
    assert saved["callbacks"][matrix.state_key]["next_task"] == 3  # every row, written before the checkpoint
    assert saved["callbacks"][replay.state_key]["buffers"][0]["writer"]["seen"] == 36


def test_resume_per_task_run_restores_buffer(tmp_path: Path) -> None:
    def sequence() -> TaskSequence:
        return TaskSequence(tasks=_toy_tasks(), test_tasks=_toy_tasks(), batch_size=4, mode="task")

    seed_everything(0)
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, optimizer="adam", lr=0.01)
    replay, matrix = ExperienceReplay(PrioritizedReplayBuffer(6), replay_batch_size=2), TaskAccuracyMatrix()
    dm = sequence()
    dm.setup("fit")
    dm.set_task(0)
    trainer = _trainer(tmp_path / "t0", callbacks=[replay, matrix])
    trainer.fit(model, datamodule=dm)
    ckpt = Path(trainer.checkpoint_callback.best_model_path)  # type: ignore[union-attr]
    saved = torch.load(ckpt, weights_only=True)
    assert saved["callbacks"][replay.state_key]["buffers"][0]["writer"]["seen"] == 12
    restored = ContinualClassifier.load_from_checkpoint(ckpt, weights_only=True)
    resumed_replay, resumed_matrix = (
        ExperienceReplay(PrioritizedReplayBuffer(6), replay_batch_size=2),
        TaskAccuracyMatrix(),
    )
    resumed_replay.load_state_dict(saved["callbacks"][replay.state_key])
    resumed_matrix.load_state_dict(saved["callbacks"][matrix.state_key])
    assert isinstance(resumed_replay.buffer, PrioritizedReplayBuffer)
    assert torch.equal(resumed_replay.buffer.probabilities(), replay.buffer.probabilities())  # type: ignore[attr-defined]
    for a, b in zip(replay.buffer.contents(), resumed_replay.buffer.contents(), strict=True):
        assert torch.equal(a, b)
    callbacks = [resumed_replay, resumed_matrix]
    trainers = fit_tasks(
        restored, sequence(), lambda t: _trainer(tmp_path / f"t{t}", callbacks=callbacks), start_task=1
    )
    assert len(trainers) == 2 and resumed_replay.buffer.seen == 36
    assert resumed_matrix.completed == 3 and not torch.isnan(resumed_matrix.matrix).any()


class _StopAt(Callback):
    """Saves a checkpoint after training batch ``batch`` (as a ModelCheckpoint would) and stops the fit."""

    def __init__(self, path: Path, batch: int) -> None:
        self.path, self.batch = path, batch

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        if i == self.batch:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _stream_run(root: Path, method: str, stop: int | None = None, ckpt_path: Path | None = None) -> dict[str, Any]:
    seed_everything(0)
    dm = TaskSequence(tasks=_toy_tasks(), test_tasks=_toy_tasks(), batch_size=4)
    module = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, optimizer="adam", lr=0.01)
    callbacks: list[Callback] = [TaskAccuracyMatrix(inputs=[0, 2])]
    model: LightningModule = module
    if method == "er":
        callbacks.append(ExperienceReplay(PrioritizedReplayBuffer(5), replay_batch_size=3))
    else:
        model = MER(
            module, capacity=5, replay_batch_size=2, batches_per_example=2, variant="batch", step_batch_size=2, lr=0.01
        )
    if stop is not None:
        callbacks.append(_StopAt(root / "cut.ckpt", stop))
    trainer = _trainer(root, callbacks=callbacks, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    buffer = callbacks[1].buffer if method == "er" else model.buffer  # type: ignore[attr-defined]
    return {"buffer": buffer, "matrix": callbacks[0], "model": model, "trainer": trainer}


@pytest.mark.parametrize("method", ["er", "mer"])
def test_resume_mid_stream_continues_exactly_where_it_stopped(tmp_path: Path, method: str) -> None:
    full = _stream_run(tmp_path / "full", method)  # 3 tasks x 3 batches, one fit over the stream
    _stream_run(tmp_path / "cut", method, stop=3)  # after task 0 and one batch of task 1
    resumed = _stream_run(tmp_path / "resumed", method, ckpt_path=tmp_path / "cut" / "cut.ckpt")
    assert resumed["trainer"].global_step == full["trainer"].global_step
    assert resumed["buffer"].seen == full["buffer"].seen == 36  # the last 5 batches, not the stream again
    for a, b in zip(resumed["buffer"].contents(), full["buffer"].contents(), strict=True):
        assert torch.equal(a, b)
    if method == "er":
        assert torch.equal(resumed["buffer"].probabilities(), full["buffer"].probabilities())
    for p, q in zip(resumed["model"].parameters(), full["model"].parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(resumed["matrix"].matrix, full["matrix"].matrix) and resumed["matrix"].completed == 3


def test_mer_with_another_optimizer_and_no_lr_is_refused_with_the_fix(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=[DictDataset(t) for t in _toy_tasks()], batch_size=4)
    model = MER(DictModule(), capacity=8, replay_batch_size=2, batches_per_example=1)  # DictModule trains with Adam
    with pytest.raises(ValueError, match=r"plain SGD.*Adam\(lr=0\.01\).*Pass `MER\(\.\.\., lr=\.\.\.\)`"):
        _trainer(tmp_path, enable_checkpointing=False).fit(model, datamodule=dm)


def test_mer_stops_its_inner_steps_at_max_steps(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=[DictDataset(t) for t in _toy_tasks()], batch_size=4)
    model = MER(DictModule(), capacity=8, replay_batch_size=2, batches_per_example=3, lr=0.01)
    trainer = _trainer(tmp_path, enable_checkpointing=False, max_steps=7)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 7  # each incoming example alone would take 3 batches of up to 3 inner steps


def test_cli_runs_the_continual_configs(tmp_path: Path) -> None:
    common = [
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    configs = sorted((REPO / "lightning_per" / "examples" / "configs").glob("continual_*.yaml"))
    assert [p.stem for p in configs] == ["continual_er", "continual_mer", "continual_per"]
    er = main(["fit", "--config", str(configs[0]), *common, f"--trainer.default_root_dir={tmp_path / 'er'}"], run=True)
    assert isinstance(er.model, ContinualClassifier) and isinstance(er.datamodule, SplitDigits)
    (replay,) = [c for c in er.trainer.callbacks if isinstance(c, ExperienceReplay)]  # type: ignore[attr-defined]
    assert replay.buffer.seen == 50
    mer = main(
        ["fit", "--config", str(configs[1]), *common, f"--trainer.default_root_dir={tmp_path / 'mer'}"], run=True
    )
    assert isinstance(mer.model, MER) and isinstance(mer.model.module, ContinualClassifier)
    assert mer.model.buffer.seen == 50
    per = main(["--config", str(configs[2])], run=False)
    replays = [c for c in per.trainer.callbacks if isinstance(c, ExperienceReplay)]  # type: ignore[attr-defined]
    assert len(replays) == 1 and isinstance(replays[0].buffer, PrioritizedReplayBuffer)


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
        alone = torch.load(tmp_path / name / "rank0_only.ckpt", weights_only=True)
        states = alone["callbacks"][ranks[0]["er"]["state_key"]]["buffers"] if name == "er" else alone["replay_buffers"]
        assert states[0]["size"] > 0 and states[1] is None
    saved = torch.load(tmp_path / "er" / "last.ckpt", weights_only=True)
    states = saved["callbacks"][ranks[0]["er"]["state_key"]]["buffers"]
    assert [s["size"] for s in states] == [15, 15]  # every rank's buffer, not only rank 0's
    one = ExperienceReplay(PrioritizedReplayBuffer(30), replay_batch_size=4)
    one.load_state_dict(saved["callbacks"][ranks[0]["er"]["state_key"]])
    with pytest.warns(UserWarning, match="pooled and re-sharded"):
        one._shards.setup(rank=0, world=1)  # one process gets the whole budget back
    assert one.buffer.capacity == 30 and one.buffer.seen == 80
    ids = sorted(int(i) for i in one.buffer.contents()[0][:, 0].tolist())
    assert ids == sorted(ranks[0]["er"]["ids"] + ranks[1]["er"]["ids"])
    mer_ckpt = torch.load(tmp_path / "mer" / "last.ckpt", weights_only=True)
    assert [s["size"] for s in mer_ckpt["replay_buffers"]] == [15, 15]


def test_buffer_shards_reshard_on_another_world_size() -> None:
    first = ReservoirBuffer(5, seed=0)
    first.add((torch.arange(8).float().unsqueeze(1), torch.zeros(8, dtype=torch.long)))
    replay = ExperienceReplay(ReservoirBuffer(10))
    replay.load_state_dict({"buffers": [first.state_dict(), None]})  # saved by 2 processes, rank 1 unsynchronised
    assert len(replay.buffer) == 5  # before the setup: loaded as for one process, to inspect
    with pytest.warns(UserWarning, match="holds 1 of 2 processes' replay buffers"):
        replay._shards.setup(rank=0, world=2)
    assert replay.buffer.capacity == 5 and len(replay.buffer) == 5


def test_the_progress_bar_shows_how_full_the_buffer_is(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=_toy_tasks(), batch_size=4)
    trainer = _trainer(tmp_path, callbacks=[ExperienceReplay(ReservoirBuffer(10), replay_batch_size=2)])
    trainer.fit(ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2), datamodule=dm)
    assert trainer.progress_bar_metrics["per/buffer_fill"] == 1.0  # 36 samples seen, 10 kept
