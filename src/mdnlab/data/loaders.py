"""In-memory batches for small tabular data: no worker processes, no per-sample collation.

A full batch is one pre-built ``(x, y)`` pair; the default DataLoader's per-sample indexing
and collation would cost several times the training step itself.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset


class ShuffledBatches(IterableDataset):
    """Mini-batches of in-memory tensors, reshuffled each pass by a generator seeded once."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.x.shape[0] // self.batch_size)

    def __iter__(self):
        order = torch.randperm(self.x.shape[0], generator=self.generator)
        for start in range(0, self.x.shape[0], self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x[rows], self.y[rows]


def batch_loader(
    x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, seed: int = 0
) -> DataLoader:
    """Full batch when ``batch_size`` is None or covers every row, else shuffled mini-batches."""
    if batch_size is None or batch_size >= x.shape[0]:
        return DataLoader([(x, y)], batch_size=None)
    return DataLoader(ShuffledBatches(x, y, batch_size, seed), batch_size=None)
