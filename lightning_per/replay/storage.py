"""Preallocated tensor storage for replay: samples of any structure, copied into fixed slots on a chosen device."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lightning_per._checks import check_device, check_int
from lightning_per.tree import SampleSpec, flatten, unflatten

__all__ = ["TensorStorage"]


class TensorStorage:
    """``capacity`` slots holding one sample each: a tensor, or tuples / lists / dicts (nested) of tensors.

    The storage is allocated by the first ``prepare``, from that batch's structure, dtypes and per-sample shapes
    (one tensor of shape ``(capacity, *per_sample_shape)`` per leaf), so memory is bounded by the capacity; later
    batches must match (``SampleSpec``). Samples are copied in, never
    referenced. It knows nothing of which slots are in use: the writer decides that.

    Args:
        capacity: the number of slots.
        device: where the tensors live (``None``: CPU). Batches on another device are copied over.

    Raises:
        ValueError: ``capacity`` is not a positive integer.

    Example:
        >>> storage = TensorStorage(4)
        >>> leaves, n = storage.prepare({"x": torch.ones(2, 3), "y": torch.tensor([5, 6])})
        >>> storage.write(torch.tensor([2, 0]), leaves)
        >>> storage.read(torch.tensor([0, 2]))["y"]
        tensor([6, 5])
    """

    def __init__(self, capacity: int, device: str | torch.device | None = None) -> None:
        check_int("capacity", capacity, 1)
        self.capacity = capacity
        if isinstance(device, str):
            check_device("device", device)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.spec: SampleSpec | None = None
        self._leaves: list[Tensor] = []

    @property
    def allocated(self) -> bool:
        """Whether the first batch has fixed the structure (and the tensors exist)."""
        return self.spec is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the slots."""
        return sum(x.numel() * x.element_size() for x in self._leaves)

    def prepare(self, batch: Any) -> tuple[list[Tensor], int]:
        """Flatten ``batch`` and check it against the stored structure; the first batch allocates the storage.

        Returns:
            ``(leaves, batch_size)``, for ``write``.

        Raises:
            TypeError: a leaf is not a tensor.
            ValueError: a different structure, dtype or per-sample shape (the message names both), or uneven batch
                sizes.
        """
        leaves, treedef = flatten(batch)
        if self.spec is not None:
            return leaves, self.spec.check(leaves, treedef)
        spec = SampleSpec.of(batch)
        self.spec = spec
        self._leaves = [
            torch.zeros((self.capacity, *shape), dtype=dtype, device=self.device)
            for dtype, shape in zip(spec.dtypes, spec.shapes, strict=True)
        ]
        return leaves, spec.check(leaves)

    def write(self, slots: Tensor, leaves: list[Tensor], rows: Tensor | None = None) -> None:
        """Copy rows of a prepared batch into distinct ``slots``: ``rows[i]`` goes to ``slots[i]`` (``None``: row i).

        Args:
            slots: int64 slots.
            leaves: the leaves ``prepare`` returned.
            rows: int64 rows of the batch, one per slot (``None``: ``0, 1, ...``).
        """
        if slots.numel() == 0:
            return
        dest = slots if slots.device == self.device else slots.to(self.device)
        for store, leaf in zip(self._leaves, leaves, strict=True):
            src = leaf.detach() if leaf.requires_grad else leaf
            if rows is not None:
                src = src.index_select(0, rows if rows.device == src.device else rows.to(src.device))
            store.index_copy_(0, dest, src if src.device == self.device else src.to(self.device))

    def read(self, index: Tensor) -> Any:
        """The samples at ``index`` (copies, with a leading batch dimension), as the structure of the first batch.

        Raises:
            RuntimeError: nothing was written yet.
        """
        if self.spec is None:
            raise RuntimeError("The storage is empty: write a batch before reading.")
        if index.device != self.device:
            index = index.to(self.device)
        return unflatten([x.index_select(0, index) for x in self._leaves], self.spec.treedef)

    def view(self, size: int) -> Any:
        """Slots ``[0, size)`` as views of the storage (copy before changing them); ``None`` before any write."""
        if self.spec is None:
            return None
        return unflatten([x[:size] for x in self._leaves], self.spec.treedef)

    def state_dict(self, size: int) -> dict[str, Any]:
        """The first ``size`` slots, copied to CPU, as plain tuples / lists / dicts (loads with ``weights_only``)."""
        if self.spec is None:
            return {"items": None}
        return {"items": unflatten([x[:size].cpu().clone() for x in self._leaves], self.spec.treedef, plain=True)}

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore a ``state_dict`` into slots ``[0, size)``; returns ``size``.

        Raises:
            ValueError: the saved items are more than the capacity.
        """
        items = state.get("items")
        self.spec, self._leaves = None, []
        if items is None:
            return 0
        leaves, size = self.prepare(items)
        if size > self.capacity:
            self.spec, self._leaves = None, []
            raise ValueError(
                f"The saved buffer holds {size} items but `capacity` is {self.capacity}; "
                "construct the buffer with the capacity it was saved with."
            )
        for store, leaf in zip(self._leaves, leaves, strict=True):
            store[:size] = leaf.to(self.device)
        return size
