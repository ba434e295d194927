"""Process-group helpers: a one-process gloo group stands in for a DDP run."""

import pytest
import torch
import torch.distributed as dist

import lightning_per as lp
from lightning_per import cli
from lightning_per.plumbing.distributed import all_gather_variable


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_release_destroys_the_group_and_is_a_no_op_without_one(one_process_group):
    assert dist.is_initialized()
    lp.release_process_group()
    assert not dist.is_initialized()
    lp.release_process_group()  # nothing left to release: no error


def test_the_console_script_releases_the_group_its_run_left_alive(one_process_group, monkeypatch):
    monkeypatch.setattr(cli, "main", lambda: None)  # stands for a `fit` that returns with the group alive
    cli.entry()
    assert not dist.is_initialized()


def test_all_gather_variable_with_one_process_returns_the_tensor(one_process_group):
    t = torch.arange(3)
    assert torch.equal(all_gather_variable(t, world_size=1), t)
