"""Embedded data sets that need no download: MNIST-1D (generated) and scikit-learn's digits (bundled).

Both DataModules are ``PrioritizedDataModule`` subclasses, so the sampling strategy,
batch size and loader options are the same constructor arguments as the library's own DataModule.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.strategy import SamplingStrategy, StrategyName

__all__ = [
    "DIGITS_TRAIN_POOL",
    "DigitsDataModule",
    "MNIST1DDataModule",
    "load_digits",
    "load_mnist1d",
    "mnist1d_tensors",
    "resolve_data_dir",
]

DIGITS_TRAIN_POOL = 1797 - 1797 // 5
"""The digits left for training once a fifth is held out for testing."""


def resolve_data_dir(data_dir: str | None, option: str) -> Path:
    """Return a writable cache directory, creating it if needed.

    Args:
        data_dir: the directory asked for; ``None`` means ``$LIGHTNING_PER_DATA`` or ``~/.cache/lightning_per``.
        option: the name of the option that sets it, quoted in the error message.

    Raises:
        PermissionError: the directory cannot be created or written to.
    """
    if data_dir is None:
        data_dir = os.environ.get("LIGHTNING_PER_DATA") or str(Path.home() / ".cache" / "lightning_per")
    path = Path(data_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PermissionError(
            f"The data directory {str(path)!r} is not writable ({err.strerror}). "
            f"Point `{option}` at a writable directory, e.g. `--{option}=/tmp/lightning_per`."
        ) from err
    return path


def load_mnist1d(num_samples: int, seed: int, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``num_samples`` MNIST-1D signals with ``mnist1d.data.make_dataset``, cached as ``.npz``.

    The generator reseeds NumPy's global state; it is saved and restored around the call so that the
    caller's random stream is untouched.

    Args:
        num_samples: how many signals to generate (a multiple of 10: the generator makes equal classes).
        seed: the generator's seed.
        data_dir: where the cache file lives.

    Returns:
        ``(x, y)``: float32 signals of shape ``(num_samples, 40)`` and int64 labels.
    """
    cache = data_dir / f"mnist1d_n{num_samples}_seed{seed}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return saved["x"], saved["y"]
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.train_split = 1.0
    args.seed = seed
    state = np.random.get_state()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(state)
    x = generated["x"].astype(np.float32)
    y = generated["y"].astype(np.int64)
    fd, tmp = tempfile.mkstemp(dir=data_dir, suffix=".npz")
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, x=x, y=y)
    os.replace(tmp, cache)
    return x, y


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits: float32 images ``(1797, 64)`` scaled to [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    return torch.tensor(digits.data, dtype=torch.float32) / 16.0, torch.tensor(digits.target, dtype=torch.int64)


def mnist1d_tensors(num_samples: int, seed: int, data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-1D signals ``(n, 40)`` and labels as tensors, generated once and cached.

    ``n`` is rounded up to a multiple of 10; ``data_dir`` is resolved as a sequence's ``data.data_dir`` option
    (``None``: the default cache).
    """
    x, y = load_mnist1d(-(-num_samples // 10) * 10, seed, resolve_data_dir(data_dir, "data.data_dir"))
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


class MNIST1DDataModule(PrioritizedDataModule):
    """MNIST-1D (Greydanus 2020): 10 classes of 40-sample 1D signals, generated offline and cached on disk.

    The published baselines (4000 training samples) are about 94% test accuracy for a small CNN and 68% for
    an MLP. The data is generated once per ``(train_size + val_size + test_size, seed)`` and split in that order.

    Args:
        train_size: training samples.
        val_size: validation samples (used for choosing settings; the test split is never used for that).
        test_size: test samples.
        data_seed: the generator's seed.
        data_dir: cache directory; defaults to ``$LIGHTNING_PER_DATA`` or ``~/.cache/lightning_per``.
        batch_size: training batch size.
        strategy: how training samples are drawn (see ``PrioritizedDataModule``).
        num_workers: DataLoader workers.
        eval_batch_size: batch size of the validation and test loaders.
        holdout_fraction: share of the training signals held out for an irreducible-loss model (see
            ``PrioritizedDataModule``).

    Example::

        dm = MNIST1DDataModule(train_size=4000, strategy=SamplingStrategy("proportional", alpha=1.0))
    """

    def __init__(
        self,
        train_size: int = 4000,
        val_size: int = 1000,
        test_size: int = 1000,
        data_seed: int = 42,
        data_dir: str | None = None,
        batch_size: int = 100,
        strategy: SamplingStrategy | StrategyName | None = None,
        num_workers: int = 0,
        eval_batch_size: int = 1000,
        holdout_fraction: float = 0.0,
    ) -> None:
        for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
        if train_size == 0:
            raise ValueError("`train_size` must be > 0, got 0.")
        super().__init__(
            batch_size=batch_size,
            strategy=strategy,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            holdout_fraction=holdout_fraction,
        )
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.data_seed = data_seed
        self.data_dir = data_dir

    def prepare_data(self) -> None:
        """Generate and cache the signals (once, on one process per node)."""
        self._load()

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        total = self.train_size + self.val_size + self.test_size
        # the generator makes samples_per_class = n // 10 of each class: round up, then trim
        generated = -(-total // 10) * 10
        x, y = load_mnist1d(generated, self.data_seed, resolve_data_dir(self.data_dir, "data.data_dir"))
        return x[:total], y[:total]

    def setup(self, stage: str) -> None:
        """Build the train / val / test splits."""
        if self.train_dataset is not None:
            return
        x, y = self._load()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        a, b = self.train_size, self.train_size + self.val_size
        self.train_dataset = TensorDataset(xt[:a], yt[:a])
        self.val_dataset = TensorDataset(xt[a:b], yt[a:b])
        self.test_dataset = TensorDataset(xt[b:], yt[b:])


class DigitsDataModule(PrioritizedDataModule):
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), flattened to 64 features in [0, 1].

    Args:
        val_fraction: share of the data held out for validation.
        test_fraction: share of the data held out for testing.
        data_seed: seed of the split.
        batch_size: training batch size.
        strategy: how training samples are drawn (see ``PrioritizedDataModule``).
        num_workers: DataLoader workers.
        eval_batch_size: batch size of the validation and test loaders.
        holdout_fraction: share of the training images held out for an irreducible-loss model (see
            ``PrioritizedDataModule``).
    """

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        data_seed: int = 0,
        batch_size: int = 64,
        strategy: SamplingStrategy | StrategyName | None = None,
        num_workers: int = 0,
        eval_batch_size: int = 512,
        holdout_fraction: float = 0.0,
    ) -> None:
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"`val_fraction + test_fraction` must be < 1, got {val_fraction} + {test_fraction}.")
        super().__init__(
            batch_size=batch_size,
            strategy=strategy,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            holdout_fraction=holdout_fraction,
        )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.data_seed = data_seed

    def setup(self, stage: str) -> None:
        """Load the bundled digits and split them with a fixed permutation."""
        if self.train_dataset is not None:
            return
        x, y = load_digits()
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.data_seed))
        x, y = x[order], y[order]
        n_val, n_test = int(len(y) * self.val_fraction), int(len(y) * self.test_fraction)
        n_train = len(y) - n_val - n_test
        self.train_dataset = TensorDataset(x[:n_train], y[:n_train])
        self.val_dataset = TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val])
        self.test_dataset = TensorDataset(x[n_train + n_val :], y[n_train + n_val :])
