"""Lightning's DDP (``trainer=ddp``): which process this is, and sums over the processes.

Lightning starts the other processes by running ``src/train.py`` again with ``LOCAL_RANK``
set (its subprocess launcher); they join Adam only. Every process holds the data; each takes
every W-th training and validation row from its rank (``MemberEnsemble``), so the per-epoch
work is split, and the sums below put the epoch's NLL together again. Rank 0 alone polishes,
infers and logs the MLflow run.
"""

from __future__ import annotations

import os

import torch


def is_worker_process() -> bool:
    """True in a DDP process other than rank 0 (started by Lightning's launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def sum_over_processes(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the DDP processes (itself outside DDP)."""
    if not active():
        return value
    total = value.clone()
    torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
    return total
