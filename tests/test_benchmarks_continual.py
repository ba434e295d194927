"""The continual benchmark: a smoke run, and the callbacks that measure and reweight the replays."""

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from benchmarks import continual, continual_diagnosis
from lightning_per.batch import PrioritizedBatch
from lightning_per.replay.experience import REPLAYED


def _joined_batch() -> PrioritizedBatch:
    """4 incoming samples of task 2 (the first two still of task 1) and 4 replays of tasks 0, 2, 2, 1."""
    task = torch.tensor([1, 1, 2, 2, 0, 2, 2, 1])
    index = torch.tensor([10, 11, 12, 13, REPLAYED, REPLAYED, REPLAYED, REPLAYED])
    weight = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.2, 0.4, 0.6, 0.8])
    return PrioritizedBatch((torch.zeros(8, 3), torch.zeros(8, dtype=torch.int64), task), index, weight)


def test_replay_stats_records_the_replays_mean_weight_and_current_task_share():
    stats = continual.ReplayStats()
    assert stats.summary() == {"replay_weight": None, "replay_current_share": None}  # no replays yet
    stats.on_train_batch_start(None, None, _joined_batch(), 0)
    summary = stats.summary()
    assert summary["replay_weight"] == pytest.approx(0.5) and summary["replay_current_share"] == 0.5


@pytest.mark.parametrize(("scale", "mean_one", "expected"), [(2.0, False, [0.4, 0.8, 1.2, 1.6]), (1.0, True, None)])
def test_the_diagnosis_scales_or_renormalises_only_the_replays_weights(scale, mean_one, expected):
    batch = _joined_batch()
    continual_diagnosis.Reweight(scale, mean_one).on_train_batch_start(None, None, batch, 0)
    assert batch.weight[:4].tolist() == [1.0] * 4
    replayed = batch.weight[4:]
    if expected is None:  # divided by their mean 0.5
        assert replayed.mean().item() == pytest.approx(1.0) and replayed.tolist() == pytest.approx([0.4, 0.8, 1.2, 1.6])
    else:
        assert replayed.tolist() == pytest.approx(expected)


def test_continual_quick_run_writes_acc_bwt_diagonal_and_replay_figures(tmp_path, capsys):
    out = tmp_path / "continual.json"
    rows = ["finetune", "er", "per"]
    continual.main(["--quick", "--scenarios", "split_digits/task_il", "--rows", *rows, "--out", str(out)])
    data = json.loads(out.read_text())
    result = data["scenarios"]["split_digits/task_il"]["rows"]
    assert list(result) == rows and data["settings"]["hidden"] == 400
    for row in rows:
        r = result[row]
        assert 0 <= r["acc"] <= 1 and -1 <= r["bwt"] <= 1 and len(r["diagonal"]) == 5 and r["steps_per_batch"] == 1
    assert "replay_weight" not in result["finetune"] and result["er"]["replay_weight"] == 1.0
    assert 0 < result["per"]["replay_weight"] <= 1 and 0 <= result["per"]["replay_current_share"] <= 1
    assert len(data["env"]["load_average_before_after"]) == 2 and out.with_suffix(".png").exists()
    assert "| split_digits/task_il | prioritized ER | 1 |" in capsys.readouterr().out


def test_every_committed_continual_scenario_is_learnt_before_forgetting_is_measured():
    data = json.loads((Path(__file__).parents[1] / "bench_out" / "continual.json").read_text())
    assert data["scenarios"]
    for name, scenario in data["scenarios"].items():
        for method, row in scenario["rows"].items():
            assert row["diag"] >= 0.8, f"{name} {method}: mean diagonal {row['diag']} (tasks not learnt)"
