"""lightning_per.replay pooling and ranks: buffers saved by some processes, pooled and re-sharded for others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_per.replay import ExperienceReplay, PrioritizedReplayBuffer, ReservoirBuffer
from lightning_per.replay.pooling import pool_buffer_states
from tests.helpers import held_ids, numbered


def test_pooling_reshards_buffers_for_another_world_size() -> None:
    ranks = [PrioritizedReplayBuffer(capacity=5, alpha=1.0, seed=r) for r in range(2)]
    for r, buf in enumerate(ranks):
        buf.add(numbered(8, dim=1, start=100 * r))
        buf.update_priorities(torch.arange(5), buf.contents()[0][:, 0])  # priority = id + eps
    states = [b.state_dict() for b in ranks]
    one = PrioritizedReplayBuffer(capacity=10, alpha=1.0)
    one.load_state_dict(pool_buffer_states(states, part=0, parts=1, capacity=10))
    ids = one.contents()[0][:, 0]
    assert len(one) == 10 and one.seen == 16
    assert sorted(ids.tolist()) == sorted(torch.cat([b.contents()[0][:, 0] for b in ranks]).tolist())
    assert np.allclose(one.sampler.tree.values()[:10], ids.double().numpy() + 1e-3)  # priorities follow their items
    shares = [pool_buffer_states(states, part=r, parts=4, capacity=2, seed=r) for r in range(4)]
    assert [s["size"] for s in shares] == [2, 2, 2, 2] and all(s["writer"]["seen"] == 4 for s in shares)
    assert torch.cat([s["storage"]["items"][0][:, 0] for s in shares]).unique().numel() == 8  # disjoint shares
    uniform = ReservoirBuffer(capacity=3)
    uniform.load_state_dict(pool_buffer_states(states, part=0, parts=1, capacity=3))  # subsampled to the capacity
    assert len(uniform) == 3
    with pytest.raises(ValueError, match=r"`part` must be in \[0, 4\), got 4"):
        pool_buffer_states(states, part=4, parts=4, capacity=2)
    other = ReservoirBuffer(capacity=5)
    other.add({"x": torch.zeros(2, 1)})
    with pytest.raises(ValueError, match=r"different structures.*cannot be pooled"):
        pool_buffer_states([*states, other.state_dict()], part=0, parts=1, capacity=8)


def test_a_pooled_buffer_with_free_slots_fills_them_with_the_items_it_keeps() -> None:
    ranks = [ReservoirBuffer(capacity=5, seed=r) for r in range(2)]
    for r, buf in enumerate(ranks):
        buf.add(numbered(8, dim=1, start=1 + 100 * r))  # ids from 1: an unfilled slot would read as id 0
    pooled = ReservoirBuffer(capacity=12, seed=0)
    pooled.load_state_dict(pool_buffer_states([b.state_dict() for b in ranks], part=0, parts=1, capacity=12))
    assert len(pooled) == 10 and pooled.seen == 16
    held = set(held_ids(pooled))
    for i in range(20):
        pooled.add(numbered(4, dim=1, start=1000 + 4 * i))
        assert 0 not in held_ids(pooled)  # only items ever offered are held
    assert len(pooled) == 12 and pooled.seen == 96
    assert set(held_ids(pooled)) - held <= set(range(1000, 1080))


def test_buffer_shards_reshard_on_another_world_size() -> None:
    first = ReservoirBuffer(5, seed=0)
    first.add((torch.arange(8).float().unsqueeze(1), torch.zeros(8, dtype=torch.long)))
    replay = ExperienceReplay(ReservoirBuffer(10))
    replay.load_state_dict({"buffers": [first.state_dict(), None]})  # saved by 2 processes, rank 1 unsynchronised
    assert len(replay.buffer) == 5  # before the setup: loaded as for one process, to inspect
    with pytest.warns(UserWarning, match="holds 1 of 2 processes' replay buffers"):
        replay._shards.setup(rank=0, world=2)  # private: what a fit runs on rank 0 of 2; no one-process public way
    assert replay.buffer.capacity == 5 and len(replay.buffer) == 5
