"""White's (1982) information-matrix test of a fitted MDN, on a subset of its weights.

Under correct specification the information-matrix equality E[s s' + H] = 0 holds at the true
weights, s_i = d log q(y_i|x_i) / d theta and H_i its Hessian. The test looks at it on a
subset S of r weights: the indicators

    d_i = vech(s_i s_i' + H_i) restricted to S      (q = r(r+1)/2: the lower triangle with
                                                     its diagonal, named ``b[a]*b[c]``, a <= c)

have mean dbar = (1/n) sum_i d_i near 0. At the estimate, dbar moves with theta_hat:
dbar(theta_hat) ~ dbar(theta0) + G (theta_hat - theta0), G = d dbar / d theta' (q x P, over
ALL P weights), and theta_hat - theta0 ~ A^-1 (1/n) sum_i s_i^full from 0 = grad of the mean
log-likelihood at theta_hat (A: the Hessian of the mean NLL, s^full the score over all P
weights). So dbar(theta_hat) ~ (1/n) sum_i v_i with the plus sign,

    v_i = d_i + G A^-1 s_i^full,    V = (1/n) sum_i (v_i - vbar)(v_i - vbar)',
    T = n dbar' V^+ dbar ~ chi-square(df),   df = rank V.

V^+ is the pseudo-inverse through eigh, on the eigenvalues above ``rtol`` (1e-10) times the
largest, and df is their count: indicators can be exactly degenerate and df then drops below q.
Identically zero: s_a s_b + H_ab = (d^2 f / d a d b) / f for the density f = q(y|x), and a
mixture density is a sum over components, so every pair of raw outputs of two different
components gives 0 (K(K-1)/2 c^2 indicators for c raw outputs per component). Tied or
collinear: duplicated inputs, a linear head (w_mu[j] b_r and w_r[j] b_mu give the same
indicator), a saturated model. The rank is taken on V as it stands, so it depends on the
indicators' scales. Near-degenerate, which no rtol settles: for a Gaussian component
(d^2 N / d mu^2) / N is twice the score of its variance, so the mean-mean indicators are scores
of the scale outputs times a function of x, and the correction G A^-1 s nearly cancels them
wherever that function is close to the span of the net's scale gradients (exactly, in the
population, for a homoscedastic truth). V's spectrum then has kept eigenvalues far below the
rest, with no gap above the exact zeros (an unfitted K = 3 bivariate Gaussian, m = 17: relative
eigenvalues decaying from 1e-6 to 1e-13, then the zeros at 1e-18; a fitted K = 2 univariate
one: kept eigenvalues down to 1e-8 that carry most of T), so df and T depend on rtol there.

The default subset is the head's output bias b (the bias of ``module.net``'s last
``nn.Linear``). The head computes out = W h + b and nothing follows it, so derivatives in b
are derivatives in the raw head outputs out_i (m = ``family.n_raw_outputs`` of them): per row,
``module.log_prob`` with the net's output replaced by a per-row o (a forward hook on
``module.net``) is differentiated in o alone (``torch.func``: reverse mode, then forward mode
twice for the Hessian and third derivatives, vectorised over rows), for every family without
knowing which; G is then q vector-Jacobian products through the net. It keeps q small
(m(m+1)/2 against P(P+1)/2 for all weights): with many indicators V is poorly estimated and
the test badly sized. Any other subset (``"all"``, parameter or entry names, a predicate on
entry names) goes through ``torch.func`` per row in the weights themselves (reverse mode three
times): for small subsets of small models.

A is singular for MDNs (permutation and hidden-unit symmetries) and at a fit that is not a
strict minimum can be indefinite: at lambda = 0 A^-1 is the pseudo-inverse on A's eigenvectors
with eigenvalues above ``eig_rtol`` of the largest |eigenvalue| (as in
``inference/covariance.py``). Exact null directions leave every row's log-likelihood and head
output unchanged, so the scores and, for the output bias, G are orthogonal to them.

With the ridge penalty of the objective, J = mean NLL + lambda/(2n)|theta|^2, the estimate
solves mean s = (lambda/n) theta, not mean s = 0, and A_lambda = A + (lambda/n) I replaces A
(Cholesky; the eigen-route above when the factorisation fails). Centring the scores
(s_i - sbar) leaves V unchanged, V being a centred covariance. What the penalty does change is
dbar: expanding the penalized estimating equation, theta_hat - theta0 ~ A_lambda^-1
(mean s(theta0) - (lambda/n) theta0), so dbar carries the bias -G A_lambda^-1 (lambda/n) theta,
O(lambda/n), which adds terms of order lambda/sqrt(n e) and lambda^2/(n e) to T, e the smallest
kept eigenvalue of V: negligible for fixed lambda as n grows, not where V is near-degenerate
(above). ``debias=True`` tests vbar = mean v_i with uncentred scores, dbar +
G A_lambda^-1 sbar, sbar = (lambda/n) theta at the optimum, which removes it to first order
(identical at lambda = 0). Measured on the well-specified linear Gaussian at lambda = 3:
n = 400, 100% of p-values below 0.05 as specified, 14% debiased; n = 4000, 100% and 5%. On a
K = 2 MDN at lambda = 3, n = 2000, T = 1413 (df 11) fell to 10.7 debiased. The module must be
at the optimum of J with the same lambda: the expansion assumes it.

The asymptotic chi-square is known to over-reject in small and moderate samples (the
indicators involve third and fourth moments of the scores, so V is noisy and T's tail heavier
than chi-square's: Taylor 1987, Orme 1990, Horowitz 1994), and more so with many or
near-degenerate indicators (above): with all 4 weights of the linear Gaussian at n = 2000,
18% of p-values fell below 0.05 on a well-specified truth, against 5% with the 2 output
biases. Reported p-values should come from a parametric bootstrap (simulate from the fitted
model, refit, recompute T), which ``im_test`` is written for: a pure function of
(module, x, y, penalty).

Cost (P weights, n rows, m raw outputs, q indicators): A by ``hessian_mean_nll`` (~n P^2) and
its eigendecomposition (~P^3, the Cholesky factor P^3/3 when lambda > 0); per row, the
family's derivatives to third order in o (m^2 forward tangents of one reverse pass, rows in
blocks under ``ROW_BUDGET_BYTES``) and G as q VJPs through the net (q P); the full scores by
``per_sample_scores`` in chunks (chunk x P at a time, never n x P) and A^-1 G' applied to
them (n q P); V and its eigh (n q^2 + q^3).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.stats import chi2
from torch import nn
from torch.func import grad, jacfwd, jacrev, vmap

from mdnlab.inference.covariance import Spectrum
from mdnlab.inference.curvature import hessian_mean_nll, per_sample_scores
from mdnlab.inference.functional import FlatModel
from mdnlab.progress import warn

Subset = str | Sequence[str] | Callable[[str], bool]

# Rows per block of per-row derivatives: their arrays (the per-row graph once per tangent or
# cotangent: m^2 of them on the output-bias route, q r for r named weights) stay near this.
ROW_BUDGET_BYTES = 256 * 2**20
ROW_BYTES_PER_TANGENT = 4096


@dataclass(frozen=True)
class IMTest:
    statistic: float  # T = n dbar' V^+ dbar (vbar for dbar with debias)
    df: int  # rank of V at rtol
    pvalue: float  # chi-square(df) upper tail at T (1.0 when df = 0: nothing is tested)
    subset_names: list[str]  # one per indicator: "b[3]*b[5]"
    n: int
    seconds: float


def im_test(
    module,
    x: torch.Tensor,
    y: torch.Tensor,
    penalty: float = 0.0,
    subset: Subset = "output_bias",
    rtol: float = 1e-10,
    chunk: int = 2048,
    eig_rtol: float = 1e-10,
    debias: bool = False,
) -> IMTest:
    """White's information-matrix test of ``module`` fitted to (x, y) (original units, float64).

    ``penalty``: the lambda of the objective the module was fitted with (0: the MLE).
    ``subset``: ``"output_bias"`` (default), ``"all"``, a list of parameter names
    (``"net.0.bias"``) or entry names (``"net.0.weight[1,0]"``), or a predicate on entry names.
    ``rtol``: relative eigenvalue cut-off for V (its rank is df); ``eig_rtol``: for A's
    pseudo-inverse at lambda = 0. ``chunk``: rows per block of per-row arrays. ``debias``:
    test vbar = dbar + G A_lambda^-1 sbar (the penalty's first-order bias removed) instead of
    dbar; the same at lambda = 0 (see the module docstring for why it matters at lambda > 0).
    """
    started = time.perf_counter()
    flat = FlatModel(module, "all")
    n = x.shape[0]
    # A is the curvature of the objective the module was fitted with, scale penalty included;
    # the indicators and scores are the log-likelihood's, for the information-matrix equality
    # is a property of the likelihood. At the penalized optimum the mean score then equals the
    # gradient of both penalties, and debiasing removes that first-order bias whatever it is.
    a = hessian_mean_nll(flat, x, y, chunk).numpy()
    saved, module.scale_weight = getattr(module, "scale_weight", 0.0), 0.0
    try:
        if subset == "output_bias":
            indicators, gradient, names = _output_bias_indicators(flat, x, y, chunk)
        else:
            index = _select(flat, subset)
            indicators, gradient, names = _weight_indicators(flat, index, x, y, chunk)
        directions = _solve_curvature(a, float(penalty) / n, gradient.T, eig_rtol)  # A^-1 G'
        v = indicators + _projected_scores(flat, x, y, directions, chunk)
    finally:
        module.scale_weight = saved
    statistic, df = _wald(v.mean(axis=0) if debias else indicators.mean(axis=0), v, rtol)
    pvalue = float(chi2.sf(statistic, df)) if df > 0 else 1.0
    return IMTest(statistic, df, pvalue, names, n, time.perf_counter() - started)


# --- indicators: the output-bias route ---------------------------------------------------------
def _pairs(r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, c) with a <= c, row by row: the q = r(r+1)/2 entries of vech."""
    first, second = torch.triu_indices(r, r)
    return first, second


def _output_bias_indicators(flat: FlatModel, x, y, chunk: int):
    """Per-row indicators (n, q), G (q, P) and the names, by derivatives in the head outputs."""
    net = flat.module.net
    head = net[-1] if isinstance(net, nn.Sequential) else None
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError("subset='output_bias' needs module.net to end in an nn.Linear with bias")
    m = head.bias.numel()
    first, second = _pairs(m)
    theta = flat.theta.detach().clone().requires_grad_(True)
    per_row = vmap(_out_derivatives(flat.module))
    rows = max(1, min(chunk, ROW_BUDGET_BYTES // (ROW_BYTES_PER_TANGENT * m * m)))
    blocks, gradient = [], theta.new_zeros(first.numel(), theta.numel())
    for start in range(0, x.shape[0], rows):
        xc, yc = x[start : start + rows], y[start : start + rows]
        out = _head_output(flat, theta, xc, yc)
        g, h, t = per_row(out.detach(), xc, yc)
        blocks.append(g[:, first] * g[:, second] + (h[:, first, second] + h[:, second, first]) / 2)
        # d/d out_c of each indicator, then through the net: G's rows as q VJPs at once.
        along = (
            h[:, first, :] * g[:, second, None]
            + g[:, first, None] * h[:, second, :]
            + (t[:, first, second, :] + t[:, second, first, :]) / 2
        )
        (vjps,) = torch.autograd.grad(
            out, theta, grad_outputs=along.transpose(0, 1), is_grads_batched=True
        )
        gradient += vjps
    names = [f"b[{a}]*b[{c}]" for a, c in zip(first.tolist(), second.tolist(), strict=True)]
    return torch.cat(blocks).numpy(), (gradient / x.shape[0]).numpy(), names


def _head_output(flat: FlatModel, theta, x, y) -> torch.Tensor:
    """module.net's output inside ``module.log_prob`` at theta, with its graph to theta."""
    seen = []
    handle = flat.module.net.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        flat.log_prob(theta, x, y)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise ValueError(f"module.log_prob called module.net {len(seen)} times; expected once")
    return seen[0]


def _out_derivatives(module):
    """(o, x_i, y_i) -> first, second and third derivatives of log q(y_i|x_i) in the head
    output o (m, (m, m), (m, m, m)): ``module.log_prob`` with the net's output replaced by o.

    Reverse mode once, then forward mode twice: the third derivatives take m tangents of the
    Hessian, vectorised, instead of q = m(m+1)/2 reverse passes through a third-order graph
    (measured 18x faster for a Wishart head, m = 15, and 50x for a bivariate Gaussian one,
    m = 17, with the same numbers to 1e-15)."""

    def log_q(o, xi, yi):
        handle = module.net.register_forward_hook(lambda _m, _a, _out: o[None])
        try:
            return module.objective_log_prob(xi[None], yi[None])[0]
        finally:
            handle.remove()

    def score(o, xi, yi):
        g = jacrev(log_q)(o, xi, yi)
        return g, g

    def hessian(o, xi, yi):
        h, g = jacfwd(score, has_aux=True)(o, xi, yi)
        return h, (g, h)

    def derivatives(o, xi, yi):
        t, (g, h) = jacfwd(hessian, has_aux=True)(o, xi, yi)
        return g, h, t

    return derivatives


# --- indicators: any subset of weights, per row by torch.func ----------------------------------
def _select(flat: FlatModel, subset: Subset) -> torch.Tensor:
    """Positions in theta of the subset's weights, in theta's order."""
    names = flat.names()
    if isinstance(subset, str):
        subset = names if subset == "all" else [subset]
    if callable(subset):
        chosen = [i for i, name in enumerate(names) if subset(name)]
    else:
        position = {name: i for i, name in enumerate(names)}
        chosen = []
        for name in subset:
            if name in flat.free:
                chosen += [i for i, entry in enumerate(names) if entry.startswith(f"{name}[")]
            elif name in position:
                chosen.append(position[name])
            else:
                raise ValueError(
                    f"im_test subset: {name!r} is neither a parameter ({', '.join(flat.free)}) "
                    "nor an entry such as 'net.0.weight[1,0]'"
                )
    if not chosen:
        raise ValueError("im_test subset selects no weights")
    return torch.tensor(sorted(set(chosen)))


def _weight_indicators(flat: FlatModel, index: torch.Tensor, x, y, chunk: int):
    """Per-row indicators (n, q), G (q, P) and the names for the weights at ``index``."""
    first, second = _pairs(index.numel())
    theta = flat.theta.detach()

    def row_indicators(t, xi, yi):
        def restricted(s):
            return flat.log_prob(t.index_put((index,), s), xi[None], yi[None])[0]

        s = t[index]
        g, h = grad(restricted)(s), jacrev(grad(restricted))(s)
        return g[first] * g[second] + (h[first, second] + h[second, first]) / 2

    def summed(t, xc, yc):
        d = vmap(row_indicators, in_dims=(None, 0, 0))(t, xc, yc)
        return d.sum(dim=0), d

    q = first.numel()
    rows = max(1, min(chunk, ROW_BUDGET_BYTES // (ROW_BYTES_PER_TANGENT * q * index.numel())))
    blocks, gradient = [], theta.new_zeros(q, theta.numel())
    for start in range(0, x.shape[0], rows):
        block_gradient, block = jacrev(summed, has_aux=True)(
            theta, x[start : start + rows], y[start : start + rows]
        )
        blocks.append(block.detach())
        gradient += block_gradient.detach()
    entry = flat.names()
    labels = [entry[i] for i in index.tolist()]
    names = [
        f"{labels[a]}*{labels[c]}" for a, c in zip(first.tolist(), second.tolist(), strict=True)
    ]
    return torch.cat(blocks).numpy(), (gradient / x.shape[0]).numpy(), names


# --- the correction and the quadratic form -------------------------------------------------------
def _solve_curvature(a: np.ndarray, shift: float, rhs: np.ndarray, eig_rtol: float) -> np.ndarray:
    """(A + shift I)^-1 rhs: Cholesky when shift > 0 and it factors, else the pseudo-inverse
    on the eigenvectors with eigenvalues above ``eig_rtol`` of the largest |eigenvalue|."""
    curvature = a + shift * np.eye(a.shape[0])
    if shift > 0:
        try:
            factor = scipy.linalg.cho_factor(curvature, lower=True, check_finite=False)
            return scipy.linalg.cho_solve(factor, rhs, check_finite=False)
        except np.linalg.LinAlgError:  # not positive definite: not a strict minimum of J
            warn(
                "information-matrix test: A_lambda is not positive definite at the estimate "
                "(not a strict minimum of the objective); its pseudo-inverse on the positive "
                f"eigenvalues (eig_rtol {eig_rtol:g}) is used instead"
            )
    values, vectors = scipy.linalg.eigh(curvature, driver="evd")
    kept = Spectrum.of(values, eig_rtol).retained
    basis = vectors[:, kept]
    return basis @ ((basis.T @ rhs) / values[kept, None])


def _projected_scores(flat: FlatModel, x, y, directions: np.ndarray, chunk: int) -> np.ndarray:
    """(n, q): s_i' A^-1 G' for every row, the full scores taken chunk by chunk (uncentred:
    V centres v anyway, and the mean is the debiasing term G A^-1 sbar)."""
    out = [
        per_sample_scores(flat, x[start : start + chunk], y[start : start + chunk]).numpy()
        @ directions
        for start in range(0, x.shape[0], chunk)
    ]
    return np.concatenate(out)


def _wald(dbar: np.ndarray, v: np.ndarray, rtol: float) -> tuple[float, int]:
    """n dbar' V^+ dbar and rank V, V the centred (1/n) covariance of the rows of v."""
    n = v.shape[0]
    centred = v - v.mean(axis=0)
    values, vectors = scipy.linalg.eigh(centred.T @ centred / n)
    kept = values > rtol * max(float(values.max(initial=0.0)), np.finfo(float).tiny)
    projected = vectors[:, kept].T @ dbar
    return float(n * np.sum(projected**2 / values[kept])), int(kept.sum())
