"""lightning_per.selection.rules and the named callbacks: which points each rule trains on, with which weights."""

import math

import pytest
import torch
from lightning.pytorch import Callback

import lightning_per as lp
from tests.helpers import ALWAYS, Steps, blob_datamodule, fit, heavy_scores, table_score


def test_top_k_selection_trains_each_step_on_the_b_highest_scored_points_of_its_presample(tmp_path):
    table = torch.randn(64, generator=torch.Generator().manual_seed(0)).exp()

    class Presamples(Callback):  # put before the selection callback: the step's incoming points
        def __init__(self):
            self.incoming = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.incoming.append(batch.index.tolist())

    seen = Presamples()
    top = lp.TopKSelection(presample=3, score=lambda outputs, batch: table[batch.index])
    model = fit(tmp_path, [seen, top], max_epochs=1).model
    for incoming, chosen, weights in zip(seen.incoming, model.seen_index, model.seen_weight, strict=True):
        assert len(chosen) == len(incoming) == 8 and weights == [1.0] * 8
        # every incoming point scoring above the chosen ones' lowest was chosen (the presample holds them all)
        lowest = min(float(table[i]) for i in chosen)
        assert all(i in chosen for i in incoming if float(table[i]) > lowest)
        assert sorted(chosen, key=lambda i: -float(table[i])) == chosen  # highest first


def test_selective_backprop_trains_on_about_one_in_selectivity_plus_one_of_each_presample(tmp_path):
    sb = lp.SelectiveBackprop(selectivity=1.0, presample=2, history=256)
    trainer, model, _ = fit(tmp_path, [sb], datamodule=blob_datamodule(256, 16), max_epochs=2)
    sizes = [len(i) for i in model.seen_index[4:]]  # once the history holds a few presamples
    assert 0.4 < sum(sizes) / (32 * len(sizes)) < 0.6  # E[F] = 1/2 of B = 32
    assert min(sizes) >= 1 and all(w == 1.0 for ws in model.seen_weight for w in ws)
    assert 0.4 < float(trainer.callback_metrics["per/kept_fraction"]) < 0.6


def test_selective_backprop_shows_the_kept_fraction_in_the_progress_bar(tmp_path):
    trainer = fit(tmp_path, [lp.SelectiveBackprop(presample=2)], max_epochs=1).trainer
    assert 0 < trainer.progress_bar_metrics["per/kept_fraction"] <= 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: lp.TopKSelection(presample=1), r"`presample` must be an integer >= 2"),
        (lambda: lp.SelectiveBackprop(selectivity=0.0), r"`selectivity` must be a finite number > 0, got 0.0"),
        (lambda: lp.SelectiveBackprop(history=0), r"`history` must be an integer >= 1, got 0"),
        (lambda: lp.TopKSelection(score="bogus"), r"`score` must be one of 'loss', 'reducible'"),
        (lambda: lp.IrreducibleLoss(max_epochs=0), r"`max_epochs` must be an integer >= 1, got 0"),
    ],
)
def test_bad_selection_arguments_name_the_argument_and_the_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_non_finite_scores_in_a_presample_are_never_selected(tmp_path):
    table = heavy_scores(64)
    bad = set(range(0, 64, 3))
    table[list(range(0, 64, 6))] = float("nan")
    table[list(range(3, 64, 6))] = float("inf")
    cb = lp.ImportanceSamplingCallback(tau_every_n_steps=1, tau_th=ALWAYS, score=table_score(table))
    steps = Steps(cb)
    fit(tmp_path, [cb, steps])
    rows = steps.rows
    importance = [r for r in rows if r["importance"]]
    assert len(importance) == len(rows) - 1
    assert not bad & {i for r in importance for i in r["index"]}
    assert all(math.isfinite(w) and w > 0 for r in importance for w in r["weight"])
