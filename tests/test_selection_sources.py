"""lightning_per.selection.sources: selection from any loader (streams too), the device presample, ``tau_th="auto"``."""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from torch.utils.data import DataLoader

import lightning_per as lp
from lightning_per.selection.sources import StreamCollate
from tests.helpers import Stream, StreamClassifier, TinyClassifier, blobs, run_two_processes, small_trainer

SCRIPT = Path(__file__).with_name("ddp_stream_script.py")


class Trained(Callback):
    """Put after the selection callback: the ids and weights each step trained on."""

    def __init__(self) -> None:
        self.ids: list[list[int]] = []
        self.weights: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.append(batch[2].tolist())
        self.weights.append(batch.weight.tolist())


def _by_id(table: torch.Tensor):
    def score(outputs, batch):
        return table[batch[2].cpu()]

    return score


@pytest.mark.parametrize(
    "make",
    [
        lambda: lp.TopKSelection(presample=4, score="loss"),
        lambda: lp.SelectiveBackprop(presample=4),
        lambda: lp.ImportanceSamplingCallback(presample=4, tau_th=1e-9, tau_every_n_steps=1),
    ],
    ids=["topk", "selective_backprop", "importance"],
)
def test_every_online_method_trains_from_a_plain_loader_over_a_stream(tmp_path, make):
    selection, trained = make(), Trained()
    trainer = small_trainer(tmp_path, callbacks=[selection, trained], max_epochs=2)
    trainer.fit(StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32))  # B = 32, b = 8
    assert selection.resolved_mode == "large_batch" and trainer.global_step == 6
    assert all(len(ids) <= 32 and len(set(ids)) <= 32 for ids in trained.ids)
    if isinstance(selection, lp.TopKSelection):
        assert all(len(ids) == 8 for ids in trained.ids)
    assert selection.cost.trained == sum(map(len, trained.ids))
    assert selection.cost.scored in (5 * 32, 6 * 32)  # large batches of 32 (importance: its first step is uniform)


def test_top_k_in_a_large_batch_trains_on_its_highest_scored_points(tmp_path):
    table = torch.randn(96, generator=torch.Generator().manual_seed(0))
    trained = Trained()
    trainer = small_trainer(tmp_path, callbacks=[lp.TopKSelection(presample=4, score=_by_id(table)), trained])
    trainer.fit(StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32))
    for step, ids in enumerate(trained.ids[:3]):  # the stream is in order: large batch k holds ids 32k .. 32k + 31
        large = torch.arange(32 * step, 32 * step + 32)
        assert sorted(ids) == sorted(large[table[large].topk(8).indices].tolist())
        assert set(trained.weights[step]) == {1.0}


def test_a_step_that_does_not_select_trains_on_the_first_b_points_of_its_large_batch(tmp_path):
    trained = Trained()
    selection = lp.TopKSelection(presample=4, score="loss", warmup_steps=2)
    small_trainer(tmp_path, callbacks=[selection, trained], max_epochs=1).fit(
        StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32)
    )
    assert trained.ids[0] == list(range(8)) and trained.ids[1] == list(range(32, 40))
    assert selection.cost.trained == 3 * 8 and selection.cost.scored == 32  # only the third step scored


