"""Two processes on CPU (gloo): every callback keeps the semantics of one process (each script writes what its
ranks saw; the tests read it)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_per.replay import ExperienceReplay, PrioritizedReplayBuffer
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


IMPORTANCE_SCRIPT = Path(__file__).with_name("ddp_importance_script.py")


@pytest.mark.slow
def test_two_processes_share_tau_and_switch_on_the_same_step(tmp_path):
    ranks = run_two_processes(IMPORTANCE_SCRIPT, tmp_path)
    assert [r["world"] for r in ranks] == [2, 2]
    # each rank alone would decide differently: rank 0's own scores are heavy-tailed, rank 1's are constant
    # (tau_th = 1.5 in the script; the averaged tau_step is about (mean(local0) + 1) / 2)
    local0, local1 = ranks[0]["local_tau"], ranks[1]["local_tau"]
    assert sum(local0) / len(local0) > 2.5 and max(abs(t - 1.0) for t in local1) < 1e-6
    assert ranks[0]["tau"] == ranks[1]["tau"]  # bitwise the same tau after every step
    tau = 0.0  # every step's tau_step, averaged over the ranks, enters the moving average once, in order
    for own0, own1 in zip(local0, local1, strict=True):
        tau = 0.9 * tau + 0.1 * (own0 + own1) / 2
    assert ranks[0]["tau"][-1] == pytest.approx(tau, rel=1e-9)  # saving state mid-way (below) changed nothing
    # a state taken between updates runs no collective (a checkpoint may be built on one process alone): it holds
    # this rank's own tau_step of the pending step
    assert all(len(p) == 1 for r in ranks for p in r["pending"])
    firsts = [i for i, s in enumerate(ranks[0]["steps"]) if i % 4 == 0]  # 4 steps per epoch
    uniform = [i for i in firsts if not ranks[0]["importance"][i]]
    assert uniform
    for r, local in ((0, local0), (1, local1)):
        assert all(ranks[r]["pending"][i // 4][0] == pytest.approx(local[i], rel=1e-12) for i in uniform)
    assert ranks[0]["importance"] == ranks[1]["importance"]
    first = ranks[0]["importance"].index(True)
    assert first > 1 and all(ranks[0]["importance"][first:])
    assert ranks[0]["steps"][first] == ranks[1]["steps"][first]
    # the trained points differ by rank (each draws from its own shard)
    assert ranks[0]["trained"] != ranks[1]["trained"]


SELECTION_SCRIPT = Path(__file__).with_name("ddp_selection_script.py")


@pytest.mark.slow
def test_two_processes_share_one_irreducible_table_and_each_rule_trains_from_its_own_presamples(tmp_path):
    ranks = run_two_processes(SELECTION_SCRIPT, tmp_path, timeout=240)
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


REPLAY_SCRIPT = Path(__file__).with_name("ddp_replay_script.py")


@pytest.mark.slow
def test_ddp_two_processes_share_the_memory_budget(tmp_path: Path) -> None:
    ranks = run_two_processes(REPLAY_SCRIPT, tmp_path)
    for name in ("er", "mer"):
        r0, r1 = ranks[0][name], ranks[1][name]
        assert r0["world"] == r1["world"] == 2
        assert r0["capacity"] + r1["capacity"] == 30  # the single-process budget, split: 15 slots per rank
        assert r0["size"] == r1["size"] == 15 and r0["seen"] == r1["seen"] == 40  # each rank saw half the stream
        assert not set(r0["ids"]) & set(r1["ids"])  # disjoint shards
        assert r0["tasks"] == r1["tasks"] == [0, 1]
        assert r0["weights"] == pytest.approx(r1["weights"], rel=1e-9)  # one model, kept in sync
        assert r0["rows"] == r1["rows"] == 2
    for name in ("er", "mer"):  # built on rank 0 alone before any synchronisation point: rank 0's buffer only
        alone = torch.load(tmp_path / name / "rank0_only.ckpt", weights_only=True)
        states = alone["callbacks"][ranks[0]["er"]["state_key"]]["buffers"] if name == "er" else alone["replay_buffers"]
        assert states[0]["size"] > 0 and states[1] is None
    saved = torch.load(tmp_path / "er" / "last.ckpt", weights_only=True)
    states = saved["callbacks"][ranks[0]["er"]["state_key"]]["buffers"]
    assert [s["size"] for s in states] == [15, 15]  # every rank's buffer, not only rank 0's
    one = ExperienceReplay(PrioritizedReplayBuffer(30), replay_batch_size=4)
    one.load_state_dict(saved["callbacks"][ranks[0]["er"]["state_key"]])
    with pytest.warns(UserWarning, match="pooled and re-sharded"):  # one process gets the whole budget back
        one._shards.setup(rank=0, world=1)  # private: the set-up a fit runs, without training on (no public way)
    assert one.buffer.capacity == 30 and one.buffer.seen == 80
    ids = sorted(int(i) for i in one.buffer.contents()[0][:, 0].tolist())
    assert ids == sorted(ranks[0]["er"]["ids"] + ranks[1]["er"]["ids"])
    mer_ckpt = torch.load(tmp_path / "mer" / "last.ckpt", weights_only=True)
    assert [s["size"] for s in mer_ckpt["replay_buffers"]] == [15, 15]
