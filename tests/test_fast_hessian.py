"""The block-matmul Hessian of the MLPs (mlp_hessian) against the plain double-backward loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mdnlab.inference.curvature import hessian_mean_nll, hessian_mean_nll_loop
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.mlp_hessian import mlp_hessian_sum
from mdnlab.module import MDNModule

torch.set_num_threads(1)


def gaussian(hidden, activation="tanh", q=2, k=3, n=61, seed=0):
    torch.manual_seed(seed)
    module = MDNModule(
        in_dim=2, event_shape=[q], n_components=k, hidden_sizes=hidden, activation=activation
    )
    x = torch.randn(n, 2, dtype=torch.float64)
    y = torch.randn(n, q, dtype=torch.float64) * 2 + 1
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    return module, x, y


def assert_fast_equals_loop(module, x, y, params="all", chunk=13):
    flat = FlatModel(module, params)
    assert mlp_hessian_sum(flat, x, y, chunk) is not None  # the fast route was taken
    fast = hessian_mean_nll(flat, x, y, chunk)
    loop = hessian_mean_nll_loop(flat, x, y, chunk)
    assert fast.shape == (flat.n_params, flat.n_params)
    assert torch.equal(fast, fast.T)
    error = float((fast - loop).abs().max() / loop.abs().max())
    assert error < 1e-10, error


@pytest.mark.parametrize("hidden", [[5, 4], [], [3], [4, 3, 5]])
def test_full_covariance_gaussian_any_depth(hidden):
    """q = 2 full covariance, K = 3; [4, 3, 5] has non-adjacent layer pairs."""
    assert_fast_equals_loop(*gaussian(hidden))


@pytest.mark.parametrize("hidden", [[5, 4], []])
def test_head_only(hidden):
    assert_fast_equals_loop(*gaussian(hidden), params="head")


@pytest.mark.parametrize("activation", ["relu", "gelu", "softplus", "silu"])
def test_other_activations(activation):
    assert_fast_equals_loop(*gaussian([6], activation=activation, seed=1))


def test_chunk_larger_than_the_data_and_diagonal_covariance():
    torch.manual_seed(3)
    module = MDNModule(
        in_dim=1, event_shape=[3], n_components=2, hidden_sizes=[4, 4], covariance="diagonal"
    )
    x = torch.randn(30, 1, dtype=torch.float64)
    y = torch.randn(30, 3, dtype=torch.float64)
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    assert_fast_equals_loop(module, x, y, chunk=2048)


def test_categorical_family():
    torch.manual_seed(4)
    module = MDNModule(
        in_dim=2,
        event_shape=[2],
        family="categorical",
        n_components=2,
        hidden_sizes=[4, 3],
        n_classes=[3, 2],
    )
    x = torch.randn(50, 2, dtype=torch.float64)
    y = torch.stack([torch.randint(0, 3, (50,)), torch.randint(0, 2, (50,))], 1).double()
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    assert_fast_equals_loop(module, x, y)
    assert_fast_equals_loop(module, x, y, params="head")


def test_wishart_family():
    torch.manual_seed(5)
    module = MDNModule(
        in_dim=1, event_shape=[2, 2], family="wishart", n_components=2, hidden_sizes=[4]
    )
    x = torch.randn(40, 1, dtype=torch.float64)
    factor = torch.randn(40, 2, 6, dtype=torch.float64)
    y = factor @ factor.transpose(1, 2) / 6  # symmetric positive definite
    module.x_scaler.fit(x)
    module.y_scaler.fit(y)
    assert_fast_equals_loop(module, x, y)


def test_other_networks_fall_back_to_the_loop():
    module, x, y = gaussian([4])
    module.net = nn.Sequential(
        nn.Linear(2, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, module.family.n_raw_outputs)
    ).double()
    flat = FlatModel(module)
    assert mlp_hessian_sum(flat, x, y) is None
    fast = hessian_mean_nll(flat, x, y, chunk=13)
    torch.testing.assert_close(fast, hessian_mean_nll_loop(flat, x, y, chunk=13))
