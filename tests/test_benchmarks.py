"""Smoke runs of the benchmark scripts at tiny sizes: they run end to end and write the JSON the issue specifies.

The figures themselves are not checked here (speed goals live in the benchmarks, never in timed unit tests).
"""

import json
import logging

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")

import torch

from benchmarks import (
    gradient_variance,
    label_noise,
    overhead,
    results_page,
    run_all,
    select_defaults,
    time_to_quality,
)

LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")


@pytest.fixture(autouse=True)
def _restore_logging():
    """The scripts quiet Lightning's loggers for good (they are programs); later tests need them back."""
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_overhead_writes_the_four_ratios_and_a_plot(tmp_path):
    out = tmp_path / "overhead.json"
    overhead.main(["--steps", "50", "--warmup", "10", "--train-size", "200", "--batch-size", "20", "--out", str(out)])
    data = json.loads(out.read_text())
    ratios = {"tracker", "importance_uniform_phase", "importance_active", "importance_active_theory"}
    assert set(data["ratio"]) == set(data["ratio_epoch_blocks"]) == ratios  # paired steps, and epoch blocks
    assert data["ratio"]["importance_active_theory"] == pytest.approx(2.0)
    assert data["blocks"] == 4 and all(v > 0 for v in data["ratio"].values())
    assert "median over the timed steps" in data["protocol"] and "importance_active" in data["protocol"]
    assert data["env"]["torch"] and out.with_suffix(".png").exists()
    for setup in overhead.SETUPS:  # a step is its body plus what runs between two bodies
        body, between = data["step_body_ms"][setup], data["between_steps_ms"][setup]
        assert body > 0 and between > 0 and body + between == pytest.approx(data["step_ms"][setup], rel=0.5)


def test_overhead_refuses_too_few_steps_for_one_timed_epoch(tmp_path, capsys):
    with pytest.raises(SystemExit):
        overhead.main(["--steps", "60", "--train-size", "4000", "--out", str(tmp_path / "o.json")])
    assert "use --steps >= 80" in capsys.readouterr().err


def test_time_to_quality_and_its_results_section(tmp_path):
    out = tmp_path / "time_to_quality.json"
    args = ["--budget-s", "0.4", "--seeds", "1", "--methods", "prune", "importance", "--evals", "2"]
    time_to_quality.main([*args, "--out", str(out)])
    data = json.loads(out.read_text())
    assert set(data["methods"]) == {"uniform", "prune", "importance"}  # uniform always runs alongside
    budget = 3 * 4000 * data["settings"]["max_epochs"]  # equal compute: the cost of max_epochs uniform epochs
    for method in data["methods"].values():
        assert {"final_train_loss", "final_test_acc", "cost_to_uniform_acc", "seconds_to_uniform_acc"} <= set(method)
        assert 0 < method["curves"]["0"][-1]["cost"] <= budget + 400 * 3  # stops within one step of the budget
    assert data["methods"]["uniform"]["cost_to_uniform_acc_ratio"]["mean"] == 1.0  # against its own first reach
    assert "Reported per method" in data["protocol"]
    assert 0 <= data["methods"]["importance"]["importance_fraction"]["mean"] <= 1
    assert out.with_suffix(".png").exists()
    page = run_all.render(tmp_path)
    assert "| importance |" in page and "### Time to quality" in page


def test_free_scoring_charges_an_importance_step_like_a_uniform_one():
    import argparse

    data = time_to_quality.splits(None)
    steps = {}
    for free in (False, True):
        args = argparse.Namespace(lr=0.1, batch_size=100, presample=3, accelerator="cpu", evals=1, free_scoring=free)
        budget = time_to_quality.run("importance", 0, args, data, 1, {"tau_th": 1e-9})  # one epoch's cost
        assert budget.importance_steps > 0
        steps[free] = budget.steps
    assert steps[True] == 40  # the whole epoch: importance steps cost 300 like uniform ones
    assert steps[False] < 40  # charged 600 each, the budget runs out before the epoch ends


