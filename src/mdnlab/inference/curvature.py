"""A (Hessian of the mean NLL) and B (mean outer product of per-sample scores) at theta.

B here is uncentred; the sandwich centres it about the mean score (``scores.py``).

Both are float64 P x P matrices built in data chunks, so memory stays at a few P x P
matrices plus one chunk's worth of per-sample gradients (``chunk`` x P), never n x P at once.
"""

from __future__ import annotations

import torch
from torch.func import grad, vmap

from mdnlab.inference.functional import FlatModel
from mdnlab.inference.mlp_hessian import mlp_hessian_sum


def hessian_mean_nll(
    flat: FlatModel, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """A = -(1/n) sum_i d^2 log q(y_i|x_i) / d theta^2, exact.

    For the MLPs of ``nets.mlp`` (``all`` or ``head`` weights) by Kronecker-structured block
    matmuls (``mlp_hessian``, rows in chunks of at most ``chunk`` under a byte budget);
    otherwise by the plain loop, ``hessian_mean_nll_loop``."""
    fast = mlp_hessian_sum(flat, x, y, chunk)
    if fast is not None:
        return fast / x.shape[0]
    return hessian_mean_nll_loop(flat, x, y, chunk)


def hessian_mean_nll_loop(
    flat: FlatModel, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """A by autograd alone: one gradient with ``create_graph`` per data chunk, then one
    double-backward per row of A (any module ``flat`` wraps)."""
    theta = flat.theta.detach().requires_grad_(True)
    n, p = x.shape[0], theta.numel()
    hessian = torch.zeros(p, p, dtype=torch.float64)
    for start in range(0, n, chunk):
        nll = -flat.log_prob(theta, x[start : start + chunk], y[start : start + chunk]).sum()
        (gradient,) = torch.autograd.grad(nll, theta, create_graph=True)
        hessian += hessian_from_gradient(gradient, [theta])
    hessian /= n
    return (hessian + hessian.T) / 2  # exact symmetry; rounding differs between rows


def hessian_from_gradient(gradient: torch.Tensor, inputs: list[torch.Tensor]) -> torch.Tensor:
    """(P, P): one double-backward per entry of a flat ``gradient`` built with create_graph."""
    p = gradient.numel()
    rows = []
    for i in range(p):
        row = torch.autograd.grad(gradient[i], inputs, retain_graph=i < p - 1)
        rows.append(torch.cat([r.reshape(-1) for r in row]))
    return torch.stack(rows)


def per_sample_scores(flat: FlatModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, P) gradients of log q(y_i|x_i) with respect to theta."""

    def one(theta, xi, yi):
        return flat.log_prob(theta, xi[None], yi[None])[0]

    return vmap(grad(one), in_dims=(None, 0, 0))(flat.theta.detach(), x, y)


def score_outer_product(
    flat: FlatModel, x: torch.Tensor, y: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    """B = (1/n) sum_i s_i s_i' with s_i the per-sample score, accumulated in chunks."""
    p = flat.n_params
    outer = torch.zeros(p, p, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        scores = per_sample_scores(flat, x[start : start + chunk], y[start : start + chunk])
        outer.addmm_(scores.T, scores)
    return outer / x.shape[0]
