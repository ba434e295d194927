"""Fixtures shared by the test files."""

import pytest
import torch.distributed as dist


@pytest.fixture
def one_process_group(tmp_path):
    """A one-process gloo group, standing in for a DDP run; destroyed afterwards if the test left it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
