"""The benchmark protocol (benchmarks/protocol): learning-rate search, seeds, time to target, intervals, compute.

The search and the protocol loop are checked on synthetic objectives, not on training; one tiny Lightning fit checks
the compute a selection step and an auxiliary model are charged.
"""

import argparse
import math

import pytest
import torch

from benchmarks.protocol import (
    SeedPlan,
    Setting,
    Study,
    Target,
    describe,
    first_reach,
    is_close,
    paired,
    render,
    rotation,
    search_lr,
    step_cost,
    t975,
    time_to_target,
)
from benchmarks.protocol.records import RunStore, runs_path
from benchmarks.protocol.runner import run_study
from benchmarks.protocol.schedules import lr_factor
from benchmarks.protocol.stats import mean_of


def peaked(at: float):
    """A validation score that peaks at ``at`` on a log scale, and the values it was asked for."""
    asked = []

    def score(lr):
        asked.append(lr)
        return -abs(math.log2(lr / at))

    return score, asked


def test_an_edge_choice_extends_the_grid_until_it_is_interior():
    score, asked = peaked(0.8)
    choice = search_lr(score, [0.05, 0.1, 0.2])
    assert choice.grid == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6] and asked[3:] == [0.4, 0.8, 1.6]
    assert choice.chosen == 0.8 and not choice.at_edge
    score, asked = peaked(0.01)
    down = search_lr(score, [0.05, 0.1, 0.2])
    assert down.grid[:3] == [0.00625, 0.0125, 0.025] and down.chosen == 0.0125 and not down.at_edge


def test_a_choice_still_at_the_edge_at_the_cap_is_flagged():
    choice = search_lr(lambda lr: lr, [0.1, 0.2, 0.4], max_points=5)  # better and better: never interior
    assert choice.grid == [0.1, 0.2, 0.4, 0.8, 1.6] and choice.chosen == 1.6 and choice.at_edge
    record = choice.record()
    assert record["at_edge"] is True and record["chosen"] == 1.6 and set(record["selection_metric"]) == {
        "0.1", "0.2", "0.4", "0.8", "1.6"
    }  # fmt: skip


def test_ties_go_to_the_smaller_rate_and_a_diverged_rate_ranks_last():
    scores = {0.05: 0.9, 0.1: 0.95, 0.2: 0.95, 0.4: math.nan}
    choice = search_lr(scores.__getitem__, [0.05, 0.1, 0.2, 0.4])
    assert choice.chosen == 0.1 and not choice.at_edge
    lower = search_lr({0.05: 1.0, 0.1: 0.5, 0.2: 0.2}.get, [0.05, 0.1, 0.2], higher_is_better=False, max_points=3)
    assert lower.chosen == 0.2 and lower.at_edge  # a loss: the lowest wins; the cap of 3 stops the extension


def test_a_single_rate_is_fixed_not_searched_and_counts_as_at_the_edge():
    choice = search_lr(lambda lr: pytest.fail("a fixed rate is not scored"), [0.1])
    assert choice.chosen == 0.1 and choice.at_edge


def test_selection_and_report_seeds_are_disjoint():
    plan = SeedPlan()
    assert not set(plan.selection) & set(plan.report + plan.extra) and len(plan.selection) == 2
    with pytest.raises(ValueError, match="disjoint"):
        SeedPlan(selection=(0, 1), report=(1, 2, 3))
    assert rotation(["a", "b", "c"], 1) == ["b", "c", "a"] and rotation(["a", "b", "c"], 3) == ["a", "b", "c"]
    assert is_close([0.1, -0.2, 0.05]) and not is_close([1.0, 1.1, 0.9]) and not is_close([0.0])


def test_time_to_target_on_a_synthetic_curve():
    # loss = exp(-t / 10) sampled every 10 s (cost = 100 t): it reaches 1e-2 at t = 10 ln 100 = 46.05 s
    curve = [{"seconds": t, "cost": 100.0 * t, "loss": math.exp(-t / 10), "acc": t / 100} for t in range(0, 101, 10)]
    hit = first_reach(curve, "loss", 1e-2, higher_is_better=False)
    assert hit["seconds"] == pytest.approx(10 * math.log(100)) and hit["cost"] == pytest.approx(1000 * math.log(100))
    assert first_reach(curve, "acc", 0.55, True)["seconds"] == pytest.approx(55.0)  # linear for an accuracy
    assert first_reach(curve, "acc", 1.5, True) is None and first_reach(curve, "loss", 2.0, False)["seconds"] == 0
    slow = [{**p, "seconds": 2 * p["seconds"]} for p in curve]
    result = time_to_target({0: curve, 1: slow}, Target("l", "loss", 1e-2, False))
    assert result["seconds"]["n_reached"] == 2 and result["seconds"]["mean"] == pytest.approx(15 * math.log(100))
    per_seed = time_to_target({0: curve, 1: slow}, Target("u", "acc", None), levels={0: 0.3, 1: 2.0})
    assert per_seed["seconds"]["n_reached"] == 1 and per_seed["per_seed"]["1"] is None


