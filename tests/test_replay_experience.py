"""lightning_per.replay.ExperienceReplay with the user's own module: mixing, refusals, stream runs and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

import lightning_per as lp
from lightning_per.continual import TaskAccuracyMatrix, TaskSequence, fit_tasks
from lightning_per.examples import ContinualClassifier
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReservoirBuffer
from tests.helpers import DictDataset, DictModule, small_trainer, toy_tasks


class _Slots(Callback):
    """Records, after ExperienceReplay's hooks, the buffer slots each batch replayed."""

    def __init__(self, replay: ExperienceReplay) -> None:
        self.replay = replay
        self.slots: list[Tensor | None] = []

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        slots = self.replay.replayed_slots
        self.slots.append(None if slots is None else slots.clone())


def _dict_sequence(batch_size: int = 4) -> TaskSequence:
    return TaskSequence(tasks=[DictDataset(t) for t in toy_tasks()], batch_size=batch_size)


@pytest.mark.parametrize("prioritized", [False, True])
def test_er_mixes_replayed_dict_samples_into_a_user_module_trained_with_adam(tmp_path: Path, prioritized: bool) -> None:
    seed_everything(0)
    module = DictModule()
    buffer = PrioritizedReplayBuffer(50, alpha=1.0) if prioritized else ReservoirBuffer(50)
    replay = ExperienceReplay(buffer, replay_batch_size=3)
    slots = _Slots(replay)
    small_trainer(tmp_path, max_epochs=1, callbacks=[replay, slots]).fit(module, datamodule=_dict_sequence())
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
        small_trainer(tmp_path, max_epochs=1, callbacks=[replay]).fit(MeanOnly(), datamodule=_dict_sequence())


def test_er_refuses_other_data_and_callbacks_that_read_dataset_indices(tmp_path: Path) -> None:
    replay = ExperienceReplay(ReservoirBuffer(20))
    loader = torch.utils.data.DataLoader(toy_tasks()[0], batch_size=4)
    with pytest.raises(
        TypeError, match=r"needs the training data to come from a `lightning_per.PrioritizedDataModule`"
    ):
        small_trainer(tmp_path, max_epochs=1, callbacks=[replay]).fit(
            ContinualClassifier(in_features=4, num_tasks=3), loader
        )
    for other in (lp.LossTracker(), lp.TopKSelection(presample=2)):
        with pytest.raises(ValueError, match=rf"ExperienceReplay cannot run with {type(other).__name__}"):
            small_trainer(tmp_path, max_epochs=1, callbacks=[replay, other]).fit(
                DictModule(), datamodule=_dict_sequence()
            )


def test_a_repeated_batch_trains_several_times_and_is_offered_once(tmp_path: Path) -> None:
    module = DictModule()
    replay = ExperienceReplay(ReservoirBuffer(50), replay_batch_size=2)
    dm = TaskSequence(tasks=[DictDataset(t) for t in toy_tasks()], batch_size=4, repeats=3)
    trainer = small_trainer(tmp_path, max_epochs=1, callbacks=[replay])
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 27 and replay.buffer.seen == 36  # 9 incoming batches, 3 steps each
    incoming = [b["index"][b["index"] >= 0].tolist() for b in module.batches]
    assert incoming[0] == incoming[1] == incoming[2] != incoming[3]


def test_a_stream_run_logs_its_metrics_and_checkpoints_the_buffer_and_the_matrix(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=toy_tasks(), test_tasks=toy_tasks(), batch_size=4)
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, scenario="task")
    logger = CSVLogger(tmp_path, name="cl")
    replay, matrix = ExperienceReplay(ReservoirBuffer(10), replay_batch_size=4), TaskAccuracyMatrix(inputs=[0, 2])
    trainer = small_trainer(
        tmp_path,
        max_epochs=1,
        logger=logger,
        callbacks=[replay, matrix],
        log_every_n_steps=1,
        enable_checkpointing=True,
    )
    trainer.fit(model, datamodule=dm)
    text = Path(logger.log_dir, "metrics.csv").read_text()
    for key in ("cl/acc", "cl/bwt", "val/acc"):
        assert key in text
    (ckpt,) = Path(tmp_path).rglob("*.ckpt")
    saved = torch.load(ckpt, weights_only=True)  # tensors and plain values only
    assert saved["callbacks"][matrix.state_key]["next_task"] == 3  # every row, written before the checkpoint
    assert saved["callbacks"][replay.state_key]["buffers"][0]["writer"]["seen"] == 36


def test_a_per_task_run_resumed_from_its_checkpoint_restores_buffer_and_matrix(tmp_path: Path) -> None:
    def sequence() -> TaskSequence:
        return TaskSequence(tasks=toy_tasks(), test_tasks=toy_tasks(), batch_size=4, mode="task")

    seed_everything(0)
    model = ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2, optimizer="adam", lr=0.01)
    replay, matrix = ExperienceReplay(PrioritizedReplayBuffer(6), replay_batch_size=2), TaskAccuracyMatrix()
    dm = sequence()
    dm.setup("fit")
    dm.set_task(0)
    trainer = small_trainer(tmp_path / "t0", max_epochs=1, callbacks=[replay, matrix], enable_checkpointing=True)
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
        restored,
        sequence(),
        lambda t: small_trainer(tmp_path / f"t{t}", max_epochs=1, callbacks=callbacks, enable_checkpointing=True),
        start_task=1,
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
    dm = TaskSequence(tasks=toy_tasks(), test_tasks=toy_tasks(), batch_size=4)
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
    trainer = small_trainer(root, max_epochs=1, callbacks=callbacks)
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


def test_the_progress_bar_shows_how_full_the_buffer_is(tmp_path: Path) -> None:
    dm = TaskSequence(tasks=toy_tasks(), batch_size=4)
    trainer = small_trainer(
        tmp_path, max_epochs=1, callbacks=[ExperienceReplay(ReservoirBuffer(10), replay_batch_size=2)]
    )
    trainer.fit(ContinualClassifier(in_features=4, num_tasks=3, classes_per_task=2), datamodule=dm)
    assert trainer.progress_bar_metrics["per/buffer_fill"] == 1.0  # 36 samples seen, 10 kept