def test_importance_weights_in_a_large_batch_keep_the_large_batch_mean_unbiased(tmp_path):
    table = torch.rand(96, generator=torch.Generator().manual_seed(1)) + 0.1
    trained = Trained()
    selection = lp.ImportanceSamplingCallback(presample=4, tau_th=1e-9, tau_every_n_steps=1, score=_by_id(table))
    small_trainer(tmp_path, callbacks=[selection, trained], max_epochs=3).fit(
        StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32)
    )
    for ids, weights in zip(trained.ids[1:], trained.weights[1:], strict=True):  # importance steps
        p = table[ids] / table[(torch.tensor(ids[0]) // 32) * 32 + torch.arange(32)].sum()
        assert torch.allclose(torch.tensor(weights), 1 / (32 * p), rtol=1e-4)


def test_rho_loss_on_a_stream_computes_the_irreducible_losses_on_the_fly_and_charges_them(tmp_path, caplog):
    irreducible = lp.IrreducibleLoss(model=StreamClassifier(), holdout_dataset=blobs(24, seed=5), max_epochs=2)
    selection = lp.TopKSelection(presample=4)  # score="reducible"
    with caplog.at_level(logging.INFO):
        small_trainer(tmp_path, callbacks=[irreducible, selection], max_epochs=1).fit(
            StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32)
        )
    assert irreducible.table is None  # no index to store a table by
    assert irreducible.cost_units == 3 * 2 * 24 + 3 * 32  # its training, then one forward per presampled point
    assert "computed on the fly" in caplog.text and "after IrreducibleLoss's 240 units" in caplog.text


def test_rho_loss_on_a_stream_reads_precomputed_irreducible_losses_by_the_ids_its_samples_carry(tmp_path):
    table = torch.zeros(96)
    table[48:] = 100.0  # reducible loss of ids 48.. far below the rest's: never selected while others remain
    torch.save(table, tmp_path / "irreducible.pt")
    irreducible = lp.IrreducibleLoss(table_path=str(tmp_path / "irreducible.pt"))
    selection, trained = lp.TopKSelection(presample=4), Trained()  # score="reducible"
    loader = DataLoader(Stream(), batch_size=32, collate_fn=StreamCollate(index_key=2))  # ids are the 3rd field
    small_trainer(tmp_path, callbacks=[irreducible, selection, trained], max_epochs=1).fit(
        StreamClassifier(), train_dataloaders=loader
    )
    assert len(trained.ids) == 3 and all(len(ids) == 8 for ids in trained.ids)
    # the three large batches hold ids 0-31, 32-63, 64-95: the second's top 8 are all among 32-47
    assert max(trained.ids[0]) < 32 and all(32 <= i < 48 for i in trained.ids[1]) and min(trained.ids[2]) >= 64
    assert irreducible.cost_units == 0
    assert torch.equal(irreducible.table, table)


def test_precomputed_irreducible_losses_refuse_a_stream_without_ids_and_ids_beyond_the_table(tmp_path):
    torch.save(torch.zeros(40), tmp_path / "short.pt")
    cases = [
        (DataLoader(Stream(), batch_size=32), r"samples have none \(index -1\).*StreamCollate\(index_key=...\)"),
        (DataLoader(Stream(), batch_size=32, collate_fn=StreamCollate(index_key=2)), r"id \(63\) is beyond.*40"),
    ]
    for loader, message in cases:
        irreducible = lp.IrreducibleLoss(table_path=str(tmp_path / "short.pt"))
        trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=4)], max_epochs=1)
        with pytest.raises(ValueError, match=message):
            trainer.fit(StreamClassifier(), train_dataloaders=loader)


def test_a_table_path_is_checked_before_training(tmp_path):
    torch.save({"not": "a tensor"}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match=r"takes no `model`.*Pass either `table_path` or a holdout `model`"):
        lp.IrreducibleLoss(model=StreamClassifier(), table_path="t.pt")
    for path, message in [("missing.pt", "is not a file"), ("dict.pt", "must hold a 1-D float tensor.*dict")]:
        irreducible = lp.IrreducibleLoss(table_path=str(tmp_path / path))
        trainer = small_trainer(tmp_path, callbacks=[irreducible, lp.TopKSelection(presample=4)], max_epochs=1)
        with pytest.raises(ValueError, match=message):
            trainer.fit(StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=32))
    with pytest.raises(TypeError, match=r"index_key=3.*integer id per sample"):
        StreamCollate(index_key=3)([(torch.zeros(2), 0, 1)])
    with pytest.raises(TypeError, match="`index_key` must be a key"):
        StreamCollate(index_key=1.5)  # type: ignore[arg-type]


def test_a_batched_stream_reads_its_size_from_the_first_tensor_of_any_structure():
    collate = StreamCollate(collate_fn=lambda batch: batch, batched=True)
    batch = collate({"names": ["a", "b", "c"], "step": torch.tensor(7), "x": (torch.zeros(3, 2), torch.ones(3))})
    assert batch.batch_size == 3 and batch.index.tolist() == [-1, -1, -1]
    with pytest.raises(TypeError, match="holds no tensor to read its size from: dict"):
        collate({"names": ["a", "b"]})


def test_loss_tracker_refuses_a_stream_naming_the_online_methods(tmp_path):
    trainer = small_trainer(tmp_path, callbacks=[lp.LossTracker()])
    with pytest.raises(TypeError, match=r"a stream has none: train it with an online method, `TopKSelection`"):
        trainer.fit(StreamClassifier(), train_dataloaders=DataLoader(Stream(), batch_size=8))