def test_a_seed_that_never_reaches_the_target_counts_at_its_bound_and_at_most_1_not_dropped():
    from benchmarks.protocol.summary import speedups

    def curve(end, rate):  # loss = exp(-rate * t) until ``end`` seconds, cost = 10 t
        return [{"seconds": t, "cost": 10.0 * t, "loss": math.exp(-rate * t)} for t in range(0, end + 1, 10)]

    target = Target("l", "loss", math.exp(-5), False)
    uniform = {0: curve(100, 0.05), 1: curve(100, 0.05)}  # reaches it at 100 s on both seeds
    method = {0: curve(100, 0.1), 1: curve(80, 0.05)}  # seed 0 at 50 s; seed 1 stops at 80 s, short of it
    mine, base = (time_to_target(c, target) for c in (method, uniform))
    out = speedups(mine, base, {s: {"curve": c} for s, c in method.items()})
    assert out["bounded"] == [1]  # seed 1: its bound 100 / 80 = 1.25, but it never got there: at most 1
    assert out["seconds"]["n"] == 2 and out["seconds"]["mean"] == pytest.approx((2.0 + 1.0) / 2)
    assert out["compute"]["mean"] == pytest.approx((2.0 + 1.0) / 2)
    slow = {0: curve(100, 0.1), 1: curve(200, 0.02)}  # seed 1 never reaches it in 200 s: its bound 100 / 200
    out = speedups(time_to_target(slow, target), base, {s: {"curve": c} for s, c in slow.items()})
    assert out["seconds"]["mean"] == pytest.approx((2.0 + 0.5) / 2)
    never = speedups(time_to_target({0: curve(80, 0.05)}, target), base, {0: {"curve": curve(80, 0.05)}})
    assert never["seconds"] is None and never["compute"] is None  # no seed reached it: not a speed-up at all


def test_the_interval_is_a_t_interval_over_seeds():
    stats = describe([1.0, 2.0, 3.0])
    assert stats["mean"] == 2.0 and stats["std"] == 1.0 and stats["n"] == 3
    assert stats["ci95"] == pytest.approx([2 - 4.303 / math.sqrt(3), 2 + 4.303 / math.sqrt(3)])
    assert describe([5.0])["ci95"] is None
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 10, 30):
        assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3)
    diff = paired({0: 1.0, 1: 3.0, 2: 5.0}, {0: 0.5, 1: 2.0, 7: 9.0})  # only the seeds both have
    assert diff["n"] == 2 and diff["mean"] == pytest.approx(0.75)
    assert paired({0: 2.0}, {0: 4.0}, ratio=True)["mean"] == 0.5


def test_schedules():
    assert lr_factor("cosine", 0.0) == 1.0 and lr_factor("cosine", 1.0) == pytest.approx(0.0)
    assert [lr_factor("step", p) for p in (0.0, 0.49, 0.5, 0.8, 1.0)] == [1.0, 1.0, 0.2, 0.04, 0.04]
    with pytest.raises(ValueError, match="schedule"):
        lr_factor("linear", 0.5)