def test_the_summary_survives_a_uniform_run_that_ends_where_it_started():
    """A diverged uniform run ends at chance, which the first evaluation already had: no cost ratio, no crash."""
    from types import SimpleNamespace

    def result(accs):
        curve = [
            {"cost": 300.0 * i, "seconds": i, "test_acc": a, "val_acc": a, "train_loss": 1.0}
            for i, a in enumerate(accs)
        ]
        return SimpleNamespace(curve=curve, importance_steps=0, steps=len(accs))

    runs = {"uniform": [result([0.1, 0.5, 0.1])], "rank": [result([0.1, 0.6, 0.7])]}
    summary = time_to_quality.summarize(runs, [0])
    assert summary["uniform"]["cost_to_uniform_acc_ratio"] is None
    assert summary["rank"]["cost_to_uniform_acc"]["mean"] == 0.0  # reached at once, and reported


def test_gradient_variance_is_exact_against_sampled_draws():
    """The closed-form mean squared error of a weighted draw matches 20,000 sampled draws within 2%."""
    gen = torch.Generator().manual_seed(0)
    gradients = torch.randn(6, 5, generator=gen) * torch.arange(1.0, 7.0)[:, None]
    p = torch.rand(6, generator=gen, dtype=torch.float64) + 0.1
    p /= p.sum()
    exact = gradient_variance.mean_squared_error(gradients, p, 2)
    idx = torch.multinomial(p.expand(20_000, 6), 2, replacement=True, generator=gen)  # (draws, 2)
    estimates = (gradients.double()[idx] / (6 * p[idx, None])).mean(1)
    sampled = (estimates - gradients.double().mean(0)).pow(2).sum(1).mean()
    assert float(sampled) == pytest.approx(exact, rel=0.02)
    # a point never drawn (p = 0) adds its share of the mean gradient as a squared bias, not an infinity
    q = torch.tensor([0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    bias = gradients[2:].double().sum(0) / 6
    assert gradient_variance.mean_squared_error(gradients, q, 10**9) == pytest.approx(float(bias.pow(2).sum()))
    # the optimal distribution (p proportional to the norm) never does worse than uniform
    norms = gradients.norm(dim=1).double()
    uniform = torch.full((6,), 1 / 6, dtype=torch.float64)
    optimal = gradient_variance.mean_squared_error(gradients, norms / norms.sum(), 2)
    assert optimal <= gradient_variance.mean_squared_error(gradients, uniform, 2)


def test_gradient_variance_writes_its_probes_and_its_results_section(tmp_path):
    out = tmp_path / "gradient_variance.json"
    args = ["--epochs", "2", "--probes", "2", "--presamples", "1", "--seeds", "1", "--evals", "1"]
    gradient_variance.main([*args, "--out", str(out)])
    data = json.loads(out.read_text())
    assert len(data["summary"]) == 2 and data["summary"][0]["progress"] < data["summary"][1]["progress"]
    point = data["points"]["0"][0]
    assert 0 < point["noise_share"] < 1 and point["spearman_optimal"] == pytest.approx(1.0)
    assert point["reduction_optimal"] >= point["reduction_ce"] * 0.999  # nothing beats the true norms
    assert out.with_suffix(".png").exists() and "Reported per probe" in data["protocol"]
    assert "### Gradient variance" in run_all.render(tmp_path)


def test_render_only_writes_the_whole_results_page_and_runs_nothing(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("--render-only ran a benchmark")

    monkeypatch.setattr(run_all.subprocess, "run", refuse)
    page = tmp_path / "README.md"
    run_all.main(["--render-only", "--out", str(tmp_path / "empty"), "--page", str(page)])
    text = page.read_text()
    assert text.startswith("# Benchmark results") and "make bench" in text and "--render-only" in text
    assert "## Protocol in brief" in text and "## Long runs" in text
    for _, command, _, _ in results_page.LONG_RUNS:
        assert command in text  # every long run is listed with its command, its JSON or not
    assert "### Overhead" not in text and "### Redundancy" not in text  # no JSON, no section


class _Untouchable:
    """A data set that fails the test as soon as anything reads it."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")


def test_select_defaults_never_evaluates_the_test_split(tmp_path, monkeypatch):
    real = time_to_quality.splits
    monkeypatch.setattr(select_defaults, "splits", lambda data_dir: {**real(data_dir), "test": _Untouchable()})
    out = tmp_path / "select.json"
    args = ["--budget-s", "0.3", "--seeds", "1", "--evals", "1", "--out", str(out)]
    select_defaults.main([*args, "--candidates", "proportional:beta=1.0,beta_final=None", "importance:presample=5"])
    data = json.loads(out.read_text())
    assert set(data["candidates"]) == {"uniform", "proportional:beta=1.0,beta_final=None", "importance:presample=5"}
    assert "test_acc" not in json.dumps(data)
    with pytest.raises(SystemExit, match="unknown method"):
        select_defaults.parse_candidate("bogus:alpha=1")


def test_the_turnstile_runs_threads_one_step_at_a_time_in_a_fixed_cycle():
    import threading

    names = ["a", "b", "c"]
    turnstile = overhead.Turnstile(names)
    order = []
    steps = {"a": 4, "b": 2, "c": 3}  # b leaves the cycle early; the others go on without it

    def work(name):
        turnstile.wait(name)
        for k in range(steps[name]):
            order.append(name)
            if k + 1 < steps[name]:
                turnstile.pass_on(name)
                turnstile.wait(name)
        turnstile.pass_on(name, leave=True)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert order == ["a", "b", "c", "a", "b", "c", "a", "c", "a"]


def test_label_noise_counts_the_draws_on_flipped_labels(tmp_path):
    out = tmp_path / "label_noise.json"
    args = ["--train-size", "300", "--epochs", "2", "--seeds", "1", "--lrs", "0.1", "--out", str(out)]
    label_noise.main(args)
    data = json.loads(out.read_text())
    assert set(data["methods"]) == set(label_noise.METHODS)
    for method in data["methods"].values():
        for key in ("noisy_draw_share", "noisy_weight_share"):
            assert 0 <= method[key]["mean"] <= 1
        run = method["runs"]["0"]
        assert len(run["epochs"]) == 2 and all(0 <= e["noisy_draw_share"] <= 1 for e in run["epochs"])
        assert {"final_test_acc", "best_test_acc", "final_val_acc_noisy", "compute_ratio"} <= set(method)
    uniform = data["methods"]["uniform"]
    assert uniform["noisy_draw_share"]["mean"] == pytest.approx(0.3, abs=0.05)  # each sample once an epoch
    assert uniform["compute_ratio"]["mean"] == 1.0 and data["methods"]["prune"]["compute_ratio"]["mean"] < 1.0
    assert "test" not in json.dumps(data["lr_selection_val_acc"]) and "mislabelled" in data["protocol"]
    assert out.with_suffix(".png").exists()


def test_label_noise_flips_exactly_the_fraction_to_other_classes():
    y = torch.arange(1000) % 10
    noisy, flipped = label_noise.flip_labels(y, 0.3, 10, seed=0)
    assert int(flipped.sum()) == 300
    assert bool((noisy[flipped] != y[flipped]).all()) and bool((noisy[~flipped] == y[~flipped]).all())
    assert torch.equal(noisy, label_noise.flip_labels(y, 0.3, 10, seed=0)[0])  # fixed per seed


def test_the_gpu_check_runs_its_cpu_smoke_version_and_writes_one_folder(tmp_path):
    from benchmarks import gpu_check

    gpu_check.main(["--smoke", "--out", str(tmp_path), "--tests-matching", "reducible"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["smoke"] and summary["failed"] == []
    assert summary["parts"]["tests"]["summary"].startswith("1 passed")
    ratio = json.loads((tmp_path / "cost_ratio.json").read_text())
    assert ratio["B"] == 3 * ratio["b"] and ratio["ratio_cost_model"] == 1.0 and ratio["ratio_measured"] > 0
    assert set(summary["parts"]["overhead"]["ratio"]) >= {"tracker", "importance_active"}
    assert set(summary["parts"]["long_training"]["ratio"]) == {"uniform", "importance", "importance_clock"}
    assert (tmp_path / "tests.txt").exists() and (tmp_path / "long_training.png").exists()
    results = tmp_path / "page"  # what run_all reads: <out>/gpu_check/
    (results / "gpu_check").mkdir(parents=True)
    for name in ("summary.json", "overhead.json", "long_training.json"):
        (results / "gpu_check" / name).write_text((tmp_path / name).read_text())
    assert "## GPU check" not in run_all.render(results)  # a CPU smoke run is not shown as GPU results
    (results / "gpu_check" / "summary.json").write_text(json.dumps({**summary, "smoke": False}))
    page = run_all.render(results)
    assert "## GPU check" in page and "### Overhead on the GPU" in page and "### Long training on the GPU" in page


def test_replay_buffers_reports_every_operation_and_its_ratio_to_randint(tmp_path):
    from benchmarks import replay_buffers

    out = tmp_path / "replay_buffers.json"
    args = ["--capacities", "1000", "20000", "--calls", "20", "--warmup", "2", "--feature-dim", "4"]
    threads = torch.get_num_threads()
    try:
        replay_buffers.main([*args, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script measures on one thread
    data = json.loads(out.read_text())
    ops = {"prioritized_draw_us", "priority_update_us", "uniform_draw_us", "insert_us", "randint_us"}
    assert set(data["capacity"]) == {"1000", "20000"}
    for figures in data["capacity"].values():
        assert ops <= set(figures) and all(v > 0 for v in figures.values())
    assert data["ratio_to_randint"]["1000"]["insert_us"] == pytest.approx(
        data["capacity"]["1000"]["insert_us"] / data["capacity"]["1000"]["randint_us"], rel=0.02
    )
    assert data["settings"]["batch_size"] == 256 and data["settings"]["torch_threads"] == 1
    assert "median" in data["protocol"] and data["env"]["torch"] and out.with_suffix(".png").exists()
    assert "### Replay buffers" in run_all.render(tmp_path)


def test_the_continual_section_counts_mer_replays_under_either_setting_name(tmp_path):
    row = {
        "acc": 0.5,
        "acc_std": 0.1,
        "bwt": -0.2,
        "bwt_std": 0.05,
        "diag": 0.9,
        "diag_std": 0.01,
        "steps_per_batch": 1,
    }
    settings = {"model": "MLP", "batch_size": 10, "memories": 200, "sweep_memories": [50, 200]}
    before = {"replay_batch_size": 10, "beta": 0.3, "gamma": 1.0}  # k = replays + the incoming batch
    after = {"replay_batch_size": 9, "reptile_beta": 0.3, "reptile_gamma": 1.0}  # the replays alone
    for mer in (before, after):
        mer = {**mer, "variant": "batch", "batches_per_example": 5, "step_batch_size": 5}
        payload = {
            "settings": {**settings, "er": {"replay_batch_size": 10}, "mer": mer},
            "mer_steps_per_batch": 20,
            "env": {"seeds": [0, 1, 2]},
            "scenarios": {"split_digits/class_il": {"rows": {"er": row, "mer": row, "er_m50": row}}},
        }
        (tmp_path / "continual.json").write_text(json.dumps(payload))
        page = run_all.render(tmp_path)
        assert "`replay_batch_size=9` (the paper's `k = 10`)" in page and "`reptile_beta=0.3`" in page
        assert "| split_digits/class_il | MER | 1 |" in page and "| split_digits/class_il | 0.500 ± 0.100 |" in page


NOISY_TINY = ["--signals", "400", "--budget", "6000", "--seeds", "2", "--noise", "0.3", "--il-epochs", "1"]


def test_noisy_labels_gives_every_method_the_same_compute_and_compares_it_to_uniform(tmp_path):
    from benchmarks import noisy_labels

    out = tmp_path / "noisy_labels.json"
    methods = ["topk_reducible", "rank_reducible", "selective_backprop"]
    noisy_labels.main([*NOISY_TINY, "--lrs", "0.05", "0.1", "--evals", "3", "--methods", *methods, "--out", str(out)])
    data = json.loads(out.read_text())
    table = data["noise"]["0.3"]
    assert set(table["methods"]) == {"uniform", *methods}  # uniform always runs alongside
    irreducible_cost = 3 * 1 * 75 + 225  # one epoch over the 75 held-out signals, one pass over the other 225
    for name, method in table["methods"].items():
        assert {"mean", "std"} <= set(method["final_test_acc"]) and {"mean", "std"} <= set(method["best_test_acc"])
        chosen = method["lr_selection_val_acc"]  # validation accuracies only: the test split chooses nothing
        assert set(chosen) == {"0.05", "0.1"} and chosen[str(method["lr"])] == max(chosen.values())
        assert method["reached_target"] == sum(c is not None for c in method["cost_to_target_per_seed"])
        for run in method["runs"].values():
            curve = run["curve"]
            assert run["irreducible_cost"] == (irreducible_cost if "reducible" in name else 0)
            assert curve[0]["cost"] == run["irreducible_cost"] and curve[-1]["cost"] == run["cost"]
            assert 6000 <= run["cost"] < 6000 + 10 * 32 + 3 * 32  # stops after the step that spends the budget
            assert 0 <= run["noisy_trained_share"] <= 1 and run["best_test_acc"] >= run["final_test_acc"]
            trained = 3 * run["trained_points"]
            if name == "topk_reducible":  # B = 10 b scored without gradients, b trained, on every step
                assert run["cost"] - irreducible_cost == 13 * run["trained_points"]
                assert run["selected_step_fraction"] == 1.0
                assert run["irreducible_model"]["holdout_noise_fraction"] == pytest.approx(0.3, abs=0.1)
            elif name == "selective_backprop":
                assert run["cost"] > trained  # the presample's forward besides the points kept
            else:
                assert run["cost"] - run["irreducible_cost"] == trained
    assert table["methods"]["uniform"]["final_test_acc_diff_points"]["mean"] == 0.0
    assert {"topk_reducible_5_points_above_uniform_final", "diagnostics"} <= set(table["goals"])
    assert "forward-sample units" in data["protocol"] and out.with_suffix(".png").exists()
    page = run_all.render(tmp_path)
    assert "### Noisy labels" in page and "**30% of training labels flipped**" in page and "| topk_reducible |" in page


def test_noisy_labels_auc_counts_ties_as_half():
    from benchmarks import noisy_labels

    assert noisy_labels.auc(torch.tensor([2.0, 3.0]), torch.tensor([1.0, 2.0])) == 0.875
    assert noisy_labels.auc(torch.tensor([1.0]), torch.tensor([])) is None


@pytest.mark.slow
def test_noisy_labels_results_do_not_depend_on_the_number_of_workers(tmp_path):
    from benchmarks import noisy_labels

    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        args = [*NOISY_TINY, "--lrs", "0.05", "--evals", "2", "--methods", "topk_reducible"]
        noisy_labels.main([*args, "--workers", str(workers), "--out", str(out)])
        methods = json.loads(out.read_text())["noise"]["0.3"]["methods"]
        runs[workers] = {m: [r["curve"] for r in methods[m]["runs"].values()] for m in methods}
    assert runs[1] == runs[2]


IMBALANCE_TINY = ["--signals", "4000", "--largest", "100", "--val-per-class", "20", "--test-per-class", "50"]


def test_imbalance_sizes_fall_geometrically_and_the_evaluation_splits_are_balanced():
    from benchmarks import imbalance

    assert imbalance.class_sizes(2000, 100) == [2000, 1199, 719, 431, 258, 155, 93, 56, 33, 20]
    assert imbalance.class_sizes(2000, 10)[-1] == 200
    data = imbalance.splits(4000, 10.0, 100, 20, 50, None)
    assert torch.bincount(data["train"].tensors[1]).tolist() == imbalance.class_sizes(100, 10)
    assert torch.bincount(data["val"].tensors[1]).tolist() == [20] * 10
    assert torch.bincount(data["test"].tensors[1]).tolist() == [50] * 10


def test_imbalance_gives_every_method_the_same_compute_and_records_class_draws_and_weights(tmp_path):
    from benchmarks import imbalance

    out = tmp_path / "imbalance.json"
    methods = ["proportional_cb_biased", "deferred_balanced", "topk_reducible"]
    args = ["--ratios", "10", "--budget", "20000", "--seeds", "1", "--lrs", "0.1", "--il-epochs", "1"]
    imbalance.main([*IMBALANCE_TINY, *args, "--evals", "2", "--methods", *methods, "--out", str(out)])
    data = json.loads(out.read_text())
    table = data["ratio"]["10"]
    assert set(table["methods"]) == {"uniform", *methods}  # uniform always runs alongside
    for name, method in table["methods"].items():
        assert set(method["lr_selection_val_balanced_acc"]) == {"0.1"}  # validation accuracies only
        for run in method["runs"].values():
            assert 20000 <= run["cost"] < 20000 + 13 * 64  # stops after the step that spends the budget
            trained = sum(run["class_sizes_trained"])  # topk_reducible holds a quarter out for its irreducible loss
            held = sum(imbalance.class_sizes(100, 10)) - trained
            assert held == (round(0.25 * (trained + held)) if name == "topk_reducible" else 0)
            assert run["irreducible_cost"] == 3 * 1 * held + (trained if held else 0)  # 1 epoch, then one pass
            assert 0 <= run["final_test_worst_acc"] <= run["final_test_balanced_acc"] <= 1
    uniform, biased = table["methods"]["uniform"], table["methods"]["proportional_cb_biased"]
    # shuffled passes, the last one cut short by the budget
    assert uniform["draw_share"] == pytest.approx(uniform["frequency_share"], abs=0.01)
    assert biased["weight_share"] == pytest.approx(biased["draw_share"])  # beta = 0: every weight is 1
    assert biased["draw_share"][-1] > 2 * biased["frequency_share"][-1]  # the class factor favours the tail
    deferred = table["methods"]["deferred_balanced"]["runs"]["0"]
    switch = deferred["deferred_from_epoch"]
    assert 0 < switch < deferred["scheduled_epochs"]
    assert deferred["epochs"][switch - 1]["draws"] == imbalance.class_sizes(100, 10)  # uniform before the switch
    assert deferred["epochs"][switch]["draws"][-1] > 3 * imbalance.class_sizes(100, 10)[-1]  # balanced after
    assert uniform["balanced_acc_diff_points"]["mean"] == 0.0 and "met" in table["goals"]
    assert "Reported per ratio" in data["protocol"] and out.with_suffix(".png").exists()
    page = run_all.render(tmp_path)
    assert "### Imbalance" in page and "**Imbalance ratio 10**" in page and "| deferred_balanced |" in page


def test_redundancy_reports_the_compute_prune_saves_against_uniform(tmp_path):
    from benchmarks import redundancy

    out = tmp_path / "redundancy.json"
    sizes = ["--train-size", "3000", "--val-size", "500", "--test-size", "500", "--train-eval", "500"]
    args = ["--epochs", "2", "--seeds", "1", "--lrs", "0.1", "0.2", "--evals", "4", "--methods", "prune", "prune_r0.9"]
    redundancy.main([*sizes, *args, "--out", str(out)])
    data = json.loads(out.read_text())
    methods = data["budgets"]["2"]["methods"]
    assert set(methods) == {"uniform", "prune", "prune_r0.9"}
    budget = 3 * 3000 * 2
    for method in methods.values():
        assert set(method["lr_selection_val_acc"]) == {"0.1", "0.2"}
        assert method["epoch_sizes"][0] == 1.0  # epoch 0 is a full uniform pass
        assert 0 < method["curves"]["0"][-1]["cost"] <= budget
    assert methods["uniform"]["compute_used_ratio"]["mean"] == 1.0
    assert methods["uniform"]["epoch_sizes"] == [1.0, 1.0]
    saved = [methods[m]["compute_used_ratio"]["mean"] for m in ("prune", "prune_r0.9")]
    assert saved[1] < saved[0] < 1.0  # a larger prune ratio trains fewer samples
    assert set(data["budgets"]["2"]["goals"]["met"]) == {"prune", "prune_r0.9"}
    assert "Reported per budget" in data["protocol"] and out.with_suffix(".png").exists()
    page = run_all.render(tmp_path)
    assert "### Redundancy" in page and "**Budget: 2 uniform epochs of compute**" in page and "| prune_r0.9 |" in page
