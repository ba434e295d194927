"""lightning_per._checks: bad input gets a clear, early error that names the argument, the value and the fix."""

import pytest
from torch.utils.data import IterableDataset

import lightning_per as lp
from lightning_per._checks import check_device, check_int, check_number
from lightning_per.continual import TaskAccuracyMatrix, TaskDataset, TaskSequence
from lightning_per.examples import ContinualClassifier
from lightning_per.replay import MER, ExperienceReplay, PrioritizedReplayBuffer, ReplayBuffer, ReservoirBuffer
from tests.helpers import blobs


class _Stream(IterableDataset):
    def __iter__(self):
        yield from blobs(8)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: lp.PrioritizedDataModule(blobs(8), batch_size="32"), TypeError, r"`batch_size` must be an integer"),
        (lambda: lp.SamplingStrategy(alpha="1.0"), TypeError, r"`alpha` must be a finite number >= 0, got '1.0'"),
        (lambda: lp.ImportanceSamplingCallback(tau_th="high"), TypeError, r"`tau_th` must be a finite number > 0"),
        (lambda: lp.weighted_mean([1.0, 2.0], None), TypeError, r"`losses` must be a tensor of per-sample losses"),
        (lambda: MER("MyModule"), TypeError, r"`module` must be your LightningModule instance"),
        (lambda: TaskSequence(tasks=[]), ValueError, r"`tasks` is empty"),
        (lambda: TaskSequence(tasks=[_Stream()]), TypeError, r"`tasks\[0\]` must be a map-style dataset"),
        (lambda: ReplayBuffer(capacity=10, sampler="uniform"), TypeError, r"`sampler` must be a replay sampler"),
        (lambda: ExperienceReplay(device="gpu0"), ValueError, r"`device` must be a device name .*got 'gpu0'"),
        (lambda: TaskDataset(blobs(4), task="a"), TypeError, r"`task` must be an integer >= 0, got 'a'"),
        (lambda: lp.PrioritizedDataModule(_Stream()), TypeError, r"`train_dataset` is an IterableDataset"),
        (lambda: lp.Score("loss", loss_key=3), TypeError, r"`loss_key` must be a str"),
        (lambda: TaskAccuracyMatrix(inputs=[0.5]), TypeError, r"`inputs` must hold tuple positions"),
    ],
)
def test_a_wrong_value_is_refused_at_construction_naming_the_argument(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_the_shared_checks_say_what_was_expected():
    with pytest.raises(TypeError, match=r"`n` must be an integer >= 1, got True \(bool\)"):
        check_int("n", True, 1)
    with pytest.raises(ValueError, match=r"`x` must be a finite number in \(0, 1\], got 0.0"):
        check_number("x", 0, 0.0, 1.0, low_open=True)
    with pytest.raises(ValueError, match=r"`x` must be a finite number >= 0, got nan"):
        check_number("x", float("nan"), 0.0)
    assert check_number("x", None, 0.0, optional=True) is None and check_device("d", "module", ["module"]) == "module"


def test_replay_settings_out_of_range_are_refused_naming_the_argument() -> None:
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
