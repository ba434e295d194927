"""Online batch selection: the top-k and Selective Backprop rules, their cost, resume, and the irreducible losses."""

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from scipy import stats

import lightning_per as lp
from lightning_per import functional as PF
from tests.helpers import TinyClassifier, blobs, run_two_processes, small_trainer

DDP_SCRIPT = Path(__file__).with_name("ddp_selection_script.py")


def _dm(n=64, batch_size=8, **kwargs):
    kwargs.setdefault("strategy", "uniform")
    kwargs.setdefault("seed", 0)
    return lp.PrioritizedDataModule(blobs(n), batch_size=batch_size, **kwargs)


class Trained(Callback):
    """Put after the selection callback: what each step trained on."""

    def __init__(self):
        self.index, self.weight = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.index.append(batch.index.tolist())
        self.weight.append(batch.weight.tolist())


def _fit(tmp_path, callbacks, dm=None, model=None, ckpt_path=None, **kwargs):
    trained = Trained()
    trainer = small_trainer(tmp_path, callbacks=[*callbacks, trained], **kwargs)
    trainer.fit(model or TinyClassifier(), datamodule=dm or _dm(), ckpt_path=ckpt_path)
    return trainer, trained


# ----------------------------------------------------------------------------------------------- the rules
def test_top_k_picks_exactly_the_highest_scores_with_ties_to_the_earlier_point():
    scores = torch.tensor([3.0, 1.0, 3.0, float("nan"), 2.0, 3.0, float("inf")])
    assert PF.top_k_positions(scores, 3).tolist() == [0, 2, 5]
    assert PF.top_k_positions(scores, 4).tolist() == [0, 2, 5, 4]
    assert PF.top_k_positions(scores, 10).tolist() == [0, 2, 5, 4, 1]  # never a non-finite score


def test_top_k_selection_trains_each_step_on_the_b_highest_scored_points_of_its_presample(tmp_path):
    table = torch.randn(64, generator=torch.Generator().manual_seed(0)).exp()

    class Presamples(Callback):  # put before the selection callback: the step's incoming points
        def __init__(self):
            self.incoming = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.incoming.append(batch.index.tolist())

    seen = Presamples()
    top = lp.TopKSelection(presample=3, score=lambda outputs, batch: table[batch.index])
    _, trained = _fit(tmp_path, [seen, top], max_epochs=1)
    for incoming, chosen, weights in zip(seen.incoming, trained.index, trained.weight, strict=True):
        assert len(chosen) == len(incoming) == 8 and weights == [1.0] * 8
        # every incoming point scoring above the chosen ones' lowest was chosen (the presample holds them all)
        lowest = min(float(table[i]) for i in chosen)
        assert all(i in chosen for i in incoming if float(table[i]) > lowest)
        assert sorted(chosen, key=lambda i: -float(table[i])) == chosen  # highest first


def test_selective_backprop_keeps_each_point_with_probability_its_percentile_to_the_selectivity():
    # F of the i-th smallest of n history values is i / n: keep probability (i / n) ** selectivity, checked by counts
    n, selectivity, trials = 20, 2.0, 4000
    history = torch.arange(1.0, n + 1)
    generator = torch.Generator().manual_seed(0)
    kept = torch.zeros(n)
    for _ in range(trials):
        kept += PF.percentile_keep(history, history, selectivity, torch.rand(n, generator=generator)).float()
    expected = trials * (torch.arange(1.0, n + 1) / n) ** selectivity
    assert kept[-1] == trials  # the highest score has F = 1: always kept
    kept, expected = kept[:-1], expected[:-1]
    chi2 = float((((kept - expected) ** 2) / (expected * (1 - expected / trials))).sum())
    assert stats.chi2.sf(chi2, df=n - 1) > 1e-3  # a binomial count per point; fixed seed
    assert PF.percentile_keep(torch.tensor([float("nan")]), history, selectivity, torch.zeros(1)).tolist() == [False]


