"""A scalar Gaussian mixture per row: CDF, quantiles and modes, vectorised over rows.

Every function takes the mixture as three (n, K) tensors, ``log_w`` (normalised log mixing
weights: finite where a weight underflows), ``means`` and ``sds``, in whatever units the
caller chose (the fitted model passes the standardised ones and maps the results back).
"""

from __future__ import annotations

import math

import torch
from torch.special import log_ndtr, ndtri

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
MAX_BISECTIONS = 200  # 1100 would reach from the largest double to the smallest; 60 is typical
MODE_MAX_ITER = 1000  # fixed-point iterations from each component mean
MODE_NEWTON_REACH = 0.1  # Newton steps up to this times the smallest sd (else fixed point)
MODE_STEP_TOL = 1e-10  # fixed point converged: a step below this times the smallest sd
MODE_MERGE_TOL = 1e-5  # candidates closer than this times the smallest sd are one mode


def cdf(log_w: torch.Tensor, means: torch.Tensor, sds: torch.Tensor, y: torch.Tensor):
    """F(y) = sum_k w_k Phi((y - mu_k) / sd_k); y (n, m) -> (n, m)."""
    z = (y[..., None] - means[:, None, :]) / sds[:, None, :]
    # torch's ndtr is 0 below about -8.3; exp(log_ndtr) keeps the lower tail's digits.
    return torch.logsumexp(log_w[:, None, :] + log_ndtr(z), dim=-1).exp()


def log_density(log_w, means, sds, y: torch.Tensor) -> torch.Tensor:
    """log p(y); y (n, m) -> (n, m)."""
    return torch.logsumexp(_log_terms(log_w, means, sds, y), dim=-1)


def _log_terms(log_w, means, sds, y):
    z = (y[..., None] - means[:, None, :]) / sds[:, None, :]
    return log_w[:, None, :] - 0.5 * z**2 - sds.log()[:, None, :] - _HALF_LOG_2PI


def quantile(log_w, means, sds, q: torch.Tensor) -> torch.Tensor:
    """F^-1(q) for probabilities q (m,), each row: (n, m).

    The root lies between the smallest and the largest of the components' own q-quantiles (at
    the smallest every component's CDF is at most q, so the mixture's is too; likewise at the
    largest), so bisection on that bracket needs no search and never fails; it runs until the
    bracket is two adjacent doubles, where |F(y) - q| is at most the density times an ulp.
    q = 0 and q = 1 give -inf and +inf.
    """
    per_component = means[:, None, :] + sds[:, None, :] * ndtri(q)[None, :, None]  # (n, m, K)
    lo, hi = per_component.amin(-1), per_component.amax(-1)
    target = q.expand_as(lo)
    active = torch.isfinite(lo) & torch.isfinite(hi) & (lo < hi)
    for _ in range(MAX_BISECTIONS):
        if not active.any():
            break
        mid = lo + 0.5 * (hi - lo)
        active = active & (mid > lo) & (mid < hi)  # else lo and hi are adjacent doubles
        below = cdf(log_w, means, sds, mid) < target
        lo = torch.where(active & below, mid, lo)
        hi = torch.where(active & ~below, mid, hi)
    # Two adjacent doubles left: take the one whose CDF is nearer q.
    err_lo = (cdf(log_w, means, sds, lo) - target).abs()
    err_hi = (cdf(log_w, means, sds, hi) - target).abs()
    return torch.where(err_lo <= err_hi, lo, hi)


def modes(log_w, means, sds) -> tuple[torch.Tensor, torch.Tensor]:
    """The local maxima of the density of each row: (n, K) locations and log densities,
    sorted by decreasing density, padded with NaN (locations) and -inf (log densities).

    From each component mean, Carreira-Perpinan's fixed-point iteration
    y <- sum_k r_k(y) mu_k / sd_k^2 / sum_k r_k(y) / sd_k^2 (r_k the responsibilities), a
    monotone climb of the density. Its rate is linear, slow where modes are about to merge,
    so where log p is concave and the Newton step on d log p / dy is short (under
    ``MODE_NEWTON_REACH`` smallest sds: no candidate leaves its basin) Newton's step is taken
    instead (it has the fixed point's direction and is longer). Candidates within
    ``MODE_MERGE_TOL`` smallest sds of each other are one mode.
    """
    y = means.clone()
    precision = sds**-2
    sd_min = sds.amin(-1, keepdim=True)
    active = torch.ones_like(y, dtype=torch.bool)
    for _ in range(MODE_MAX_ITER):
        rows = active.any(-1).nonzero().squeeze(-1)  # work on unconverged rows only
        if rows.numel() == 0:
            break
        parts = log_w[rows], means[rows], precision[rows], sds[rows]
        grad, second, h0 = _gradient_and_curvature(*parts, y[rows])
        newton = -grad / second
        local = (second < 0) & (newton.abs() < MODE_NEWTON_REACH * sd_min[rows])
        step = torch.where(local, newton, grad / h0)
        step = torch.where(active[rows], step, 0.0)
        y[rows] += step
        active[rows] &= step.abs() > MODE_STEP_TOL * sd_min[rows]

    y, _ = torch.sort(y, dim=-1)
    duplicate = torch.zeros_like(y, dtype=torch.bool)
    merge = MODE_MERGE_TOL * sds.amin(-1, keepdim=True)
    duplicate[:, 1:] = (y[:, 1:] - y[:, :-1]) <= merge
    log_p = log_density(log_w, means, sds, y)
    log_p = torch.where(duplicate, -torch.inf, log_p)
    order = torch.argsort(log_p, dim=-1, descending=True, stable=True)
    log_p = torch.gather(log_p, -1, order)
    y = torch.where(torch.isfinite(log_p), torch.gather(y, -1, order), torch.nan)
    return y, log_p


def _gradient_and_curvature(log_w, means, precision, sds, y):
    """d log p / dy, d^2 log p / dy^2 and sum_k r_k / sd_k^2, each (n, J), at y (n, J)."""
    terms = _log_terms(log_w, means, sds, y)  # (n, J, K)
    r = torch.softmax(terms, dim=-1)
    a = (means[:, None, :] - y[..., None]) * precision[:, None, :]
    grad = (r * a).sum(-1)
    h0 = (r * precision[:, None, :]).sum(-1)
    second = -h0 + (r * a**2).sum(-1) - grad**2
    return grad, second, h0
