"""Two processes on CPU (gloo): the same semantics as one process."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ddp_env, free_port, run_two_processes

SCRIPT = Path(__file__).with_name("ddp_core_script.py")


def _check(out: Path) -> None:
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # every rank holds the same score table and sampler state after each epoch
    assert ranks[0]["scores"] == ranks[1]["scores"]
    assert ranks[0]["sampler"] == ranks[1]["sampler"]
    for epoch in ("0", "1", "2"):
        plan0, plan1 = ranks[0]["plans"][epoch], ranks[1]["plans"][epoch]
        assert plan0 == plan1  # the same plan on both ranks
        # rank r trained exactly positions r, r+2, ... of the world's draw: disjoint shares of one draw
        assert ranks[0]["trained"][epoch] == plan0[0::2]
        assert ranks[1]["trained"][epoch] == plan0[1::2]
    trained = {i for r in ranks for i in r["trained"]["2"]}
    assert all(ranks[0]["scores"][i] >= 0 for i in trained)  # both ranks' samples reached the table
    assert all(isinstance(i, int) for i in ranks[0]["trained"]["2"])


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_semantics(tmp_path):
    run_two_processes(SCRIPT, tmp_path, "ddp")
    _check(tmp_path)


@pytest.mark.slow
def test_two_simulated_nodes_of_one_process_each(tmp_path):
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(tmp_path), "nodes"],
            env=ddp_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(node), LOCAL_RANK="0", WORLD_SIZE="2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _check(tmp_path)


@pytest.mark.slow
def test_callback_state_built_on_one_process_needs_no_other_and_resumes_and_errors_reach_every_rank(tmp_path):
    ranks = run_two_processes(SCRIPT.with_name("ddp_state_script.py"), tmp_path, timeout=120)
    # LossTracker: rank 0's state, built alone, holds the synchronised record (sample 0) and its own since (sample
    # 1); restored once, it counts once against sample 0 trained again: mean 2.0, not 1.67 as with a copy per rank
    assert ranks[0]["saved"] == [0, 1]
    assert ranks[0]["scores"] == ranks[1]["scores"] == [2.0, 5.0]
    # ImportanceSamplingCallback: rank 0's own tau_step of the pending step, sqrt(1.375), without an all-reduce
    assert ranks[0]["saved_tau"] == [pytest.approx(math.sqrt(1.375))]
    # a negative score on rank 1 only: both ranks stop with the error, none waits in the all-reduce
    assert "got a negative score on another process" in ranks[0]["negative"]
    assert "got a negative score (-1)" in ranks[1]["negative"]


@pytest.mark.slow
def test_a_checkpoint_built_on_rank_zero_alone_does_not_hang_and_step_checkpoints_hold_every_rank(tmp_path):
    ranks = run_two_processes(SCRIPT.with_name("ddp_state_script.py"), tmp_path, "fit", timeout=180)
    assert [r["rank"] for r in ranks] == [0, 1]
    alone = torch.load(tmp_path / "rank0_only.ckpt", weights_only=True)["callbacks"]
    every = torch.load(tmp_path / "every-step=2.ckpt", weights_only=True)["callbacks"]
    # 4 steps of 8 per rank; the checkpoint at step 2 follows a synchronisation: both ranks' 2 steps
    assert every["LossTracker"]["unmerged_index"].numel() == 2 * 2 * 8
    assert every["ImportanceSamplingCallback"]["switch"]["pending_taus"] == []  # tau was brought up to date first
    # built on rank 0 alone at step 3: the synchronised records and rank 0's own third step
    assert alone["LossTracker"]["unmerged_index"].numel() == 2 * 2 * 8 + 8
    assert len(alone["ImportanceSamplingCallback"]["switch"]["pending_taus"]) == 1
    # the documented recipe, `trainer.save_checkpoint` on every process, neither hangs nor loses rank 0's records
    recipe = torch.load(tmp_path / "recipe.ckpt", weights_only=True)["callbacks"]
    assert recipe["LossTracker"]["unmerged_index"].numel() == 2 * 2 * 8 + 8
