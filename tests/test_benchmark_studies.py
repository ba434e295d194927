"""Smoke runs of the four studies under the protocol at tiny sizes (a fixed learning rate, seconds each): they write
the JSON the issue specifies, charge the compute the protocol says, and render their sections and README cells."""

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mnist1d")

import torch

from benchmarks import imbalance, long_training, noisy_labels, redundancy, results_studies, run_all
from benchmarks.protocol.budget import step_cost
from benchmarks.protocol.study import Headline
from benchmarks.results_studies import headlines, legend, which_method_block
from lightning_per import PrioritizedBatch

FIXED = ["--lrs", "0.1", "--evals", "2"]  # one rate: not searched, flagged as at an edge, never quoted


def _protocol_records(method):
    assert method["lr"]["chosen"] == 0.1 and method["lr"]["at_edge"] is True and method["lr"]["grid"] == [0.1]
    assert not set(method["seeds"]["selection"]) & set(method["seeds"]["report"])
    for target in method["time_to_target"].values():
        assert {"mean", "std", "n_reached"} <= set(target["compute"]) and {"n_reached"} <= set(target["seconds"])


def test_long_training_writes_time_to_target_and_the_gpu_checks_ratio(tmp_path):
    out = tmp_path / "long_training.json"
    data = long_training.main(["--epochs", "1", "--seeds", "2", "--extra-seeds", "0", "--width", "8", *FIXED,
                               "--schedules", "cosine", "step", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["tables"].keys() == data["tables"].keys() == {"1ep/cosine", "1ep/step"}
    methods = data["tables"]["1ep/step"]["methods"]
    assert set(methods) == {"uniform", "importance", "importance_p5"} and set(data["ratio"]) == set(methods)
    for name, method in methods.items():
        _protocol_records(method)
        assert set(method["time_to_target"]) == {"uniform_final", "train_loss<=0.1", "train_loss<=0.01",
                                                 "train_loss<=0.001"}  # fmt: skip
        for run in method["runs"].values():
            assert 12000 <= run["cost"] < 12000 + step_cost(100, 500) and run["curve"][0]["cost"] == 0
            lrs = [p for p in run["curve"] if "tau" in p]
            assert lrs and (run["curve"][-1]["tau"] is None) == (name == "uniform")
            assert (run["tau_peak"] is None) == (name == "uniform")  # why an importance run stayed uniform, if it did
    assert methods["uniform"]["time_to_target"]["uniform_final"]["seconds"]["n_reached"] == 2
    assert data["ratio"]["uniform"]["mean"] == 1.0 and out.with_suffix(".png").exists()
    section = "\n".join(long_training.STUDY.section(data, out))
    assert "### Long training (small, 1 epochs)" in section and "⚠ edge" in section and "speed-up" in section


def test_long_training_quotes_the_lowest_loss_level_uniform_reached_on_every_seed():
    def reached(n_reached):
        return {"seconds": {"n_reached": n_reached, "n": 3}}

    uniform = {"train_loss<=0.1": reached(3), "train_loss<=0.01": reached(2), "train_loss<=0.001": reached(0)}
    methods = {"uniform": {"time_to_target": uniform}}
    assert long_training.lowest_common_level(methods) == "train_loss<=0.1"
    uniform["train_loss<=0.01"] = reached(3)
    assert long_training.lowest_common_level(methods) == "train_loss<=0.01"
    assert long_training.lowest_common_level({"uniform": {"time_to_target": {"train_loss<=0.1": reached(1)}}}) is None
    headers = [header for header, _ in long_training.early_columns("train_loss<=0.01")]
    assert headers == ["speed-up to loss 0.01, seconds", "speed-up to loss 0.01, compute"]


def test_long_training_compares_losses_at_equal_compute_along_the_budget():
    def run(losses):
        points = zip((0, 50, 100), losses, strict=True)
        return {"budget": 100.0, "curve": [{"cost": c, "train_loss": v} for c, v in points]}

    uniform = {"runs": {"0": run([2.0, 1.0, 0.5]), "1": run([2.0, 0.8, 0.4])}}
    method = {"runs": {"0": run([2.0, 0.5, 0.5]), "1": run([2.0, 0.4, 0.4]), "2": run([2.0, 0.1, 0.1])}}
    assert long_training.equal_compute_ratio(uniform, method, 0.5) == [2.0, 2.0]  # seed 2: no uniform run to pair
    assert long_training.equal_compute_ratio(uniform, method, 1.0) == [1.0, 1.0]
    assert long_training.equal_compute_ratio(uniform, method, 0.25) == pytest.approx([1.5 / 1.25, 1.4 / 1.2])


def test_noisy_labels_charges_the_irreducible_model_and_counts_mislabelled_points(tmp_path):
    out = tmp_path / "noisy_labels.json"
    methods = ["topk_reducible", "topk_reducible_stream", "rank_reducible", "selective_backprop"]
    args = ["--size", "small", "--signals", "400", "--epochs", "2", "--il-epochs", "1", "--seeds", "2"]
    data = noisy_labels.main([*args, "--extra-seeds", "0", *FIXED, "--methods", *methods, "--out", str(out)])
    table = data["tables"]["0.3"]
    assert set(table["methods"]) == {"uniform", *methods}
    aux = 3 * 1 * 100 + 300  # one epoch on the 100 held-out signals, one pass over the 300 trained
    for name, method in table["methods"].items():
        _protocol_records(method)
        assert 0 <= method["noisy_trained_share"] <= 1
        for run in method["runs"].values():
            if name == "topk_reducible_stream":  # on the fly: the holdout model's training only, before the first step
                assert run["aux_cost"] == 3 * 1 * 100 and run["selected_step_fraction"] == 1.0
                # each step: 320 points scored, 32 trained, and the holdout model's forward over the 320
                assert 1800 <= run["cost"] < 1800 + step_cost(32, 640)
                continue
            assert run["aux_cost"] == (aux if "reducible" in name else 0) and run["curve"][0]["cost"] == run["aux_cost"]
            assert 1800 <= run["cost"] < 1800 + step_cost(32, 320)
            if name == "topk_reducible":  # B = 10 b scored without gradients on every step
                assert run["cost"] - aux == 13 * run["trained_points"] and run["selected_step_fraction"] == 1.0
            elif name == "uniform":
                assert run["cost"] == 3 * run["trained_points"]
    assert table["methods"]["uniform"]["vs_uniform"]["test_acc"]["mean"] == 0.0 and "met" in table["goals"]
    assert "early_stopped" in table["methods"]["uniform"] and "irreducible_model_val_acc" in table["methods"]["uniform"]
    assert "**30% of training labels flipped**" in "\n".join(noisy_labels.STUDY.section(data, out))


def test_noisy_labels_runs_under_the_schedule_it_is_given(tmp_path, monkeypatch):
    seen, real = [], noisy_labels.train_method

    def spy(method, seed, lr, budget, spec, prepare, parts=None):
        seen.append(spec.schedule)
        return real(method, seed, lr, budget, spec, prepare, parts)

    monkeypatch.setattr(noisy_labels, "train_method", spy)
    out = tmp_path / "constant.json"
    args = ["--size", "small", "--signals", "400", "--epochs", "1", "--seeds", "1", "--extra-seeds", "0"]
    data = noisy_labels.main([*args, *FIXED, "--methods", "uniform", "--schedule", "constant", "--out", str(out)])
    assert seen and set(seen) == {"constant"} and data["settings"]["schedule"] == "constant"
    assert "constant learning rate" in "\n".join(noisy_labels.STUDY.section(data, out))


def test_noisy_labels_weight_variants_say_what_share_of_the_weight_the_mislabelled_points_got(tmp_path):
    out = tmp_path / "weights.json"
    args = ["--size", "small", "--signals", "400", "--epochs", "3", "--il-epochs", "1", "--seeds", "1"]
    methods = ["rank_reducible_b0", "rank_reducible_b1"]
    data = noisy_labels.main([*args, "--extra-seeds", "0", *FIXED, "--methods", *methods, "--out", str(out)])
    table = data["tables"]["0.3"]["methods"]
    for name in ("uniform", "rank_reducible_b0"):  # every weight is 1: the weighted share is the drawn share
        assert table[name]["mean_weight"] == pytest.approx(1.0)
        assert table[name]["noisy_weight_share"] == pytest.approx(table[name]["noisy_trained_share"])
    b1 = table["rank_reducible_b1"]
    assert b1["mean_weight"] != pytest.approx(1.0, abs=1e-6)  # weighted epochs after the uniform first one
    assert 0 <= b1["noisy_weight_share"] <= 1
    section = "\n".join(noisy_labels.STUDY.section(data, out))
    assert "mislabelled share of the weight" in section
    assert dict(noisy_labels.LEGEND).keys() == set(methods)


def test_redundancy_gives_uniform_the_compute_prune_used(tmp_path):
    out = tmp_path / "redundancy.json"
    sizes = ["--train-size", "2000", "--val-size", "500", "--test-size", "500", "--epochs", "2"]
    data = redundancy.main([*sizes, "--seeds", "2", "--extra-seeds", "0", *FIXED, "--methods", "prune_r0.7",
                            "--out", str(out)])  # fmt: skip
    methods = data["tables"]["2ep"]["methods"]
    assert set(methods) == {"uniform", "prune_r0.7", "uniform_at_prune_r0.7"}
    pruned, matched = methods["prune_r0.7"], methods["uniform_at_prune_r0.7"]
    assert pruned["compute_fraction"]["mean"] < 0.95 and matched["matches"] == "prune_r0.7"
    assert matched["budget"] == round(sum(r["cost"] for r in pruned["runs"].values()) / 2)
    for run in matched["runs"].values():  # uniform stops at that compute, not at its epochs
        assert matched["budget"] <= run["cost"] < matched["budget"] + 3 * 256
    assert pruned["runs"]["0"]["epoch_fractions"][0] == 1.0 and pruned["runs"]["0"]["epoch_fractions"][1] < 1.0
    assert (
        pruned["vs_matched_uniform"]["method"] == "uniform_at_prune_r0.7"
        and "prune_r0.7" in data["tables"]["2ep"]["goals"]
    )
    section = "\n".join(redundancy.STUDY.section(data, out))
    assert "| `uniform_at_prune_r0.7` |" in section and "Goal, `prune_r0.7`" in section
    headline = redundancy.STUDY.headlines(data)[0]
    assert headline.method == "prune_r0.7" and not headline.quotable and "of uniform's compute" in headline.figure


def test_redundancy_credits_a_full_epoch_method_that_reaches_uniforms_final_accuracy_sooner():
    def method(diff_ci, reach_ci):
        reach = {"mean": sum(reach_ci) / 2, "n": 5, "ci95": reach_ci}
        target = {"uniform_final": {"speedup_vs_uniform": {"bounded": [], "compute": reach}}}
        diff = {"test_acc": {"mean": sum(diff_ci) / 2, "ci95": diff_ci}}
        seeds = {"report": [0, 1, 2, 3, 4]}
        return {"lr": {"at_edge": False}, "seeds": seeds, "compute_fraction": {"mean": 1.0}, "vs_uniform": diff,
                "time_to_target": target}  # fmt: skip

    methods = {
        "uniform": method([0.0, 0.0], [1.0, 1.0]),
        "proportional": method([-0.0004, 0.0007], [1.16, 1.64]),
        "rank": method([-0.0008, 0.0011], [0.88, 1.26]),
        "lower": method([-0.004, -0.001], [1.1, 1.3]),
    }
    data = {"tables": {"8ep": {"label": "8 uniform epochs of compute", "goals": {}, "methods": methods}}}
    cells = {h.method: h for h in redundancy.STUDY.headlines(data)}
    paid = cells["proportional"]
    assert paid.verdict == 1 and "to uniform's final accuracy 1.40x [1.16, 1.64] in compute" in paid.figure
    assert cells["rank"].verdict == 0  # level at the end, and no clear gain on the way
    assert cells["lower"].verdict == -1  # lower at the end: an early arrival does not make up for it


def test_imbalance_records_per_class_accuracy_and_switches_deferred_balancing(tmp_path):
    out = tmp_path / "imbalance.json"
    sizes = ["--signals", "4000", "--largest", "100", "--val-per-class", "20", "--test-per-class", "50"]
    methods = ["deferred_balanced", "proportional_cb_biased"]
    data = imbalance.main([*sizes, "--ratios", "10", "--budget", "20000", "--seeds", "1", *FIXED, "--methods",
                           *methods, "--out", str(out)])  # fmt: skip
    table = data["tables"]["10"]
    assert imbalance.class_sizes(2000, 100) == [2000, 1199, 719, 431, 258, 155, 93, 56, 33, 20]
    sizes_10 = imbalance.class_sizes(100, 10)
    for method in table["methods"].values():
        _protocol_records(method)
        assert len(method["test_acc_per_class"]) == 10 and 0 <= method["tail_half_draw_share"] <= 1
    draws = table["methods"]["deferred_balanced"]["runs"]["0"]["class_draws"]
    assert draws[0] == sizes_10 and draws[-1][-1] > 3 * sizes_10[-1] * len(draws[-1]) / sum(
        sizes_10
    )  # balanced at last
    biased = table["methods"]["proportional_cb_biased"]["tail_half_draw_share"]
    assert biased > sum(sizes_10[5:]) / sum(sizes_10)  # the class factor favours the tail
    section = "\n".join(imbalance.STUDY.section(data, out))
    assert "Per-class test accuracy" in section and "| `deferred_balanced` |" in section


def test_the_page_renders_a_protocol_json_and_the_readme_block_marks_the_rest_pending(tmp_path):
    out = tmp_path / "bench_out"
    imbalance.main(["--signals", "4000", "--largest", "100", "--val-per-class", "20", "--test-per-class", "50",
                    "--ratios", "10", "--budget", "6000", "--seeds", "1", *FIXED, "--methods", "balanced",
                    "--out", str(out / "imbalance.json")])  # fmt: skip
    page = run_all.render(out)
    assert "### Imbalance" in page and "**Pending**" in page and "![balanced test accuracy" in page
    block = which_method_block(out)
    assert "Pending (running under the protocol): Long training" in block and "Imbalance;" not in block
    assert "Not quoted" in block and "`balanced` (imbalance ratio 10)" in block  # a fixed rate is never quoted
    assert torch.get_num_threads() >= 1


def test_every_method_the_committed_studies_quote_is_said_in_the_library_s_terms():
    cells, _ = headlines(Path(__file__).resolve().parents[1] / "bench_out")
    assert cells and not {c.method for c in cells} - set(legend()), "add the name to a study's `legend`"
    block = which_method_block(Path(__file__).resolve().parents[1] / "bench_out")
    assert "`deferred_balanced`: `balanced` with `initial_uniform_epochs`" in " ".join(block.split())  # unwrapped


def test_a_result_two_studies_share_is_said_once_in_its_row(tmp_path, monkeypatch):
    same = Headline("rank", "30% flipped (small)", "+1.0 [+0.5, +1.5] points", 1)
    other = Headline("rank", "10% flipped (small)", "+1.0 [+0.5, +1.5] points", 1)
    monkeypatch.setattr(results_studies, "headlines", lambda out: ([same, other, same], []))
    row = next(line for line in which_method_block(tmp_path).splitlines() if line.startswith("| `rank`"))
    assert row.count("30% flipped (small)") == 1 and row.count("10% flipped (small)") == 1


def test_noisy_share_weighs_the_mislabelled_points_by_their_importance_weights():
    share = noisy_labels.NoisyShare(torch.tensor([True, False, False]))
    batch = PrioritizedBatch(data=None, index=torch.tensor([0, 1]), weight=torch.tensor([2.0, 1.0]))
    share.on_train_batch_end(None, None, None, batch, 0)  # type: ignore[arg-type]
    batch = PrioritizedBatch(data=None, index=torch.tensor([2, 2]), weight=torch.tensor([0.5, 0.5]))
    share.on_train_batch_end(None, None, None, batch, 1)  # type: ignore[arg-type]
    expected = {"noisy_trained_share": 1 / 4, "noisy_weight_share": 2 / 4, "mean_weight": 1.0}
    assert share.read() == pytest.approx(expected)
    assert share.read() == {"noisy_trained_share": None, "noisy_weight_share": None, "mean_weight": None}


def test_never_switched_on_importance_runs_calibrate_the_clock():
    def runs(seconds, fraction=0.0, tau=1.2):
        return {
            str(s): {"seconds": t, "selected_step_fraction": fraction, "tau_peak": tau} for s, t in enumerate(seconds)
        }

    level = {"test_acc": {"mean": 0.0, "std": 0.0}}
    table = {"methods": {
        "uniform": {"runs": runs([10.0, 20.0], tau=None)},
        "importance": {"runs": runs([5.0, 30.0]), "vs_uniform": level},  # uniform's computation, timed again
        "importance_p5": {"runs": runs([1.0, 1.0], fraction=0.5), "vs_uniform": level},  # switched on: not a null
    }}  # fmt: skip
    ratios, stems = results_studies.null_timings([("a", {"tables": {"0.3": table}}), ("b", {"tables": {}})])
    assert ratios == [0.5, 1.5] and stems == ["a"]
    line = " ".join(results_studies.seconds_noise(Path(__file__).resolve().parents[1] / "bench_out"))
    assert "How noisy the seconds are" in line  # the committed noisy-label studies hold such runs
