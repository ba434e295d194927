"""Smoke run of the text study under the protocol at a tiny size (a fixed learning rate, seconds): every method trains,
the compute each is charged is the protocol's, and the JSON names its corpus and renders its section."""

import json

import pytest

pytest.importorskip("matplotlib")

from benchmarks import text_lm
from benchmarks.protocol.targets import UNIFORM_FINAL


def test_the_text_study_charges_every_method_its_compute_and_names_its_corpus(tmp_path):
    out = tmp_path / "text_lm.json"
    args = ["--noise", "0.5", "--train-sequences", "100", "--epochs", "2", "--ref-epochs", "1", "--seeds", "1",
            "--extra-seeds", "0", "--lrs", "0.003", "--evals", "2", "--eval-sequences", "16", "16"]  # fmt: skip
    args += ["--width", "16", "--batch", "8", "--out", str(out)]
    data = text_lm.main(args)
    assert json.loads(out.read_text())["tables"].keys() == {"noisy0.5"} and out.with_suffix(".png").exists()
    table = data["tables"]["noisy0.5"]
    methods = table["methods"]
    assert set(methods) == set(text_lm.METHODS) and table["budget"] == 3 * 80 * 2
    reference = 3 * 1 * 20  # the reference: one epoch on the 20 held-out sequences
    for name, method in methods.items():
        assert method["lr"]["chosen"] == 0.003 and set(method["time_to_target"]) == {UNIFORM_FINAL}
        run = method["runs"]["0"]
        assert run["curve"][0]["cost"] == run["aux_cost"] and 0 <= run["noisy_token_share"] <= 1
        per_point = {"uniform": 3, "rank": 3, "prune": 3, "topk_reducible": 3 + 2, "rho1": 3 + 1}[name]
        aux = {"topk_reducible": reference + 80, "rho1": reference}.get(name, 0)  # topk: its table pass too
        assert run["aux_cost"] == aux and run["cost"] - aux == per_point * run["trained_points"]
        assert 480 <= run["cost"] < 480 + 5 * 8
    assert data["corpus"]["python"] and len(data["corpus"]["sha256"]) == 64
    assert "met" in table["goals"] and set(table["goals"]["methods"]) == set(text_lm.METHODS) - {"uniform"}
    section = "\n".join(text_lm.STUDY.section(data, out))
    assert "**50% of training sequences random bytes**" in section and "⚠ edge" in section
    assert {h.method for h in text_lm.STUDY.headlines(data)} == set(text_lm.METHODS) - {"uniform"}
