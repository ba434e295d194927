"""lightning_per.selection.presample: the extra points of a presample, through workers and skipped steps."""

from types import SimpleNamespace

import lightning_per as lp
from lightning_per.selection.presample import ExtraPoints
from tests.helpers import ALWAYS, CheckedClassifier, Steps, TinyClassifier, blobs, fit


def test_data_loader_workers_work_for_the_epoch_and_the_extra_points(tmp_path):
    base = blobs(48)
    dm = lp.PrioritizedDataModule(base, batch_size=8, strategy="uniform", seed=0, num_workers=1)
    model = CheckedClassifier(base.tensors)
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], datamodule=dm, model=model, max_epochs=1)
    rows = steps.rows
    assert [r["importance"] for r in rows] == [False] + [True] * 5


def test_a_presample_that_training_step_skips_trains_the_incoming_batch_uniformly(tmp_path):
    class SkipsSample5(TinyClassifier):  # e.g. a module that returns None when a loss is not finite
        def training_step(self, batch, batch_idx):
            return None if 5 in batch.index.tolist() else super().training_step(batch, batch_idx)

    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS)
    steps = Steps(cb)
    fit(tmp_path, [cb, steps], model=SkipsSample5(), max_epochs=2)
    rows = steps.rows
    assert len(rows) == 16 and any(r["importance"] for r in rows)
    assert any(not r["importance"] and r["weight"] == [1.0] * 8 for r in rows[1:])  # a skipped presample


def test_a_process_without_a_share_of_the_training_set_draws_its_extra_points_from_all_of_it():
    dm = lp.PrioritizedDataModule(blobs(2), batch_size=3)  # 2 samples, 4 processes: rank 3 has no share
    dm.setup("fit")
    trainer = SimpleNamespace(datamodule=dm, world_size=4, global_rank=3)
    batch = next(iter(ExtraPoints(factor=2, seed=0)._loader(trainer)))  # type: ignore[arg-type]
    assert batch.batch_size == 3 and set(batch.index.tolist()) <= {0, 1}
