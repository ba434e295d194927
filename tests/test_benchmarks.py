"""Smoke runs of the benchmark scripts at tiny sizes: they run end to end and write the JSON the issue specifies.

The figures themselves are not checked here (speed goals live in the benchmarks, never in timed unit tests).
"""

import json
from pathlib import Path

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
from benchmarks.results_studies import BEGIN, END, planned, readme_block, which_method_block


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
    for setup in overhead.SETUPS:  # a step is split into its body and what runs between two bodies (no timing check)
        assert data["step_body_ms"][setup] > 0 and data["between_steps_ms"][setup] > 0 and data["step_ms"][setup] > 0


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
        assert budget.selected_steps > 0
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
        return SimpleNamespace(curve=curve, selected_steps=0, steps=len(accs))

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
    page, readme = tmp_path / "page.md", tmp_path / "README.md"  # never the repository's own files
    readme.write_text(f"# A README\n\n{BEGIN}\nold\n{END}\n")
    run_all.main(["--render-only", "--out", str(tmp_path / "empty"), "--page", str(page), "--readme", str(readme)])
    assert readme_block(readme.read_text()) == which_method_block(tmp_path / "empty")  # its table rewritten
    text = page.read_text()
    assert text.startswith("# Benchmark results") and "make bench" in text and "--render-only" in text
    assert "## Protocol in brief" in text and "## Long runs" in text
    for _, command, _, _ in results_page.OTHER_RUNS:
        assert command in text  # every long run is listed with its command, its JSON or not
    for _, _, command, _ in planned():
        assert command in text  # and every study of the protocol, pending while its JSON is not there
    assert "### Overhead" not in text and "**Pending**" in text  # no JSON, no section


def test_the_readme_table_is_the_one_the_committed_json_renders():
    root = Path(__file__).resolve().parents[1]
    block = readme_block((root / "README.md").read_text())
    assert block == which_method_block(root / "bench_out"), "run `python -m benchmarks.run_all --render-only`"


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
    from benchmarks.protocol.data import flip_labels

    y = torch.arange(1000) % 10
    noisy, flipped = flip_labels(y, 0.3, 10, seed=0)
    assert int(flipped.sum()) == 300
    assert bool((noisy[flipped] != y[flipped]).all()) and bool((noisy[~flipped] == y[~flipped]).all())
    assert torch.equal(noisy, flip_labels(y, 0.3, 10, seed=0)[0])  # fixed per seed


def test_the_gpu_check_runs_its_cpu_smoke_version_and_writes_one_folder(tmp_path):
    from benchmarks import gpu_check

    gpu_check.main(["--smoke", "--out", str(tmp_path), "--tests-matching", "reducible"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["smoke"] and summary["failed"] == []
    assert summary["parts"]["tests"]["summary"].startswith("1 passed")
    ratio = json.loads((tmp_path / "cost_ratio.json").read_text())
    assert ratio["B"] == 3 * ratio["b"] and ratio["ratio_cost_model"] == 1.0 and ratio["ratio_measured"] > 0
    assert set(summary["parts"]["overhead"]["ratio"]) >= {"tracker", "importance_active"}
    assert set(summary["parts"]["long_training"]["ratio"]) == {"uniform", "importance", "importance_p5"}
    assert (tmp_path / "tests.txt").exists() and (tmp_path / "long_training.png").exists()
    results = tmp_path / "page"  # what run_all reads: <out>/gpu_check/
    (results / "gpu_check").mkdir(parents=True)
    for name in ("summary.json", "overhead.json", "long_training.json"):
        (results / "gpu_check" / name).write_text((tmp_path / name).read_text())
    assert "## GPU check" not in run_all.render(results)  # a CPU smoke run is not shown as GPU results
    (results / "gpu_check" / "summary.json").write_text(json.dumps({**summary, "smoke": False}))
    page = run_all.render(results)
    assert "## GPU check" in page and "### Overhead on the GPU" in page and "### Long training (small, 1 epochs" in page


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


def test_the_continual_section_counts_mer_replays_from_replay_batch_size(tmp_path):
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
    mer = {"replay_batch_size": 9, "reptile_beta": 0.3, "reptile_gamma": 1.0}  # the replays alone: k - 1
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
