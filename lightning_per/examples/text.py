"""Offline byte-level text: the Python standard library's own source files, split by file, with an optional noisy part.

The corpus is on every machine that runs Python and is text nobody here wrote. The rule, fixed so that every machine
with the same CPython version gets the same data:

1. The files are the ``*.py`` files directly in ``sysconfig.get_paths()["stdlib"]`` (no subfolder), in name order
   (CPython 3.11.7: 168 files, 4.70 MB).
2. A file's split is ``zlib.crc32(name) % 20``: 0 test, 1 validation, any other value training (3.11.7: 3.81 MB
   training, 0.57 MB validation, 0.32 MB test); a file added in another version moves no other file.
3. Each file's bytes are cut into sequences of ``context`` inputs and the ``context`` next bytes as targets (stride
   ``context``, so every byte is predicted once); a file's last, shorter piece is padded (inputs 0, targets
   ``-100``, the ``ignore_index`` of ``F.cross_entropy``). Sequences never span two files.
4. ``train_sequences`` / ``val_sequences`` / ``test_sequences`` keep that many sequences, evenly spaced over the
   split's sequences in order (``None``: all of them).
5. ``noise``: that share of the training sequences (``round(noise * n)``, chosen by a permutation seeded by
   ``noise_seed``) is replaced by uniformly random bytes (full length, no padding); validation and test stay clean.

``corpus_info`` records the Python version, the files and a SHA-256 of the corpus, so a result names its data.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import sysconfig
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_per._checks import check_int, check_number
from lightning_per.datamodule import PrioritizedDataModule
from lightning_per.indexed import holdout_split
from lightning_per.strategy import SamplingStrategy, StrategyName

__all__ = ["IGNORE_INDEX", "StdlibTextDataModule", "corpus_info", "stdlib_files", "stdlib_sequences"]

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")


def _split_of(name: str) -> str:
    bucket = zlib.crc32(name.encode()) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def stdlib_files(source_dir: str | None = None) -> dict[str, list[Path]]:
    """The corpus files of each split (``train``, ``val``, ``test``), in name order (rules 1-2 of the module).

    Args:
        source_dir: the folder whose ``*.py`` files are read (``None``: the standard library's).

    Raises:
        FileNotFoundError: no ``*.py`` file in the folder.

    Example:
        >>> files = stdlib_files()
        >>> sorted(files), all(files.values())
        (['test', 'train', 'val'], True)
    """
    folder = Path(source_dir or sysconfig.get_paths()["stdlib"])
    paths = sorted(folder.glob("*.py"), key=lambda p: p.name)
    if not paths:
        raise FileNotFoundError(f"No *.py file in {str(folder)!r}: point `source_dir` at a folder of Python files.")
    out: dict[str, list[Path]] = {split: [] for split in SPLITS}
    for path in paths:
        out[_split_of(path.name)].append(path)
    return out


def _chunks(data: bytes, context: int) -> tuple[Tensor, Tensor]:
    """A file's sequences: inputs and targets ``(k, context)``, the last one padded."""
    values = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    count = max(0, -(-(values.numel() - 1) // context))
    padded = torch.full((count * context + 1,), IGNORE_INDEX, dtype=torch.long)
    padded[: values.numel()] = values
    inputs = padded[:-1].reshape(count, context).clamp(min=0)
    targets = padded[1:].reshape(count, context)
    return inputs, targets


def _spaced(count: int, keep: int | None) -> Tensor:
    """``keep`` positions evenly spaced over ``count`` (all of them for ``None`` or ``keep >= count``)."""
    if keep is None or keep >= count:
        return torch.arange(count)
    return torch.linspace(0, count - 1, keep).round().long()


def stdlib_sequences(
    split: str, context: int = 64, sequences: int | None = None, source_dir: str | None = None
) -> tuple[Tensor, Tensor]:
    """A split's sequences (rules 3-4 of the module): int64 inputs (bytes) and targets (bytes, ``-100`` padding).

    Example:
        >>> x, y = stdlib_sequences("val", context=32, sequences=10)
        >>> real = y[:, :-1] != -100  # the next input is the last target, except at padding
        >>> x.shape, bool((x[:, 1:] == y[:, :-1])[real].all())
        (torch.Size([10, 32]), True)
    """
    inputs, targets = _split_sequences(split, context, source_dir)
    keep = _spaced(inputs.shape[0], sequences)
    return inputs[keep], targets[keep]  # copies: the cached tensors are never handed out


@functools.lru_cache(maxsize=6)
def _split_sequences(split: str, context: int, source_dir: str | None) -> tuple[Tensor, Tensor]:
    """Every sequence of a split, read once per process (the files are read-only library source)."""
    parts = [_chunks(path.read_bytes(), context) for path in stdlib_files(source_dir)[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def corpus_info(source_dir: str | None = None) -> dict[str, Any]:
    """What a result needs to name its data: the Python version, the folder, each split's files and bytes, a SHA-256.

    The digest covers every file's name and bytes, in split and name order.
    """
    digest = hashlib.sha256()
    info: dict[str, Any] = {"python": platform.python_version(), "source_dir": str(source_dir or "stdlib")}
    for split, paths in stdlib_files(source_dir).items():
        size = 0
        for path in paths:
            data = path.read_bytes()
            digest.update(f"{split}/{path.name}:{len(data)}\n".encode())
            digest.update(data)
            size += len(data)
        info[split] = {"files": len(paths), "bytes": size}
    info["sha256"] = digest.hexdigest()
    return info


def add_noise(inputs: Tensor, targets: Tensor, noise: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Replace ``round(noise * n)`` sequences by random bytes (rule 5); returns inputs, targets and the noisy mask."""
    n, context = inputs.shape
    gen = torch.Generator().manual_seed(seed)
    noisy = torch.zeros(n, dtype=torch.bool)
    noisy[torch.randperm(n, generator=gen)[: round(noise * n)]] = True
    random = torch.randint(0, 256, (int(noisy.sum()), context + 1), generator=gen)
    inputs, targets = inputs.clone(), targets.clone()
    inputs[noisy], targets[noisy] = random[:, :-1], random[:, 1:]
    return inputs, targets, noisy


class StdlibTextDataModule(PrioritizedDataModule):
    """Byte-level language modelling on the standard library's source files (see ``lightning_per.examples.text``).

    Samples are ``(x, y)``: ``x`` the ``context`` input bytes, ``y`` the next byte at each position (``-100`` at
    padding). Training files, validation files and test files are disjoint. ``noisy`` marks the training sequences
    replaced by random bytes, by ``train_dataset`` index (what ``batch.index`` holds). The holdout stays clean: the
    small curated set a reference or irreducible-loss model learns from (Rho-1's and RHO-LOSS's premise).

    Args:
        context: bytes per sequence.
        train_sequences: training sequences kept, evenly spaced (``None``: all).
        val_sequences: validation sequences kept (``None``: all; 0: no validation).
        test_sequences: test sequences kept (``None``: all; 0: no test set).
        noise: share of the training sequences (the holdout excluded) replaced by random bytes, in [0, 1).
        noise_seed: seed of that choice and of the bytes.
        source_dir: the folder of ``*.py`` files (``None``: the standard library's).
        batch_size: training batch size (sequences).
        strategy: how training sequences are drawn (see ``PrioritizedDataModule``).
        num_workers: DataLoader workers.
        eval_batch_size: batch size of the validation and test loaders.
        holdout_fraction: share of the training sequences held out for a reference or irreducible-loss model.
        holdout_seed: seed of the holdout's choice.

    Raises:
        ValueError: a bad argument.

    Example:
        >>> dm = StdlibTextDataModule(context=32, train_sequences=64, val_sequences=8, test_sequences=0)
        >>> dm.setup("fit")
        >>> x, y = dm.train_dataset[0]
        >>> x.shape, y.shape, len(dm.train_dataset)
        (torch.Size([32]), torch.Size([32]), 64)
    """

    def __init__(
        self,
        context: int = 64,
        train_sequences: int | None = None,
        val_sequences: int | None = 512,
        test_sequences: int | None = 1024,
        noise: float = 0.0,
        noise_seed: int = 0,
        source_dir: str | None = None,
        batch_size: int = 32,
        strategy: SamplingStrategy | StrategyName | None = None,
        num_workers: int = 0,
        eval_batch_size: int = 256,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
    ) -> None:
        check_int("context", context, 1)
        check_int("train_sequences", train_sequences, 1, optional=True)
        check_int("val_sequences", val_sequences, 0, optional=True)
        check_int("test_sequences", test_sequences, 0, optional=True)
        check_number("noise", noise, 0.0, 1.0, high_open=True)
        check_int("noise_seed", noise_seed)
        super().__init__(
            batch_size=batch_size,
            strategy=strategy,
            num_workers=num_workers,
            eval_batch_size=eval_batch_size,
            holdout_fraction=holdout_fraction,
            holdout_seed=holdout_seed,
        )
        self.context = context
        self.train_sequences = train_sequences
        self.val_sequences = val_sequences
        self.test_sequences = test_sequences
        self.noise = noise
        self.noise_seed = noise_seed
        self.source_dir = source_dir
        self.noisy: Tensor | None = None

    def setup(self, stage: str) -> None:
        """Read the files and build the splits (once)."""
        if self.train_dataset is not None:
            return
        x, y = stdlib_sequences("train", self.context, self.train_sequences, self.source_dir)
        rest = torch.arange(len(x))
        if self.holdout_fraction:  # the base class's split of the same length and seed: the holdout stays clean
            rest = torch.as_tensor(holdout_split(TensorDataset(x), self.holdout_fraction, self.holdout_seed)[0].indices)
        x[rest], y[rest], self.noisy = add_noise(x[rest], y[rest], self.noise, self.noise_seed)
        self.train_dataset = TensorDataset(x, y)
        for split, count in (("val", self.val_sequences), ("test", self.test_sequences)):
            if count != 0:
                dataset = TensorDataset(*stdlib_sequences(split, self.context, count, self.source_dir))
                setattr(self, f"{split}_dataset", dataset)
