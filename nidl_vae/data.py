"""Arrays to batches: in-memory tensors sliced once per batch, and inference batch loops."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class TensorBatches(Dataset):
    """A dataset of aligned tensors whose batches are fetched with one slice each.

    A :class:`~torch.utils.data.DataLoader` calls ``__getitems__`` with a batch of indices,
    so a batch costs one fancy-indexing per tensor instead of one ``__getitem__`` per sample.
    """

    def __init__(self, *tensors: Tensor):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices)
        return tuple(t[index] for t in self.tensors)


def _keep_batch(batch):
    # module-level (not a lambda) so the loader pickles under spawn-based strategies
    return batch


def make_loader(
    tensors: Sequence[Tensor], batch_size: int, shuffle: bool, seed: int | None = None
) -> DataLoader:
    """A DataLoader over in-memory tensors, shuffled by its own seeded generator."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        TensorBatches(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=_keep_batch,
    )


def as_tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    """A tensor holding a copy of ``array`` (read-only and memory-mapped arrays welcome)."""
    return torch.tensor(np.asarray(array), dtype=dtype)


def iter_batches(tensors: Sequence[Tensor], batch_size: int) -> Iterator[tuple[Tensor, ...]]:
    """Consecutive slices of aligned tensors, in order."""
    for start in range(0, len(tensors[0]), batch_size):
        yield tuple(t[start : start + batch_size] for t in tensors)
