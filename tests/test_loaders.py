"""In-memory batch loaders: the full batch as is, or shuffled mini-batches covering every row."""

from __future__ import annotations

import math

import pytest
import torch

from mdnlab.data.loaders import batch_loader

torch.set_num_threads(1)


def make_tensors(n=53):
    x = torch.arange(n, dtype=torch.float64).reshape(n, 1) * torch.tensor(
        [1.0, -2.0], dtype=torch.float64
    )
    y = torch.arange(n, dtype=torch.float64).reshape(n, 1) + 1000.0
    return x, y


@pytest.mark.parametrize("batch_size", [None, 53, 500])
def test_full_batch_is_the_tensors_themselves(batch_size):
    x, y = make_tensors()
    loader = batch_loader(x, y, batch_size=batch_size, seed=0)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 1
        bx, by = batches[0]
        assert bx is x and by is y


def rows_of(batch):
    bx, by = batch
    rows = by[:, 0].long() - 1000
    # x and y stay paired row by row.
    torch.testing.assert_close(bx[:, 0], rows.double(), rtol=0, atol=0)
    torch.testing.assert_close(bx[:, 1], -2.0 * rows.double(), rtol=0, atol=0)
    return rows


@pytest.mark.parametrize("batch_size", [1, 7, 10, 52])
def test_mini_batches_cover_every_row_once_per_pass(batch_size):
    n = 53
    x, y = make_tensors(n)
    loader = batch_loader(x, y, batch_size=batch_size, seed=5)
    assert len(loader) == math.ceil(n / batch_size)
    orders = []
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == math.ceil(n / batch_size)
        sizes = [b[0].shape[0] for b in batches]
        assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
        order = torch.cat([rows_of(b) for b in batches])
        assert sorted(order.tolist()) == list(range(n))
        orders.append(order)
    # Reshuffled between passes.
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert not torch.equal(orders[0], torch.arange(n))


def pass_orders(seed, passes=3, batch_size=8):
    x, y = make_tensors()
    loader = batch_loader(x, y, batch_size=batch_size, seed=seed)
    return [torch.cat([b[1][:, 0] for b in loader]) for _ in range(passes)]


def test_same_seed_same_sequence_different_seed_different():
    a, b, c = pass_orders(3), pass_orders(3), pass_orders(4)
    for one, two in zip(a, b, strict=True):
        assert torch.equal(one, two)
    assert not torch.equal(a[0], c[0])
