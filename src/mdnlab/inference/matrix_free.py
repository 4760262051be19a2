"""Delta-method standard errors without forming A: Hessian-vector products and Lanczos.

For P beyond ``inference.dense_max_params`` neither A (the Hessian of the mean NLL) nor B (the
centred covariance of the per-sample scores, ``scores.py``) is formed. The operator is the
curvature of the training objective, H = A + (lambda/n) I (lambda = 0: the plain MLE). For a
quantity with gradient g:

    u = H_k^+ g        Lanczos on (H, g), Ritz pairs with values above ``eig_rtol`` of the
                       largest retained, the others (near-null, negative) discarded: the
                       dense path's truncated pseudo-inverse, on the Krylov space of g. With
                       lambda > 0 the caller passes eig_rtol = 0: H is positive definite at a
                       minimum (Ritz values at least lambda/n), so only non-positive Ritz
                       values are discarded and u = H^-1 g, the dense Cholesky route's
    se_hessian^2  = g'u / n
    se_sandwich^2 = u'B u / n = var_i(s_i'u) / n          (s_i'u for all rows: one pass per chunk)

A v is a double-backward through per-chunk gradient graphs that are built once (with
``create_graph``) and reused by every product, so one product costs one backward pass over
the data rather than a forward and two backward passes.

Many quantities mean many solves: the rows of G are replaced by an orthonormal basis of their
span (``delta.gradient_basis``); one solve per basis vector; each quantity's u is the same
combination of the basis solutions as its gradient is of the basis. Convergence is judged per
quantity on the combination of the basis solves' residuals.

No eigendecomposition: the spectrum, the null-space count and the condition number are not
available. A few Lanczos steps from a random vector give Ritz values that bound H's extreme
eigenvalues: the largest Ritz value is a lower bound on the largest eigenvalue, the smallest an
upper bound on the smallest, so a negative one proves that H has a negative eigenvalue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator

from mdnlab.inference.delta import gradient_basis, quadratic_forms, standard_errors_of
from mdnlab.inference.functional import FlatModel
from mdnlab.inference.scores import ScoreDirections


class HessianOperator(LinearOperator):
    """v -> (A + shift I) v, A = -(1/n) sum_i d^2 log q(y_i|x_i) / d theta^2, never formed;
    ``shift`` = lambda/n for the penalized objective, 0 for the plain MLE.

    With ``cache_graph`` the per-chunk gradient graphs are kept between products (a few KiB
    per data row); without it each product rebuilds them chunk by chunk.
    """

    def __init__(
        self,
        flat: FlatModel,
        x: torch.Tensor,
        y: torch.Tensor,
        chunk: int = 2048,
        cache_graph: bool = True,
        shift: float = 0.0,
    ):
        p = flat.n_params
        super().__init__(dtype=np.float64, shape=(p, p))
        self.flat, self.x, self.y, self.chunk = flat, x, y, int(chunk)
        self.n = int(x.shape[0])
        self.theta = flat.theta.detach().clone().requires_grad_(True)
        self.cache_graph = cache_graph
        self.shift = float(shift)
        self.products = 0
        self.product_seconds = 0.0
        self._graphs: list[torch.Tensor] = []
        total = torch.zeros(p, dtype=torch.float64)
        for gradient in self._chunk_gradients():
            total += gradient.detach()
            if cache_graph:
                self._graphs.append(gradient)
        self.gradient = (total / self.n).numpy()  # of the mean NLL, without the penalty

    def _chunk_gradients(self):
        for start in range(0, self.n, self.chunk):
            rows = slice(start, start + self.chunk)
            nll = -self.flat.log_prob(self.theta, self.x[rows], self.y[rows]).sum()
            (gradient,) = torch.autograd.grad(nll, self.theta, create_graph=True)
            yield gradient

    def _matvec(self, v):
        started = time.perf_counter()
        direction = torch.as_tensor(np.ascontiguousarray(v).reshape(-1), dtype=torch.float64)
        out = torch.zeros(self.shape[0], dtype=torch.float64)
        graphs = self._graphs if self.cache_graph else self._chunk_gradients()
        for gradient in graphs:
            (product,) = torch.autograd.grad(
                gradient, self.theta, grad_outputs=direction, retain_graph=self.cache_graph
            )
            out += product
        self.products += 1
        self.product_seconds += time.perf_counter() - started
        return (out / self.n).numpy() + self.shift * np.asarray(v).reshape(-1)

    def _adjoint(self):
        return self  # symmetric

    @property
    def seconds_per_product(self) -> float:
        return self.product_seconds / max(self.products, 1)


@dataclass
class LanczosSolve:
    solution: np.ndarray  # u ~= A_k^+ b, the truncated pseudo-inverse on the Krylov space
    iterations: int  # products with A
    converged: bool
    residual: np.ndarray  # Lanczos residual vector: A u - (retained part of b)
    discarded: np.ndarray  # the part of b on discarded Ritz directions
    ritz_values: np.ndarray


def lanczos_solve(
    operator: LinearOperator,
    b: np.ndarray,
    eig_rtol: float = 1e-8,
    rtol: float = 1e-8,
    max_iter: int = 2000,
    check_every: int = 5,
) -> LanczosSolve:
    """u = V_k L_k^-1 V_k' b on the Krylov space of (A, b), with the dense path's rule.

    Lanczos with full reorthogonalisation builds Q (orthonormal) and T = Q'AQ (tridiagonal);
    T's eigenpairs (theta, S) are Ritz pairs of A; those with theta > ``eig_rtol`` * max|theta|
    are retained, the rest (near-null and negative) discarded, as the dense path does with
    A's eigenpairs; u = Q S_k Theta_k^-1 S_k' Q'b. Converged when the Lanczos residual
    ||A u - Q S_k S_k' Q'b|| is below ``rtol`` * ||b||.

    Plain MINRES is not used: when b has rounding-level components on near-null directions
    its minimum-residual iterates divide them by near-zero eigenvalues (u's null part grew to
    1e2-1e5 on a 33-weight MDN at rtol 1e-10-1e-12, moving g'u by up to 3%) with a small
    residual, so nothing flags it. Truncating Ritz values cannot do that.
    """
    p = b.shape[0]
    beta0 = float(np.linalg.norm(b))
    if beta0 == 0.0:
        zero = np.zeros(p)
        return LanczosSolve(zero, 0, True, zero, zero, np.zeros(0))
    basis = np.empty((min(max_iter, p) + 1, p))
    basis[0] = b / beta0
    alphas: list[float] = []
    betas: list[float] = []
    converged, next_check = False, check_every
    for j in range(min(max_iter, p)):
        w = operator.matvec(basis[j])
        alphas.append(float(basis[j] @ w))
        w -= alphas[j] * basis[j] + (betas[j - 1] * basis[j - 1] if j else 0.0)
        q = basis[: j + 1]
        w -= q.T @ (q @ w)  # one full pass after the recurrence: Q is read twice per product
        beta = float(np.linalg.norm(w))
        scale = max(abs(a) for a in alphas)
        breakdown = beta <= 1e-13 * max(scale, np.finfo(float).tiny)  # invariant subspace
        last = j == min(max_iter, p) - 1
        if breakdown or last or j + 1 >= next_check:
            # T's eigenvectors cost O(k^2) or more: check every 5% of the iterations so far
            next_check = j + 1 + max(check_every, (j + 1) // 20)
            theta, s = scipy.linalg.eigh_tridiagonal(np.array(alphas), np.array(betas))
            keep = theta > eig_rtol * max(float(np.max(np.abs(theta))), np.finfo(float).tiny)
            y = s[:, keep] @ (s[0, keep] * beta0 / theta[keep])
            lanczos_residual = 0.0 if breakdown else beta * abs(y[-1])
            if lanczos_residual <= rtol * beta0:
                converged = True
            if converged or last:
                break
        betas.append(beta)
        basis[j + 1] = w / beta
    k = len(alphas)
    residual = np.zeros(p) if breakdown else (beta * y[-1]) * (w / beta)
    discarded = basis[:k].T @ (s[:, ~keep] @ (s[0, ~keep] * beta0))
    return LanczosSolve(basis[:k].T @ y, k, converged, residual, discarded, theta)


@dataclass
class SolveReport:
    basis_size: int  # solves made
    iterations: np.ndarray  # per solve
    residual: np.ndarray  # per quantity: Lanczos residual / ||g||
    discarded: np.ndarray  # per quantity: fraction of ||g||^2 on discarded Ritz directions
    converged: np.ndarray  # per quantity
    seconds: float  # all solves
    seconds_per_solve: float


def solve_standard_errors(
    operator: HessianOperator,
    gradients: np.ndarray,
    x: torch.Tensor,
    y: torch.Tensor,
    eig_rtol: float = 1e-8,
    rtol: float = 1e-8,
    max_iter: int = 2000,
    basis_rtol: float = 1e-10,
    chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray, SolveReport]:
    """Inverse-Hessian and sandwich SEs of quantities with gradients ``gradients`` (m x P).

    Quantities whose Lanczos residual exceeds ``rtol`` * ||g|| (the iteration cap was reached)
    get NaN SEs and ``converged`` False: the caller must say so.
    """
    started = time.perf_counter()
    basis, coefficients = gradient_basis(gradients, basis_rtol)
    p, r = basis.shape
    solutions, residuals, discarded = np.zeros((p, r)), np.zeros((p, r)), np.zeros((p, r))
    iterations = np.zeros(r, dtype=int)
    for k in range(r):
        solve = lanczos_solve(operator, basis[:, k], eig_rtol, rtol, max_iter)
        solutions[:, k], residuals[:, k], discarded[:, k] = (
            solve.solution,
            solve.residual,
            solve.discarded,
        )
        iterations[k] = solve.iterations
    solve_seconds = time.perf_counter() - started
    u = solutions @ coefficients.T  # P x m
    g_norm = np.linalg.norm(gradients, axis=1)
    safe = np.where(g_norm > 0, g_norm, 1.0)
    residual = np.linalg.norm(residuals @ coefficients.T, axis=0) / safe
    outside = (np.linalg.norm(discarded @ coefficients.T, axis=0) / safe) ** 2
    converged = residual <= rtol * (1 + 1e-6)
    n = operator.n
    var_hessian = np.einsum("pm,mp->m", u, gradients) / n
    scores = ScoreDirections(operator.flat, x, y, chunk)
    var_sandwich = quadratic_forms(coefficients, scores.project(solutions)) / n
    se_h = np.where(converged, standard_errors_of(var_hessian), np.nan)
    se_s = np.where(converged, standard_errors_of(var_sandwich), np.nan)
    report = SolveReport(
        r, iterations, residual, outside, converged, solve_seconds, solve_seconds / max(r, 1)
    )
    return se_h, se_s, report


def lanczos_extremes(
    operator: LinearOperator, steps: int = 30, seed: int = 0
) -> tuple[float, float]:
    """(smallest, largest) Ritz values after ``steps`` Lanczos steps from a random vector.

    The largest is a lower bound on A's largest eigenvalue and converges fast; the smallest is an
    upper bound on A's smallest eigenvalue: negative means A has a negative eigenvalue.
    """
    if steps < 1:
        return float("nan"), float("nan")
    start = np.random.default_rng(seed).standard_normal(operator.shape[0])
    ritz = lanczos_solve(operator, start, rtol=0.0, max_iter=steps).ritz_values
    return float(ritz[0]), float(ritz[-1])
