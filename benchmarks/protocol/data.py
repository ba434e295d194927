"""Data every study draws from: MNIST-1D splits (generated offline, cached), label noise and augmentation."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset, default_collate

from lightning_per.examples.data import load_mnist1d, resolve_data_dir

GENERATOR_SEED = 42


@functools.lru_cache(maxsize=4)
def mnist1d(signals: int, data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """``signals`` MNIST-1D signals of the examples' generator (seed 42), generated once and cached on disk."""
    x, y = load_mnist1d(signals, GENERATOR_SEED, resolve_data_dir(data_dir, "--data-dir"))
    return torch.from_numpy(x), torch.from_numpy(y)


def consecutive_splits(sizes: dict[str, int], data_dir: str | None = None) -> dict[str, TensorDataset]:
    """Consecutive parts of one generation, in the order given: ``{"train": 4000, "val": 1000, "test": 1000}``."""
    x, y = mnist1d(sum(sizes.values()), data_dir)
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = TensorDataset(x[start : start + size], y[start : start + size])
        start += size
    return out


def flip_labels(y: Tensor, fraction: float, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Symmetric label noise: ``round(fraction * n)`` labels, each replaced by one of the other classes, uniformly.

    Returns ``(noisy labels, mask of the flipped samples)``; the same ``seed`` flips the same samples the same way.
    """
    gen = torch.Generator().manual_seed(seed)
    n = y.numel()
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=gen)[: round(fraction * n)]] = True
    offset = torch.randint(1, num_classes, (n,), generator=gen)
    noisy = torch.where(flipped, (y + offset) % num_classes, y)
    return noisy, flipped


class Augment:
    """Collate, then give each signal a fresh random shift, scale, shear and noise (the MNIST-1D generator's kinds)."""

    def __init__(self, max_shift: int = 3, scale: float = 0.4, shear: float = 0.75, noise: float = 0.05) -> None:
        self.max_shift = max_shift
        self.scale = scale
        self.shear = shear
        self.noise = noise

    def __call__(self, samples: list[Any]) -> Any:
        x, y = default_collate(samples)
        n, length = x.shape
        shift = torch.randint(-self.max_shift, self.max_shift + 1, (n, 1))
        x = x.gather(1, (torch.arange(length) - shift) % length)
        x = x * (1 + self.scale * (torch.rand(n, 1) - 0.5))
        x = x - self.shear * (torch.rand(n, 1) - 0.5) * torch.linspace(-0.5, 0.5, length)
        return x + self.noise * torch.randn_like(x), y


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, chunk: int = 4096) -> Tensor:
    """The model's logits for ``x``, in chunks, on the model's device, returned on the CPU."""
    device = next(model.parameters()).device
    return torch.cat([model(part.to(device)).float().cpu() for part in x.split(chunk)])


def per_class_mean(values: Tensor, y: Tensor, classes: int) -> Tensor:
    """The mean of ``values`` over the samples of each class (NaN for a class without samples)."""
    sums = torch.zeros(classes, dtype=torch.float64).index_add_(0, y, values.double())
    return sums / torch.bincount(y, minlength=classes).double()