def test_a_loader_from_a_hook_can_carry_the_stream_collate_itself(tmp_path):
    class OwnLoader(StreamClassifier):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=32, collate_fn=StreamCollate())

    selection = lp.SelectiveBackprop(presample=4)
    small_trainer(tmp_path, callbacks=[selection], max_epochs=1).fit(OwnLoader())
    assert selection.cost.scored == 3 * 32

    class PlainLoader(StreamClassifier):
        def train_dataloader(self):
            return DataLoader(Stream(), batch_size=32)

    with pytest.raises(TypeError, match=r"collate_fn=lightning_per.StreamCollate\(your_collate_fn\)"):
        small_trainer(tmp_path, callbacks=[lp.SelectiveBackprop(presample=4)], max_epochs=1).fit(PlainLoader())


def test_tensors_draw_their_extra_points_on_the_device_without_a_second_loader(tmp_path, monkeypatch):
    import lightning_per.plumbing.loaders as loaders

    def no_second_loader(*args, **kwargs):
        raise AssertionError("the device-resident presample built a DataLoader")

    monkeypatch.setattr(loaders, "shard_loader", no_second_loader)
    selection = lp.ImportanceSamplingCallback(tau_th=1e-9, tau_every_n_steps=1)
    dm = lp.PrioritizedDataModule(blobs(64), batch_size=8, holdout_fraction=0.25)  # a Subset of a TensorDataset
    small_trainer(tmp_path, callbacks=[selection], max_epochs=1).fit(TinyClassifier(), datamodule=dm)
    assert selection.resolved_mode == "device" and selection.cost.scored > 0


def test_tau_th_auto_measures_the_cost_ratio_logs_it_and_can_measure_again(tmp_path, caplog):
    selection = lp.ImportanceSamplingCallback(tau_th="auto", calibration_steps=2, tau_every_n_steps=4)
    trainer = small_trainer(tmp_path, callbacks=[selection], max_epochs=2)
    with caplog.at_level(logging.INFO):
        trainer.fit(TinyClassifier(), datamodule=lp.PrioritizedDataModule(blobs(96), batch_size=8))
    ratio = selection.cost_ratio
    assert ratio is not None and 0 < ratio < 100 and selection.tau_th == ratio
    assert trainer.callback_metrics["per/cost_ratio"] == pytest.approx(ratio)
    assert "an importance step cost" in caplog.text
    selection.recalibrate()  # the next fit measures the ratio again (a fit with a measured ratio does not)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        small_trainer(tmp_path, callbacks=[selection], max_epochs=1).fit(
            TinyClassifier(), datamodule=lp.PrioritizedDataModule(blobs(96), batch_size=8)
        )
    assert "an importance step cost" in caplog.text and selection.tau_th == selection.cost_ratio
    with pytest.raises(ValueError, match="`recalibrate\\(\\)` needs `tau_th='auto'`"):
        lp.ImportanceSamplingCallback(tau_th=2.0).recalibrate()


def test_the_importance_config_measures_its_threshold():
    from lightning_per.cli import main

    cli = main(["--config", "lightning_per/examples/configs/mnist1d_importance.yaml"], run=False)
    (selection,) = [c for c in cli.trainer.callbacks if isinstance(c, lp.ImportanceSamplingCallback)]
    assert selection.cost_ratio is None and selection.calibration_steps == 8  # measured in the fit's first steps
    assert selection.tau_th == pytest.approx((3 + 3) / 3)  # until then the theoretical ratio (B + 3b) / (3b)
    selection.recalibrate()  # only `tau_th="auto"` measures: a fixed `tau_th` refuses it


@pytest.mark.slow
def test_two_processes_each_select_from_their_own_share_of_a_stream_and_resume_exactly(tmp_path):
    ranks = run_two_processes(SCRIPT, tmp_path, timeout=300)
    for r in ranks:
        assert r["resumed"] == r["uninterrupted"][len(r["resumed_before"]) :]  # the stream and the draws continue
        assert r["resumed_before"] == r["uninterrupted"][: len(r["resumed_before"])]
    shares = [{i for ids in r["uninterrupted"] for i in ids} for r in ranks]
    assert not shares[0] & shares[1]  # each process selects from its own share


def test_the_webdataset_example_runs(tmp_path):
    pytest.importorskip("webdataset")
    pytest.importorskip("mnist1d")
    run = subprocess.run(
        [sys.executable, "examples/streaming.py", "--fast"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "rho-loss" in run.stdout and "mislabelled trained" in run.stdout