def test_the_budget_charges_the_presample_and_the_auxiliary_model():
    from lightning.pytorch import Callback
    from torch.utils.data import TensorDataset

    from benchmarks.protocol.methods import RunSpec, train_method

    assert step_cost(32, 320) == 416 and step_cost(10) == 30
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(160, 40, generator=gen), torch.randint(10, (160,), generator=gen))
    spec = RunSpec(data, batch_size=8, width=4, evals=2, holdout_fraction=0.25, il_epochs=1)
    steps = []

    class Steps(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            steps.append(int(batch.batch_size))

    evaluate = lambda module: {"val_acc": 0.5}  # noqa: E731
    meter = train_method("topk_reducible", 0, 0.05, 3000.0, spec, lambda dm: (evaluate, [Steps()]))
    aux = 3 * 1 * 40 + 120  # one epoch on the 40 held-out samples, one pass over the 120 trained
    assert meter.aux_cost == aux and meter.curve[0]["cost"] == aux and meter.curve[-1]["cost"] == meter.cost
    assert meter.cost == aux + sum(step_cost(b, 10 * 8) for b in steps)  # B = 10 b scored, b trained, every step
    assert 3000 <= meter.cost < 3000 + step_cost(8, 80)  # stops after the step that spends the budget
    assert meter.record()["selected_step_fraction"] == 1.0 and meter.curve[-1]["seconds"] > 0


class Synthetic(Study):
    """A study without training: a run's metrics are a function of its method, rate and seed."""

    name = "synthetic"
    reported = ("test_acc", "val_acc")
    default_methods = all_methods = ("uniform", "good", "level", "saver")

    def __init__(self):
        self.calls = []

    def settings(self, args):
        return [Setting("s", "synthetic", 1000.0, 10)]

    def run(self, args, setting, method, seed, lr, budget):
        self.calls.append((method, seed, lr, budget))
        best = {"uniform": 0.1, "good": 0.4, "level": 0.1, "saver": 0.1}[method]
        acc = 0.9 - 0.05 * abs(math.log2(lr / best)) + {"good": 0.02, "level": 0.001 * (-1) ** seed}.get(method, 0)
        acc -= 0.01 * (budget < 1000)
        cost = 600.0 if method == "saver" else budget
        curve = [{"cost": 0.0, "seconds": 0.0, "val_acc": 0.1, "test_acc": 0.1},
                 {"cost": cost, "seconds": cost / 100, "val_acc": acc, "test_acc": acc + 0.001 * seed}]  # fmt: skip
        return {"curve": curve, "cost": cost, "seconds": cost / 100}


def _args(tmp_path, **overrides):
    args = dict(methods=["good", "level", "saver"], lrs=[0.05, 0.1, 0.2], lr_max_points=7, selection_seeds=[1000, 1001],
                seeds=3, extra_seeds=2, out=tmp_path / "synthetic.json", summarize_only=False)  # fmt: skip
    return argparse.Namespace(**{**args, **overrides})


def test_the_protocol_chooses_on_selection_seeds_reports_on_others_and_adds_the_sceptics_baselines(tmp_path):
    study = Synthetic()
    data = run_study(study, _args(tmp_path))
    methods = data["tables"]["s"]["methods"]
    selection = {seed for _, seed, _, _ in study.calls[:6]}
    assert selection == {1000, 1001}  # the first runs choose uniform's rate, on the selection seeds only
    assert methods["good"]["lr"] == {**methods["good"]["lr"], "chosen": 0.4, "at_edge": False}  # extended upwards
    assert methods["good"]["seeds"] == {"selection": [1000, 1001], "report": [0, 1, 2]}
    assert methods["level"]["seeds"]["report"] == [0, 1, 2, 3, 4]  # within one std of uniform: 5 seeds
    report = [(m, s) for m, s, _, b in study.calls if s in (0, 1, 2) and b == 1000.0]
    assert report[:4] == [("uniform", 0), ("good", 0), ("level", 0), ("saver", 0)]  # interleaved, rotating
    assert report[4:8] == [("good", 1), ("level", 1), ("saver", 1), ("uniform", 1)]
    matched = methods["uniform_at_saver"]  # saver used 0.6 of the budget: uniform gets the same compute
    assert matched["matches"] == "saver" and matched["budget"] == 600.0 and matched["compute_fraction"]["mean"] == 0.6
    assert methods["saver"]["vs_matched_uniform"]["test_acc"]["mean"] == pytest.approx(0.01)
    assert methods["good"]["vs_uniform"]["test_acc"]["mean"] == pytest.approx(0.02)
    hit = methods["uniform"]["time_to_target"]["uniform_final"]
    assert hit["seconds"]["n_reached"] == 5 and methods["good"]["early_stopped"]["test_acc"]["n"] == 3
    assert runs_path(tmp_path / "synthetic.json").exists() and data["pending"] == []


def test_a_killed_study_resumes_from_its_store_and_summarize_only_trains_nothing(tmp_path):
    first = Synthetic()
    run_study(first, _args(tmp_path))
    store = RunStore(runs_path(tmp_path / "synthetic.json"))
    assert len(store) == len(first.calls)
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join(lines[:-5]) + "\n" + lines[-5][:20])  # killed while writing a run
    again = Synthetic()
    run_study(again, _args(tmp_path))
    assert again.calls == first.calls[-5:]  # only the lost runs run again
    none = Synthetic()
    data = run_study(none, _args(tmp_path, summarize_only=True))
    assert none.calls == [] and set(data["tables"]) == {"s"}
    empty = run_study(Synthetic(), _args(tmp_path / "other", summarize_only=True))
    assert empty == {}


def test_a_selection_method_that_never_switched_on_is_said_to_be_uniform_not_compared():
    def method(*fractions, diff=0.0):
        runs = {str(i): {"selected_step_fraction": f, "tau_peak": 1.2 + i} for i, f in enumerate(fractions)}
        return {"runs": runs, "vs_uniform": {"test_acc": {"mean": diff, "std": abs(diff)}, "val_acc": None}}

    said = render.never_switched_on(method(0.0, 0.0))
    assert said is not None and "never switched on" in said and "2.20" in said
    assert render.never_switched_on(method(0.0, 0.3)) is None
    assert render.never_switched_on(method(0.0, 0.0, diff=0.01)) is None  # another rate: a real comparison
    no_switch = {"runs": {"0": {"selected_step_fraction": 0.0, "tau_peak": None}}}
    assert render.never_switched_on(no_switch) is None  # a method without a tau switch (a sampling strategy)


def test_mean_of_skips_records_without_the_key_and_is_none_when_none_has_it():
    assert mean_of([{"x": 1.0}, {"x": None}, {}, {"x": 3.0}], "x") == 2.0  # older runs lack the key
    assert mean_of([{}, {"x": None}], "x") is None and mean_of([], "x") is None
