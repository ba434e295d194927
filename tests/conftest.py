"""Fixtures shared by the test files."""

import logging

import pytest
import torch.distributed as dist


@pytest.fixture
def one_process_group(tmp_path):
    """A one-process gloo group, standing in for a DDP run; destroyed afterwards if the test left it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _restore_lightning_log_levels():
    """Benchmarks and examples quiet Lightning's loggers for their process; a test that runs one must not silence the
    log records later tests read with ``caplog``."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "lightning_per")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
