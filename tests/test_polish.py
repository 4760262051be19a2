"""L-BFGS polish against closed-form and statsmodels optima; the gradient against differences."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
import torch
from torch import nn
from torch.nn import functional as F

from mdnlab.polish import lbfgs_polish, max_abs_grad

torch.set_num_threads(1)


def least_squares_problem(seed=0, n=60, p=4):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, p))
    b = a @ rng.normal(size=p) + rng.normal(scale=0.5, size=n)
    return a, b


def test_least_squares_matches_lstsq():
    a, b = least_squares_problem()
    at, bt = torch.as_tensor(a), torch.as_tensor(b)
    theta = nn.Parameter(torch.zeros(a.shape[1], dtype=torch.float64))

    def loss_fn():
        return ((at @ theta - bt) ** 2).mean()

    result = lbfgs_polish(loss_fn, [theta], tol=1e-10)
    want = np.linalg.lstsq(a, b, rcond=None)[0]
    assert result.converged and result.grad_max <= 1e-10
    assert result.iterations >= 1
    np.testing.assert_allclose(theta.detach().numpy(), want, rtol=0, atol=1e-8)
    assert result.loss == pytest.approx(np.mean((a @ want - b) ** 2), rel=1e-12)
    # The reported gradient is the true one at the returned point: 2/n A'(A theta - b).
    grad = 2.0 / a.shape[0] * a.T @ (a @ theta.detach().numpy() - b)
    assert np.max(np.abs(grad)) <= 1e-10
    assert theta.grad is None  # gradients are cleared afterwards


def test_logistic_regression_matches_statsmodels():
    rng = np.random.default_rng(1)
    n = 400
    x = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    true = np.array([-0.3, 1.0, -0.7, 0.4])
    yb = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-x @ true))).astype(np.float64)
    reference = sm.Logit(yb, x).fit(method="newton", tol=1e-14, maxiter=100, disp=0).params

    xt, yt = torch.as_tensor(x), torch.as_tensor(yb)
    weights = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    bias = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def loss_fn():
        return F.binary_cross_entropy_with_logits(xt[:, 1:] @ weights + bias, yt)

    result = lbfgs_polish(loss_fn, [weights, bias], tol=1e-10)
    assert result.converged and result.grad_max <= 1e-10
    got = np.concatenate([bias.detach().numpy(), weights.detach().numpy()])
    np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6)
    # statsmodels' log-likelihood is the sum; the polished loss is the mean NLL.
    llf = sm.Logit(yb, x).loglike(reference)
    assert result.loss == pytest.approx(-llf / n, rel=1e-10)


def test_already_optimal_start_takes_no_iterations():
    a, b = least_squares_problem(seed=2)
    at, bt = torch.as_tensor(a), torch.as_tensor(b)
    theta = nn.Parameter(torch.as_tensor(np.linalg.lstsq(a, b, rcond=None)[0]))
    result = lbfgs_polish(lambda: ((at @ theta - bt) ** 2).mean(), [theta], tol=1e-8)
    assert result.iterations == 0 and result.converged


def test_max_iter_is_respected():
    rng = np.random.default_rng(3)
    # Rosenbrock in 6 dimensions: many iterations are needed from this start.
    theta = nn.Parameter(torch.as_tensor(rng.normal(size=6) - 1.5))

    def loss_fn():
        return (100.0 * (theta[1:] - theta[:-1] ** 2) ** 2 + (1.0 - theta[:-1]) ** 2).sum()

    result = lbfgs_polish(loss_fn, [theta], tol=1e-12, max_iter=3)
    assert result.iterations <= 3
    assert not result.converged and result.grad_max > 1e-12
    full = lbfgs_polish(loss_fn, [theta], tol=1e-9, max_iter=5000)
    assert full.converged
    np.testing.assert_allclose(theta.detach().numpy(), np.ones(6), atol=1e-7)


def test_max_abs_grad_matches_finite_differences():
    rng = np.random.default_rng(4)
    w0, v0 = rng.normal(size=(3, 4)), rng.normal(size=4)
    w = nn.Parameter(torch.as_tensor(w0.copy()))
    v = nn.Parameter(torch.as_tensor(v0.copy()))

    def f(w_np, v_np):
        return np.sum(np.sin(w_np @ v_np)) + 0.25 * np.sum(v_np**4) + np.sum(w_np**2 * v_np)

    def loss_fn():
        return torch.sin(w @ v).sum() + 0.25 * (v**4).sum() + (w**2 * v).sum()

    loss, grad_max = max_abs_grad(loss_fn, [w, v])
    h = 1e-6
    fd = []
    for arr_index, base in enumerate([w0, v0]):
        for idx in np.ndindex(base.shape):
            plus, minus = [w0.copy(), v0.copy()], [w0.copy(), v0.copy()]
            plus[arr_index][idx] += h
            minus[arr_index][idx] -= h
            fd.append((f(*plus) - f(*minus)) / (2 * h))
    assert loss == pytest.approx(f(w0, v0), rel=1e-13)
    assert grad_max == pytest.approx(np.max(np.abs(fd)), rel=1e-7)
    assert w.grad is None and v.grad is None  # torch.autograd.grad, not .backward()
