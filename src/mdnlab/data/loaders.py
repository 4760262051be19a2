"""In-memory batches for small tabular data: no worker processes, no per-sample collation.

A full batch is one pre-built ``(x, y)`` pair; the default DataLoader's per-sample indexing
and collation would cost several times the training step itself.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset


class ShuffledBatches(IterableDataset):
    """Mini-batches of in-memory tensors, reshuffled each pass by a generator seeded once.

    ``row_dim`` 1: stacked data (one set of rows per batched member, ``MemberEnsemble(
    stacked=True)``); every member's batch holds the same positions of its own rows."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, row_dim: int = 0
    ):
        self.x, self.y, self.batch_size, self.row_dim = x, y, batch_size, row_dim
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.x.shape[self.row_dim] // self.batch_size)

    def __iter__(self):
        n = self.x.shape[self.row_dim]
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            rows = order[start : start + self.batch_size]
            yield self.x.index_select(self.row_dim, rows), self.y.index_select(self.row_dim, rows)


def batch_loader(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None = None,
    seed: int = 0,
    row_dim: int = 0,
) -> DataLoader:
    """Full batch when ``batch_size`` is None or covers every row, else shuffled mini-batches
    (rows along ``row_dim``: 1 for stacked per-member data)."""
    if batch_size is None or batch_size >= x.shape[row_dim]:
        return DataLoader([(x, y)], batch_size=None)
    return DataLoader(ShuffledBatches(x, y, batch_size, seed, row_dim), batch_size=None)
