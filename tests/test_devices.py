"""Every callback on the accelerator at hand, in mixed precision: the same semantics as on CPU in fp32.

Marked ``gpu``: ``make gpu-check`` runs them on CUDA (``bf16-mixed`` and ``16-mixed``, and checks that the tracker's
per-step path makes no host sync); without CUDA they run on the CPU in ``bf16-mixed`` as part of the suite, so the
GPU check cannot rot.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

import lightning_per as lp
from tests.helpers import TinyClassifier, blob_datamodule, fit

CUDA = torch.cuda.is_available()
ACCELERATOR = "cuda" if CUDA else "cpu"
PRECISIONS = ["bf16-mixed", "16-mixed"] if CUDA else ["bf16-mixed"]

pytestmark = pytest.mark.gpu


class OnDevice(TinyClassifier):
    """Checks, on every training step, that the batch, its weights and the outputs live on the module's device.

    The weights' values are checked on the device (a count of bad ones, read after ``fit``), so that the check itself
    makes no host sync.
    """

    def __init__(self) -> None:
        super().__init__(features=8, classes=4)
        self.checked = 0
        self.bad_weights: torch.Tensor | int = 0
        self.trained_on: set[str] = set()

    def on_train_end(self) -> None:  # Lightning moves the model back to the CPU after fit: look before
        self.trained_on = {p.device.type for p in self.parameters()}

    def training_step(self, batch, batch_idx):
        x, y = batch
        assert batch.weight.device == x.device == self.device, (batch.weight.device, x.device, self.device)
        assert batch.index.device == self.device and batch.index.dtype == torch.int64
        self.bad_weights = self.bad_weights + ((~torch.isfinite(batch.weight)) | (batch.weight <= 0)).sum()
        if torch.is_grad_enabled():
            self.checked += 1
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        return {"loss": lp.weighted_mean(losses, batch), "per_sample_loss": losses, "logits": logits, "target": y}


class NoSyncBetween(Callback):
    """Turns CUDA's sync debug mode to ``error`` for the steps that are not synchronisation points of the tracker.

    Put first and last in the callback list (``first=True`` / ``False``): the mode covers the training step and every
    callback's ``on_train_batch_end`` in between.
    """

    def __init__(self, first: bool, quiet_steps: range) -> None:
        self.first = first
        self.quiet_steps = quiet_steps
        self.guarded = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first and CUDA and batch_idx in self.quiet_steps:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.first and CUDA and batch_idx in self.quiet_steps:
            torch.cuda.set_sync_debug_mode("default")
            self.guarded += 1


SIZE = dict(n=96, features=8, classes=4)  # 12 steps of 8 per epoch, for OnDevice


def _on(precision):
    """The Trainer arguments of a run on the accelerator at hand in ``precision``."""
    return dict(accelerator=ACCELERATOR, precision=precision)


def _assert_trained_on_the_device(run):
    model, trainer = run.model, run.trainer
    assert model.trained_on == {ACCELERATOR} and all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert model.checked == trainer.global_step > 0 and int(model.bad_weights) == 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("strategy", ["proportional", "rank", "prune"])
def test_loss_tracker_on_the_device_with_no_host_sync_between_its_synchronisation_points(tmp_path, precision, strategy):
    tracker = lp.LossTracker(flush_every_n_steps=8)  # 12 steps per epoch: syncs at batch 0, 8 and the epoch end
    # 16-mixed's GradScaler reads its inf check on the host every step by design: the guard covers bf16-mixed
    quiet = range(1, 7) if precision == "bf16-mixed" else range(0)
    first, last = NoSyncBetween(True, quiet), NoSyncBetween(False, quiet)
    run = fit(
        tmp_path,
        [first, tracker, last],
        model=OnDevice(),
        datamodule=blob_datamodule(**SIZE, strategy=strategy),
        **_on(precision),
    )
    _assert_trained_on_the_device(run)
    trainer, dm = run.trainer, run.datamodule
    assert dm.scores.seen == 96 and bool(torch.isfinite(dm.scores.scores).all())
    guarded = CUDA and precision == "bf16-mixed"
    assert math.isfinite(trainer.callback_metrics["per/ess"]) and (last.guarded >= 6 if guarded else last.guarded == 0)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize(
    "make",
    [
        lambda: lp.ImportanceSamplingCallback(tau_th=1e-9, tau_every_n_steps=1),
        lambda: lp.TopKSelection(presample=4, score="loss"),
        lambda: lp.SelectiveBackprop(selectivity=1.0, presample=2),
    ],
    ids=["importance", "topk", "selective_backprop"],
)
def test_each_selection_rule_on_the_device(tmp_path, precision, make):
    rule = make()
    run = fit(tmp_path, [rule], model=OnDevice(), datamodule=blob_datamodule(**SIZE), **_on(precision))
    _assert_trained_on_the_device(run)
    trainer = run.trainer
    assert rule.state_dict()["run_selected"] >= trainer.global_step - 1 > 0
    assert math.isfinite(float(trainer.callback_metrics["per/loss_unweighted"]))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_reducible_loss_selection_on_the_device(tmp_path, precision):
    dm = blob_datamodule(**SIZE, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(features=8, classes=4), max_epochs=2)
    model = OnDevice()
    callbacks = [irreducible, lp.TopKSelection(presample=4)]
    trainer = fit(tmp_path, callbacks, model=model, datamodule=dm, **_on(precision), max_epochs=1).trainer
    assert irreducible.table is not None and irreducible.table.device.type == "cpu"
    assert bool(torch.isfinite(irreducible.table).all()) and model.checked == trainer.global_step == 9
    assert int(model.bad_weights) == 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
def test_experience_replay_on_the_device_with_the_buffer_in_device_memory(tmp_path, precision, prioritized):
    from lightning_per.replay import ExperienceReplay, PrioritizedReplayBuffer, ReservoirBuffer

    replay = ExperienceReplay(
        PrioritizedReplayBuffer(32) if prioritized else ReservoirBuffer(32), replay_batch_size=4, device="module"
    )
    run = fit(tmp_path, [replay], model=OnDevice(), datamodule=blob_datamodule(**SIZE), **_on(precision))
    _assert_trained_on_the_device(run)
    trainer, model = run.trainer, run.model
    assert model.checked == trainer.global_step == 24 and int(model.bad_weights) == 0