def test_selective_backprop_trains_on_about_one_in_selectivity_plus_one_of_each_presample(tmp_path):
    sb = lp.SelectiveBackprop(selectivity=1.0, presample=2, history=256)
    trainer, trained = _fit(tmp_path, [sb], dm=_dm(256, 16), max_epochs=2)
    sizes = [len(i) for i in trained.index[4:]]  # once the history holds a few presamples
    assert 0.4 < sum(sizes) / (32 * len(sizes)) < 0.6  # E[F] = 1/2 of B = 32
    assert min(sizes) >= 1 and all(w == 1.0 for ws in trained.weight for w in ws)
    assert 0.4 < float(trainer.callback_metrics["per/kept_fraction"]) < 0.6


# -------------------------------------------------------------------------------------------------- cost
class Counting(TinyClassifier):
    """Records every forward call: (number of points, whether gradients were on)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return super().forward(x)


@pytest.mark.parametrize(
    ("make", "trains"),
    [
        (lambda: lp.ImportanceSamplingCallback(presample=3, tau_th=1e-9, tau_every_n_steps=1), [8]),
        (lambda: lp.TopKSelection(presample=3, score="loss"), [8]),
        (lambda: lp.SelectiveBackprop(selectivity=1.0, presample=3), None),
    ],
    ids=["importance", "topk", "selective_backprop"],
)
def test_each_selection_step_costs_one_no_grad_forward_of_the_presample_and_one_training_pass(tmp_path, make, trains):
    model = Counting()
    cb = make()
    _, trained = _fit(tmp_path, [cb], model=model, max_epochs=1)  # 8 steps of b = 8
    calls = model.calls
    selecting = cb._run_selected
    assert selecting >= 7 and len(calls) == 8 + selecting  # a training pass per step, a scoring pass per selection
    scoring = [c for c in calls if not c[1]]
    assert scoring == [(24, False)] * selecting  # B = 3 b, without gradients
    training = [n for n, grad in calls if grad]
    assert training == [len(i) for i in trained.index]  # forward and backward on the chosen points only
    if trains is not None:
        assert set(training) == set(trains)


# ------------------------------------------------------------------------------------------------ resume
class _KillAfter(Callback):
    def __init__(self, epochs):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class CountsTraining(TinyClassifier):
    fits = 0

    def on_fit_start(self):
        CountsTraining.fits += 1


def _rule_run(tmp_path, make, epochs, ckpt_path=None, kill_after=None):
    torch.manual_seed(0)
    dm = _dm(80, holdout_fraction=0.2)
    callbacks = [lp.IrreducibleLoss(model=CountsTraining(), max_epochs=2), make()]
    if kill_after:
        callbacks += [_KillAfter(kill_after), ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1)]
    _, trained = _fit(
        tmp_path, callbacks, dm=dm, ckpt_path=ckpt_path, max_epochs=epochs, enable_checkpointing=bool(kill_after)
    )
    return trained, callbacks


@pytest.mark.parametrize(
    "make",
    [
        lambda: lp.TopKSelection(presample=3),
        lambda: lp.SelectiveBackprop(selectivity=1.0, presample=2, history=32, score="reducible"),
        lambda: lp.ImportanceSamplingCallback(tau_th=1.01, tau_every_n_steps=3, a_tau=0.5),
    ],
    ids=["topk", "selective_backprop", "importance"],
)
def test_a_resumed_run_selects_what_the_uninterrupted_run_selects(tmp_path, make):
    full, (_, rule) = _rule_run(tmp_path / "full", make, 3)
    _rule_run(tmp_path / "killed", make, 3, kill_after=2)
    fits = CountsTraining.fits
    ckpt = tmp_path / "killed" / "epoch=1-step=16.ckpt"
    resumed, (irreducible, resumed_rule) = _rule_run(tmp_path / "resumed", make, 3, ckpt_path=str(ckpt))
    assert resumed_rule._run_selected == rule._run_selected >= 8  # the counts go on from the checkpoint
    assert resumed.index == full.index[16:] and resumed.weight == full.weight[16:]
    assert len(set(map(tuple, full.index[16:]))) == 8  # (selections differ from step to step)
    assert CountsTraining.fits == fits  # the irreducible-loss model was not trained again: its table was restored
    assert irreducible.table is not None and irreducible.table.shape == (64,)


# ------------------------------------------------------------------------------------------ irreducible
def test_the_holdout_is_removed_from_training_and_the_table_has_one_loss_per_training_sample(tmp_path):
    dm = _dm(80, holdout_fraction=0.25)
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=2)
    _, trained = _fit(tmp_path, [irreducible], dm=dm, max_epochs=1)
    assert len(dm.train_dataset) == 60 and len(dm.holdout_dataset) == 20
    held = set(dm.holdout_dataset.indices)
    assert not held & set(dm.train_dataset.indices) and sorted([*held, *dm.train_dataset.indices]) == list(range(80))
    assert sorted(i for step in trained.index for i in step) == list(range(60))  # indices number the rest
    table = irreducible.table
    assert table.shape == (60,) and table.dtype == torch.float32 and bool(torch.isfinite(table).all())
    x, y = blobs(80)[dm.train_dataset.indices]
    expected = torch.nn.functional.cross_entropy(irreducible.model.eval()(x), y, reduction="none")
    assert torch.allclose(table, expected.detach(), atol=1e-5)
    assert irreducible.cost_units == 3 * 2 * 20 + 60  # two epochs over the holdout, one pass over the rest


def test_a_saved_table_for_other_data_is_refused_naming_both_lengths(tmp_path):
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    _fit(tmp_path / "a", [irreducible], dm=_dm(80, holdout_fraction=0.25), max_epochs=1)
    state = irreducible.state_dict()
    torch.save(state, tmp_path / "il.pt")
    restored = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=1)
    restored.load_state_dict(torch.load(tmp_path / "il.pt", weights_only=True))
    with pytest.raises(ValueError, match=r"for 60 training samples \(holdout 20\), but this run has 72 \(holdout 8\)"):
        _fit(tmp_path / "b", [restored], dm=_dm(80, holdout_fraction=0.1), max_epochs=1)


def test_reducible_needs_an_irreducible_loss_callback_and_a_holdout(tmp_path):
    with pytest.raises(ValueError, match=r"TopKSelection\(score='reducible'\) needs .*IrreducibleLoss"):
        _fit(tmp_path, [lp.TopKSelection()])
    with pytest.raises(ValueError, match=r"no holdout set.*holdout_fraction=0.25"):
        _fit(tmp_path, [lp.IrreducibleLoss(model=TinyClassifier()), lp.TopKSelection()])
    with pytest.raises(ValueError, match=r"`holdout_fraction` must be a finite number in \[0, 1\), got 1.0"):
        _dm(holdout_fraction=1.0)


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


def test_a_prioritized_strategy_is_refused_by_every_rule(tmp_path):
    for cb in (lp.TopKSelection(score="loss"), lp.SelectiveBackprop()):
        with pytest.raises(ValueError, match=r"got `strategy='rank'`\. Use `strategy='uniform'`"):
            _fit(tmp_path, [cb], dm=_dm(strategy="rank"))


# -------------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_two_processes_share_one_irreducible_table_and_each_rule_trains_from_its_own_presamples(tmp_path):
    ranks = run_two_processes(DDP_SCRIPT, tmp_path, timeout=240)
    assert ranks[0]["table"] == ranks[1]["table"]  # computed by shards, gathered: the same on both ranks
    assert len(ranks[0]["table"]) == 48 and all(math.isfinite(v) for v in ranks[0]["table"])
    for rule in ("topk", "selective_backprop", "importance"):
        r0, r1 = ranks[0][rule], ranks[1][rule]
        assert r0["steps"] == r1["steps"] == 6 and r0["selected"] >= 5 and r1["selected"] >= 5
        assert r0["checksum"] == pytest.approx(r1["checksum"], rel=1e-12)  # one model, kept in sync by DDP
        for rank, r in enumerate((r0, r1)):
            shard = set(range(rank, 48, 2))  # the extra presample points come from the rank's own shard
            for incoming, trained in zip(r["incoming"], r["trained"], strict=True):
                assert set(trained) <= set(incoming) | shard


@pytest.mark.parametrize("config", ["mnist1d_rho", "mnist1d_selective_backprop"])
def test_the_selection_configs_train_through_the_console_script(tmp_path, config):
    from lightning_per.cli import main

    args = [
        "fit",
        f"--config=lightning_per/examples/configs/{config}.yaml",
        f"--data.data_dir={tmp_path}",
        "--data.train_size=400",
        "--data.val_size=100",
        "--data.test_size=0",
        "--data.batch_size=20",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    cli = main(args)
    rule = [c for c in cli.trainer.callbacks if isinstance(c, (lp.TopKSelection, lp.SelectiveBackprop))][-1]
    assert cli.trainer.global_step == 3 and rule._run_selected == 3
    assert float(cli.trainer.callback_metrics["per/is_active"]) == 1.0
    if config == "mnist1d_rho":
        (irreducible,) = [c for c in cli.trainer.callbacks if isinstance(c, lp.IrreducibleLoss)]
        assert irreducible.table.shape == (300,) and len(cli.datamodule.holdout_dataset) == 100


def test_loss_tracker_prioritizes_by_reducible_loss_across_epochs(tmp_path):
    dm = _dm(80, holdout_fraction=0.25, strategy="rank")
    irreducible = lp.IrreducibleLoss(model=TinyClassifier(), max_epochs=2)
    tracker = lp.LossTracker(score="reducible")

    class LastLosses(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.last = (batch.index.clone(), outputs["per_sample_loss"].detach().clone())

    last = LastLosses()
    _fit(tmp_path, [irreducible, tracker, last], dm=dm, max_epochs=1)  # epoch 0 visits each sample once
    index, losses = last.last  # the table holds loss - irreducible loss of what was trained
    assert torch.allclose(dm.scores.scores[index], losses - irreducible.table[index], atol=1e-6)
    assert bool((dm.scores.scores < 0).any()) and dm.scores.seen == 60
    plan = lp.strategy.build_plan(dm.scores.scores, dm.strategy, 1, None, torch.Generator().manual_seed(0), 60)
    assert plan.cdf is not None and plan.stats["ess"] < 1  # a rank plan is drawn from them
    with pytest.raises(ValueError, match=r"negative score .*strategy='rank'"):  # proportional needs >= 0
        _fit(
            tmp_path,
            [lp.IrreducibleLoss(model=TinyClassifier()), lp.LossTracker(score="reducible")],
            dm=_dm(80, holdout_fraction=0.25, strategy="proportional"),
            max_epochs=1,
        )


def test_the_summary_and_the_loggers_report_what_the_selection_cost(tmp_path, caplog):
    import logging

    selection = lp.TopKSelection(presample=4, score="loss")
    with caplog.at_level(logging.INFO):
        trainer, _ = _fit(tmp_path, [selection], max_epochs=1)
    # 8 steps, each scoring a presample of 4 * 8 points without gradients and training on 8
    assert trainer.callback_metrics["per/scoring_units"] == 8 * 32
    assert trainer.callback_metrics["per/scoring_seconds"] > 0
    assert (
        "8 of 8 training steps (100%) selected from a presample; scoring cost 256 forward-sample units (1.3x the"
        in (caplog.text)
    )


def test_selective_backprop_shows_the_kept_fraction_in_the_progress_bar(tmp_path):
    trainer, _ = _fit(tmp_path, [lp.SelectiveBackprop(presample=2)], max_epochs=1)
    assert 0 < trainer.progress_bar_metrics["per/kept_fraction"] <= 1
